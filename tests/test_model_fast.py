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
