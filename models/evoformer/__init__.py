"""An AlphaFold2 EvoFormer block (supplement Alg. 6-15) whose attention modules run naive, dense SDPA
or tuned block-sparse attention, with OpenFold-compatible parameters, and its benchmark
(``python -m autotune.evoformer.bench``)."""

from .attention import (KINDS, AttentionChoice, EvoformerAttention, attend, cached_layout, openfold_attention,
                        sdpa_attention)
from .modules import (
    checkpoint_blocks,
    EvoformerBlock,
    EvoformerStack,
    MSAColumnAttention,
    MSARowAttentionWithPairBias,
    MSATransition,
    OuterProductMean,
    PairStack,
    PairTransition,
    TriangleAttention,
    TriangleAttentionEndingNode,
    TriangleAttentionStartingNode,
    TriangleMultiplicationIncoming,
    TriangleMultiplicationOutgoing,
    TriangleMultiplicativeUpdate,
)
from .openfold import load_openfold_state_dict, map_openfold_key, openfold_block_keys

__all__ = [
    "KINDS",
    "AttentionChoice",
    "EvoformerAttention",
    "attend",
    "cached_layout",
    "openfold_attention",
    "sdpa_attention",
    "EvoformerBlock",
    "EvoformerStack",
    "checkpoint_blocks",
    "MSARowAttentionWithPairBias",
    "MSAColumnAttention",
    "MSATransition",
    "OuterProductMean",
    "TriangleMultiplicativeUpdate",
    "TriangleMultiplicationOutgoing",
    "TriangleMultiplicationIncoming",
    "TriangleAttention",
    "TriangleAttentionStartingNode",
    "TriangleAttentionEndingNode",
    "PairTransition",
    "PairStack",
    "load_openfold_state_dict",
    "map_openfold_key",
    "openfold_block_keys",
]
