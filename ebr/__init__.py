"""The `ebr` command line: one subcommand per stage of the system."""
import features  # noqa: F401  (environment for TensorFlow, set before any TF import)
