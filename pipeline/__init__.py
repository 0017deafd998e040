"""Data jobs: the synthetic world, the JDsearch adapter and the Beam preprocessing."""
import features  # noqa: F401  (environment for TensorFlow, set before any TF import)
