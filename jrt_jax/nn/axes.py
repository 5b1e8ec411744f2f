"""Logical axis names carried by every parameter, and the initializer helper that attaches them.

Each parameter is created with ``nnx.with_partitioning(initializer, names)``, one name per array dimension,
so a trainer can shard by rules (``(logical name, mesh axis)`` pairs) without knowing the modules. The names:

=============  =====================================================================================
``vocab``      rows of the token embedding (and columns of an untied LM head)
``embed``      the model width d (the residual stream): input of every projection, output of every
               output projection, RMSNorm scales, output-projection biases
``heads``      fused (heads × head_dim) dimension of softmax-attention queries, of linear-attention
               values, and the input of attention output projections; head-major, so sharding it
               splits whole heads when the mesh axis divides the number of heads
``kv``         fused (kv_heads × head_dim) dimension of Llama key/value projections (GQA)
``feature``    fused (heads × feature_dim) dimension of linear-attention / PLA query and key projections
``qkv``        the fused q|k|v output of the sliding-window ``Wqkv`` projection (3 × heads × head_dim,
               q first); sharding it does not split along head boundaries, replicate it or shard it
               only with FSDP-style axes
``mlp``        hidden dimension of the gated MLP (2·n_inner at fc1's output: y then gate; n_inner at
               fc2's input; Llama's gate/up/down projections)
``conv``       BaseConv channels: the in_proj output (u1|u2, 4d), the depthwise conv channels and the
               out_proj input (2d)
``conv_width`` the taps of the depthwise causal convolution (kernel size, 3); never worth sharding
=============  =====================================================================================

Weight layout: every projection is an ``nnx.Linear`` with kernel ``[in, out]`` (PyTorch stores ``[out, in]``;
the converter transposes). The suggested rules in :data:`SUGGESTED_RULES` are a starting point for a
``(data, fsdp, tensor)`` mesh, not something the modules depend on.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx
from flax.core import meta

VOCAB = "vocab"
EMBED = "embed"
HEADS = "heads"
KV = "kv"
FEATURE = "feature"
QKV = "qkv"
MLP = "mlp"
CONV = "conv"
CONV_WIDTH = "conv_width"

#: Every logical axis name a parameter of `jrt_jax.nn` / `jrt_jax.models` may carry.
LOGICAL_AXES = (VOCAB, EMBED, HEADS, KV, FEATURE, QKV, MLP, CONV, CONV_WIDTH)

#: A starting point for a (data, fsdp, tensor) mesh: weights FSDP-sharded along the model width,
#: tensor parallelism over heads / features / MLP / conv channels. Unlisted names are replicated.
SUGGESTED_RULES = (
    (EMBED, "fsdp"),
    (VOCAB, "tensor"),
    (HEADS, "tensor"),
    (KV, "tensor"),
    (FEATURE, "tensor"),
    (MLP, "tensor"),
    (CONV, "tensor"),
    (QKV, None),
    (CONV_WIDTH, None),
)


def partitioned(initializer, names: Sequence[str | None]):
    """``nnx.with_partitioning(initializer, names)`` with eager sharding only when a mesh is active.

    Flax 0.12 shards a partitioned variable at creation ("eager sharding") by default, which fails without a
    mesh. Here it happens only when a mesh context is set (``jax.sharding.use_mesh``; add logical-axis rules so
    the names resolve) and eager sharding is on (``nnx.use_eager_sharding``); otherwise the names are recorded
    as metadata (``out_sharding``) for ``nnx.get_partition_spec`` and the trainer's rules.
    """
    names = tuple(names)
    unknown = [n for n in names if n is not None and n not in LOGICAL_AXES]
    if unknown:
        raise ValueError(f"unknown logical axis name(s) {unknown}; known: {LOGICAL_AXES}")
    eager = bool(nnx.using_eager_sharding() and meta.global_mesh_defined())
    return nnx.with_partitioning(initializer, names, eager_sharding=eager)
