"""The MGDSPR two-tower model: towers, sampled softmax with hard negatives, and training.

`import features` comes first: it sets TF_USE_LEGACY_KERAS before TensorFlow loads, so
`tf.keras` is tf-keras (Keras 2), which ParameterServerStrategy and TFRS need.
"""
import features  # noqa: F401
