"""Keras layers of MGDSPR, one concept per module; docstrings give shapes ([b] batch,
[L] sequence length, [d] embedding_dim)."""
import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

from model.layers.attention import MultiHeadSelfAttention, SelfAttentionBlock, TransformerBlock
from model.layers.behaviour import (
    BehaviourEmbedding,
    LongTermBehaviour,
    RealTimeBehaviour,
    ShortTermBehaviour,
)
from model.layers.embedding import Embeddings, masked_mean
from model.layers.fusion import ConcatFusion, FusionTransformer
from model.layers.hard_negative import HardNegativeMix, hard_negative_mix
from model.layers.item import ItemTitleEncoder
from model.layers.semantic import MultiGrainedSemanticUnit
from model.layers.zero_attention import ZeroAttention, zero_attention

__all__ = [
    "BehaviourEmbedding",
    "ConcatFusion",
    "Embeddings",
    "FusionTransformer",
    "HardNegativeMix",
    "ItemTitleEncoder",
    "LongTermBehaviour",
    "MultiGrainedSemanticUnit",
    "MultiHeadSelfAttention",
    "RealTimeBehaviour",
    "SelfAttentionBlock",
    "ShortTermBehaviour",
    "TransformerBlock",
    "ZeroAttention",
    "hard_negative_mix",
    "masked_mean",
    "zero_attention",
]
