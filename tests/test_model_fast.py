"""model.fast: the same maths as the Keras layers they replace, with less work."""
import numpy as np
import tensorflow as tf

from model.fast import LSTM, unique_lookup


def test_lstm_matches_keras_rnn_of_lstm_cells_at_real_steps():
    x = tf.random.stateless_normal([4, 7, 8], seed=[1, 2])
    lengths = np.array([7, 3, 1, 5])
    mask = tf.constant(np.arange(7)[None] < lengths[:, None])
    keras = tf.keras.layers.RNN(tf.keras.layers.LSTMCell(6), return_sequences=True)
    ours = LSTM(6)
    keras(x, mask=mask), ours(x, mask=mask)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in keras.get_weights()]
    ours.set_weights(keras.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        a, b = keras(x, mask=mask), ours(x, mask=mask)
        la, lb = (tf.reduce_sum(tf.where(mask[..., None], t, 0.0) ** 2) for t in (a, b))
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)  # masked steps repeat the last output in both
    for ga, gb in zip(tape.gradient(la, keras.trainable_weights), tape.gradient(lb, ours.trainable_weights)):
        np.testing.assert_allclose(ga.numpy(), gb.numpy(), atol=1e-4)
    # Keras' initialisation: forget-gate bias 1, the other gates 0.
    fresh = LSTM(3)
    fresh(x[:, :, :2])
    np.testing.assert_array_equal(fresh.bias.numpy(), [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_unique_lookup_matches_the_layer_and_its_gradient():
    table = tf.keras.layers.Embedding(10, 3)
    ids = tf.constant([[1, 2, 1, 0], [2, 2, 9, 1]], tf.int64)
    table(ids)
    with tf.GradientTape(persistent=True) as tape:
        plain, distinct = table(ids), unique_lookup(table, ids)
        losses = [tf.reduce_sum(t * tf.range(1.0, 4.0)) ** 2 for t in (plain, distinct)]
    assert distinct.shape == (2, 4, 3)
    np.testing.assert_array_equal(plain.numpy(), distinct.numpy())
    g_plain, g_distinct = (tf.convert_to_tensor(tape.gradient(l, table.embeddings)) for l in losses)
    np.testing.assert_allclose(g_plain.numpy(), g_distinct.numpy(), rtol=1e-6)
    # The sparse gradient holds each distinct id once: one row per id sent back, not per lookup.
    rows = tape.gradient(losses[1], table.embeddings)
    assert isinstance(rows, tf.IndexedSlices) and rows.indices.shape[0] == 4


def test_a_checkpoint_of_the_keras_lstm_restores_into_ours(tmp_path):
    """Runs trained before the towers used model.fast's LSTM keep working: the weights sit
    where RNN(LSTMCell) keeps them, so a checkpoint restores both ways."""
    x = tf.random.stateless_normal([2, 5, 4], seed=[3, 4])
    mask = tf.constant([[True] * 5, [True, True, False, False, False]])
    keras = tf.keras.layers.RNN(tf.keras.layers.LSTMCell(3), return_sequences=True)
    expected = keras(x, mask=mask)
    path = tf.train.Checkpoint(layer=keras).write(str(tmp_path / "keras"))
    ours = LSTM(3)
    ours(x[:, :1])
    status = tf.train.Checkpoint(layer=ours).read(path)
    status.assert_consumed()
    np.testing.assert_allclose(ours(x, mask=mask).numpy(), expected.numpy(), atol=1e-5)


def test_the_towers_use_them():
    from model.config import MGDSPRConfig
    from model.mgdspr import MGDSPR

    model = MGDSPR(MGDSPRConfig(embedding_dim=8, num_heads=2, transformer_ff_dim=16),
                   {v: 20 for v in ("word", "char", "bigram", "item_id", "leaf_cat", "top_cat", "brand", "shop")})
    assert all(isinstance(lstm, LSTM) for lstm in model.user_tower.real_time.lstms)
    ids = tf.constant([[3, 3, 0]], tf.int64)
    with tf.GradientTape() as tape:
        rows = model.embeddings.lookup("word", ids)
    table = model.embeddings.tables["word"].embeddings
    grad = tape.gradient(rows, table)
    assert isinstance(grad, tf.IndexedSlices) and sorted(grad.indices.numpy().tolist()) == [0, 3]
