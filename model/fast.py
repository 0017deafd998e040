"""Same maths, less work: the two hot spots of a training step (docs/scale.md).

    rows = unique_lookup(embedding_layer, ids)      # == embedding_layer(ids)
    lstm = LSTM(d)                                  # == RNN(LSTMCell(d), return_sequences=True)
    h = lstm(x, mask=mask)

`unique_lookup` gathers each distinct id of a batch once and expands the rows on the
worker. A batch looks up ~260k ids (250 behaviours x 5 fields x 256 searches) but far
fewer distinct ones; under a parameter-server strategy every gathered row crosses the
network, so the rows sent per step drop to the distinct ids (for `top_cat`, at most a few
hundred instead of 64k), and the gradient rows sent back are summed per id on the worker.

`LSTM` computes the input projection of every time step in one matmul before the loop
(x [b*L, d] x W [d, 4u]) and reads its recurrent kernel once per call, so the loop body is
one [b, u] x [u, 4u] matmul and the gates. Keras' RNN(LSTMCell) multiplies the input
inside the loop at every step, and under a parameter-server strategy reads every weight
from the parameter servers at every step (Keras turns its weight caching off inside
functions).
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf


def unique_lookup(embedding: tf.keras.layers.Layer, ids: tf.Tensor) -> tf.Tensor:
    """embedding(ids) [..., d], gathering each distinct id once (ids int of any shape)."""
    flat = tf.reshape(ids, [-1])
    distinct, position = tf.unique(flat)
    rows = tf.gather(embedding(distinct), position)
    out = tf.reshape(rows, tf.concat([tf.shape(ids), tf.shape(rows)[-1:]], axis=0))
    out.set_shape(ids.shape.concatenate(rows.shape[-1:]))
    return out


def keras_lstm(units: int, name: str, unroll: bool = False) -> tf.keras.layers.Layer:
    """The Keras layer `LSTM` replaces, RNN(LSTMCell) with the cell named `cell`: the same
    weights at the same checkpoint paths. Unrolled, it is a flat graph (FLOP counting)."""
    return tf.keras.layers.RNN(tf.keras.layers.LSTMCell(units, name="cell"), return_sequences=True, unroll=unroll,
                               name=name)


class _Weights(tf.keras.layers.Layer):
    """The LSTM's three weights under the names Keras' LSTMCell gives them, tracked as the
    layer's `cell`: a checkpoint of RNN(LSTMCell) restores into `LSTM` and back."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        d, u = int(input_shape[-1]), self.units
        self.kernel = self.add_weight("kernel", [d, 4 * u], initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight("recurrent_kernel", [u, 4 * u], initializer="orthogonal")

        def bias_init(shape, dtype=None):
            return tf.concat([tf.zeros([u]), tf.ones([u]), tf.zeros([2 * u])], axis=0)

        self.bias = self.add_weight("bias", [4 * u], initializer=bias_init)
        super().build(input_shape)


class LSTM(tf.keras.layers.Layer):
    """One LSTM layer over a masked sequence, the maths of Keras' LSTMCell (gates i, f, c,
    o; sigmoid gates, tanh activations, forget-gate bias initialised to 1).

    x [b, L, d], mask [b, L] bool -> [b, L, units]. A masked step keeps the previous
    state and outputs the previous output (as Keras' RNN does), so with padding at the
    end the real steps never see it. The weights sit where RNN(LSTMCell) keeps them
    (`cell.kernel`, `cell.recurrent_kernel`, `cell.bias`), so checkpoints are shared."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.cell = _Weights(units, name="cell")

    def build(self, input_shape):
        self.cell.build(input_shape)
        super().build(input_shape)

    @property
    def kernel(self):
        return self.cell.kernel

    @property
    def recurrent_kernel(self):
        return self.cell.recurrent_kernel

    @property
    def bias(self):
        return self.cell.bias

    def call(self, x, mask=None):
        b, steps = tf.shape(x)[0], tf.shape(x)[1]
        if mask is None:
            mask = tf.ones([b, steps], tf.bool)
        # Each weight read once, outside the loop (a parameter-server strategy may also
        # have split it into shards: reading joins them).
        kernel, recurrent, bias = (tf.convert_to_tensor(w) for w in (self.kernel, self.recurrent_kernel, self.bias))
        # Every step's input projection in one matmul, time-major for the loop.
        projected = tf.matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), kernel) + bias
        projected = tf.transpose(tf.reshape(projected, [b, steps, 4 * self.units]), [1, 0, 2])
        keep = tf.transpose(mask)[:, :, None]

        def step(carry, inputs):
            h, c = carry
            z, m = inputs
            i, f, g, o = tf.split(z + tf.matmul(h, recurrent), 4, axis=-1)
            c_new = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h_new = tf.sigmoid(o) * tf.tanh(c_new)
            return tf.where(m, h_new, h), tf.where(m, c_new, c)

        zeros = tf.zeros([b, self.units], x.dtype)
        hs, _ = tf.scan(step, (projected, keep), initializer=(zeros, zeros))
        return tf.transpose(hs, [1, 0, 2])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


__all__ = ["LSTM", "keras_lstm", "unique_lookup"]
