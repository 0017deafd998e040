"""The single source of truth for feature names, lengths, vocabularies and tokenisation.

`pipeline/`, `model/` and `serving/` all import this package, so importing it first
sets the environment TensorFlow must see before its first import.
"""
import os

# tf-keras (Keras 2) must back tf.keras: Keras 3 has no ParameterServerStrategy in
# model.fit and tensorflow-recommenders needs tf-keras; TF reads this at first import.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from features.spec import (  # noqa: E402
    FEATURES,
    ITEM_FEATURES,
    META_FEATURES,
    USER_FEATURES,
    Feature,
)
from features.tokenizer import Tokenizer, Tokens, normalize  # noqa: E402

__all__ = [
    "FEATURES",
    "ITEM_FEATURES",
    "META_FEATURES",
    "USER_FEATURES",
    "Feature",
    "Tokenizer",
    "Tokens",
    "normalize",
]
