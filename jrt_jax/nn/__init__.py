"""Flax NNX layers of JRT-RNN, Based and Llama. Thin: project, call `jrt_jax.ops`, project back.

Every parameter carries logical axis names (see `jrt_jax.nn.axes`: vocab, embed, heads, kv, feature, qkv, mlp,
conv, conv_width) for rule-based sharding; projections are `nnx.Linear` with kernels [in, out].

Mixers share one calling convention (`jrt_jax.nn.context`): ``mixer(x, ctx, cache=None) -> (y, cache)`` with a
`SequenceContext` (positions, mask, segment ids, encoder, decode flag) and ``mixer.init_cache(batch, capacity)``;
no cache is a parallel pass, an empty cache a prefill, ``ctx.decode`` a one-token step. Caches are pytrees:

=========================  ================================  =====================================
layer                      cache                             size
=========================  ================================  =====================================
PrefixLinearAttention      `ops.LinearAttentionState`        constant (fp32 kv [B,H,Φ,D], z [B,H,Φ])
CausalLinearAttention      `ops.LinearAttentionState`        constant
SlidingWindowAttention     `SlidingWindowCache` ring buffer  window keys + values per head
BaseConv                   `ConvCache`                       kernel_size - 1 conv inputs
Attention (Llama)          `KVCache`                         every position (capacity S)
=========================  ================================  =====================================
"""

from jrt_jax.nn.attention import Attention, KVCache
from jrt_jax.nn.axes import LOGICAL_AXES, SUGGESTED_RULES
from jrt_jax.nn.base_conv import BaseConv, ConvCache
from jrt_jax.nn.context import Mixer, SequenceContext
from jrt_jax.nn.linear_attention import CausalLinearAttention, PrefixLinearAttention
from jrt_jax.nn.mlp import GatedMLP, LlamaMLP
from jrt_jax.nn.norm import RMSNorm
from jrt_jax.nn.sequence_parallel import SequenceParallel, current_sequence_parallel, sequence_parallel
from jrt_jax.nn.sliding_window import SlidingWindowAttention, SlidingWindowCache

__all__ = [
    "Attention",
    "BaseConv",
    "CausalLinearAttention",
    "ConvCache",
    "GatedMLP",
    "KVCache",
    "LOGICAL_AXES",
    "LlamaMLP",
    "Mixer",
    "PrefixLinearAttention",
    "RMSNorm",
    "SUGGESTED_RULES",
    "SequenceContext",
    "SequenceParallel",
    "SlidingWindowAttention",
    "SlidingWindowCache",
    "current_sequence_parallel",
    "sequence_parallel",
]
