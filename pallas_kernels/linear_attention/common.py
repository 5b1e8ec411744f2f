"""Pieces shared by the linear-attention kernels: the factored Taylor map, state layout, shape checks.

Inside the kernels the state is kept in three parts, so φ is never concatenated along lanes:

    kv = [S0 (1×D); S1 (F×D); S2 (P2×D)],   z = [z0 (1); z1 (F); z2 (P2)]

for φ(x) = [1, x/d^¼, x⊗x (compact, weighted)]. The compact quadratic block is built with two small matmuls
against constant 0/1 expansion matrices, φ₂(x) = (x·E_a) ⊙ (x·E_b·W), which needs no reshape or gather and
runs on the MXU / tensor cores. P2 is F(F+1)/2 rounded up to a multiple of 128 (lane width); the padding
columns of E are zero, so the extra rows of S2 stay zero. The public state (jrt_jax.ops) is the compact
[1 + F + F(F+1)/2] layout; `split_state`/`merge_state` convert.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

LANES = 128


def matmul_precision(dtype):
    """HIGHEST (fp32-accurate) for float32 inputs; the MXU / tensor cores' native precision with fp32
    accumulation for bf16 / fp16."""
    return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


def compact_features(f: int) -> int:
    """Size of the compact Taylor state 1 + F + F(F+1)/2 (the public `LinearAttentionState` layout)."""
    return 1 + f + quad_features(f)


def quad_features(f: int) -> int:
    """Number of distinct quadratic monomials x_a·x_b, a ≤ b."""
    return f * (f + 1) // 2


def padded_quad_features(f: int) -> int:
    return -(-quad_features(f) // LANES) * LANES


GPU_VALUE_BLOCK = 16  # value columns per program of the GPU kernels


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def gpu_unsupported_reason(f: int, d: int, chunk: int) -> str | None:
    """Why the GPU kernels (`gpu.py`, Pallas-Triton; `triton.py`, Triton through jax-triton) cannot take these
    sizes, or None: Triton's dots need power-of-two tiles of at least 16, its ranges powers of two, and each
    program owns `GPU_VALUE_BLOCK` value columns."""
    if not (_is_pow2(f) and f >= 16):
        return f"the GPU kernel needs a power-of-two feature size >= 16; got F = {f}"
    if not _is_pow2(padded_quad_features(f)):
        return f"the GPU kernel needs F(F+1)/2 padded to a power of two; F = {f} gives {padded_quad_features(f)}"
    if d % GPU_VALUE_BLOCK:
        return f"the GPU kernel needs the value size to be a multiple of {GPU_VALUE_BLOCK}; got D = {d}"
    if not (_is_pow2(chunk) and chunk >= 16):
        return f"the GPU kernel needs a power-of-two chunk_size >= 16; got {chunk}"
    return None


def expansion_matrices(f: int, scale_dim: float) -> tuple[np.ndarray, np.ndarray]:
    """(E_a, E_b) of shape [F, P2]: (x·E_a)[:, p] = x_a and (x·E_b)[:, p] = w_ab·x_b for the p-th pair a ≤ b.

    w_ab = 1/√(2d) on the diagonal and 1/√d off it, so Σ_p φ₂(q)_p φ₂(k)_p = (q·k)²/(2d): the compact map.
    """
    p2 = padded_quad_features(f)
    ea = np.zeros((f, p2), np.float32)
    eb = np.zeros((f, p2), np.float32)
    col = 0
    for a in range(f):
        for b in range(a, f):
            ea[a, col] = 1.0
            eb[b, col] = 1.0 / math.sqrt(2.0 * scale_dim) if a == b else 1.0 / math.sqrt(scale_dim)
            col += 1
    return ea, eb


class KernelState(NamedTuple):
    """The state in kernel layout, fp32: s0 [BH,1,D], s1 [BH,F,D], s2 [BH,P2,D], z0 [BH,1,1], z1 [BH,1,F], z2 [BH,1,P2]."""

    s0: jax.Array
    s1: jax.Array
    s2: jax.Array
    z0: jax.Array
    z1: jax.Array
    z2: jax.Array


def split_state(kv, z, f: int) -> KernelState:
    """Compact (kv [B,H,P,D], z [B,H,P]) → kernel layout with batch and heads merged."""
    b, h, p, d = kv.shape
    q2, p2 = quad_features(f), padded_quad_features(f)
    kv = kv.reshape(b * h, p, d).astype(jnp.float32)
    z = z.reshape(b * h, 1, p).astype(jnp.float32)
    pad_rows = [(0, 0), (0, p2 - q2), (0, 0)]
    pad_cols = [(0, 0), (0, 0), (0, p2 - q2)]
    return KernelState(
        s0=kv[:, :1], s1=kv[:, 1 : 1 + f], s2=jnp.pad(kv[:, 1 + f :], pad_rows),
        z0=z[:, :, :1], z1=z[:, :, 1 : 1 + f], z2=jnp.pad(z[:, :, 1 + f :], pad_cols),
    )


def merge_state(st: KernelState, batch: int, heads: int, f: int):
    """Kernel layout → compact (kv [B,H,P,D], z [B,H,P]). Leading axes other than BH are kept in front."""
    q2 = quad_features(f)
    lead = st.s0.shape[:-3]
    kv = jnp.concatenate([st.s0, st.s1, st.s2[..., :q2, :]], axis=-2)
    z = jnp.concatenate([st.z0, st.z1, st.z2[..., :q2]], axis=-1)[..., 0, :]
    return kv.reshape(lead + (batch, heads) + kv.shape[-2:]), z.reshape(lead + (batch, heads, z.shape[-1]))


def zero_kernel_state(bh: int, f: int, d: int) -> KernelState:
    p2 = padded_quad_features(f)
    z = lambda *s: jnp.zeros(s, jnp.float32)
    return KernelState(z(bh, 1, d), z(bh, f, d), z(bh, p2, d), z(bh, 1, 1), z(bh, 1, f), z(bh, 1, p2))


def check_inputs(q, k, v, w, chunk_size: int) -> None:
    """Shape/dtype checks at the kernel boundary (the public ops validate first; this guards direct callers)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must have rank 4 [batch, seq, heads, dim]; got shape {tuple(x.shape)}")
        if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
            raise TypeError(f"{name}: the Pallas kernels take float32, bfloat16 or float16; got {x.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}; got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must share batch, seq and heads with q {tuple(q.shape[:3])}; got {tuple(v.shape[:3])}")
    if w is not None and tuple(w.shape) != tuple(q.shape[:2]):
        raise ValueError(f"w must have shape [batch, seq] = {tuple(q.shape[:2])}; got {tuple(w.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 8 or chunk_size % 8:
        raise ValueError(f"chunk_size must be a positive multiple of 8; got {chunk_size!r}")


def document_flags(doc, chunk: int):
    """Per-chunk document flags of packed sequences, shared by the kernels and the XLA chunked path.

    Args:
      doc: [B, T] int document labels: equal labels form one document, documents are contiguous runs, and
        the row's first label is its first document (the one an initial state belongs to).
      chunk: the chunk length C; T is padded to whole chunks (the pad joins the last document).

    Returns float32 arrays (0/1 except the labels):
      labels [B, Tp]: doc padded (intra-chunk: key j reaches query i only with an equal label);
      r [B, Tp]: 1 where the token belongs to the document open at its chunk's start (reads the carried state);
      u [B, Tp]: 1 where the token belongs to its chunk's last document (enters the state after the chunk);
      keep [B, N]: 1 where the document open at the chunk's start is still open at its end (the carried
        state survives the chunk).
    Labels travel as float32 so every kernel input is a float; they are compared for equality only, and
    relabelled 0, 1, 2, … per row first so they stay exact.
    """
    b, t = doc.shape
    n = max(1, -(-t // chunk))
    tp = n * chunk
    doc = doc - doc[:, :1]
    doc = jnp.pad(doc, [(0, 0), (0, tp - t)], mode="edge")
    chunks = doc.reshape(b, n, chunk)
    last = chunks[:, :, -1]
    prev = jnp.concatenate([doc[:, :1], last[:, :-1]], axis=1)
    r = chunks == prev[:, :, None]
    u = chunks == last[:, :, None]
    f32 = lambda x: x.astype(jnp.float32)
    return f32(doc), f32(r.reshape(b, tp)), f32(u.reshape(b, tp)), f32(last == prev)


def kernel_segments(flags, chunk: int):
    """`document_flags` output → the kernels' inputs: (labels, r, u, keep), each [B, Tp, 1] float32.

    Labels become chunk-relative (0 … C-1, exact in any float format, so the TPU kernel can build the
    intra-chunk comparison with a rank-1 matmul), and keep is repeated over its chunk's tokens.
    """
    labels, r, u, keep = flags
    b, tp = labels.shape
    chunks = labels.reshape(b, tp // chunk, chunk)
    rel = (chunks - chunks[:, :, :1]).reshape(b, tp)
    keep_tok = jnp.repeat(keep, chunk, axis=1)
    return tuple(x[..., None] for x in (rel, r, u, keep_tok))
