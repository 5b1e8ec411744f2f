"""Pieces shared by the linear-attention kernels: the chunk body, the Taylor map's sizes and kernel, the
matmul-precision rule, state layout, shape checks.

Inside the kernels the state is kept in three parts, so φ is never concatenated along lanes:

    kv = [S0 (1×D); S1 (F×D); S2 (P2×D)],   z = [z0 (1); z1 (F); z2 (P2)]

for φ(x) = [1, x/d^¼, x⊗x (compact, weighted)]. The compact quadratic block is built with two small matmuls
against constant 0/1 expansion matrices, φ₂(x) = (x·E_a) ⊙ (x·E_b·W), which needs no reshape or gather and
runs on the MXU / tensor cores. P2 is F(F+1)/2 rounded up to a multiple of 128 (lane width); the padding
columns of E are zero, so the extra rows of S2 stay zero. The public state (jrt_jax.ops) is the compact
[1 + F + F(F+1)/2] layout; `split_state`/`merge_state` convert.

This module is the lowest layer that knows the Taylor map, so `jrt_jax.ops` takes `taylor_feature_dim`,
`taylor_kernel` and `matmul_precision` from here: one definition for the kernels and the XLA paths.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

LANES = 128
_F32 = jnp.float32


def matmul_precision(*arrays_or_dtypes) -> lax.Precision:
    """The matmul precision of the kernels and the chunked XLA paths: HIGHEST (fp32-accurate; the default on TPU
    and GPU is a bf16 / TF32 pass, ~1e-3 relative, too coarse for the fp32 1e-5 contract) when the inputs' result
    dtype is float32, DEFAULT (the MXU / tensor cores' native precision, fp32 accumulation) for bf16 / fp16.
    A no-op on CPU."""
    dtype = jnp.result_type(*arrays_or_dtypes)
    return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


def triton_input_precision(precision: lax.Precision) -> str:
    """`matmul_precision`'s choice in the Triton language's words (`tl.dot(input_precision=...)`): "ieee" for
    HIGHEST, "tf32" otherwise, the mapping the Pallas Triton lowering applies to the same `lax.Precision`."""
    return "ieee" if precision == lax.Precision.HIGHEST else "tf32"


def taylor_kernel(s):
    """φ(q)·φ(k) as a function of s = q·k/√d: 1 + s + s²/2, the second-order Taylor expansion of exp(s) (≥ 1/2).

    Plain arithmetic on its argument, so one definition serves jnp arrays (the XLA paths, the Pallas kernels)
    and Triton tensors (`triton.jit(taylor_kernel)` in the Triton-language kernel)."""
    return 1.0 + s + 0.5 * s * s


def taylor_scales(scale_dim: float) -> tuple[float, float]:
    """(1/√d, 1/d^¼): the factor of s = q·k/√d and of the linear features x/d^¼."""
    return 1.0 / scale_dim**0.5, 1.0 / scale_dim**0.25


def quad_features(f: int) -> int:
    """Number of distinct quadratic monomials x_a·x_b, a ≤ b."""
    return f * (f + 1) // 2


def taylor_feature_dim(feature_dim: int, *, compact: bool = False) -> int:
    """Number of features of the Taylor map for raw feature size F: 1 + F + F² (273 for F = 16), or with
    `compact` (each unordered pair once, the layout of `LinearAttentionState`) 1 + F + F(F+1)/2 (153)."""
    f = int(feature_dim)
    return 1 + f + (quad_features(f) if compact else f * f)


def compact_features(f: int) -> int:
    """Size of the compact Taylor state, `taylor_feature_dim(f, compact=True)`."""
    return taylor_feature_dim(f, compact=True)


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


def state_shapes(f: int, d: int) -> list[tuple[int, int]]:
    """Per-head shapes of the `KernelState` parts (s0, s1, s2, z0, z1, z2) for value size d: the blocks a kernel
    program holds (and `chunk_body` takes) with d its value block."""
    p2 = padded_quad_features(f)
    return [(1, d), (f, d), (p2, d), (1, 1), (1, f), (1, p2)]


LOWERINGS = ("mosaic", "triton")


def chunk_body(q, k, v, w, ea, eb, state, seg=None, *, write_output=None, normalize=True, eps, inv_sqrt_d, inv_d4,
               precision, lowering: str = "mosaic"):
    """One chunk of C tokens on a block of value columns: the algorithm of the TPU kernel (`tpu.py`, Mosaic) and
    the Pallas GPU kernel (`gpu.py`, Triton lowering), which differ only in how they walk the chunks and move
    blocks in and out. Returns the state after the chunk.

        s = q kᵀ/√d,  a = tril(taylor_kernel(s))                     intra-chunk
        num = a (w∘v) + S0 + (q/d^¼) S1 + φ₂(q) S2                  φ₂ by two matmuls with the expansion matrices
        den = a w + z0 + (q/d^¼)·z1 + φ₂(q)·z2
        S0 += Σ w∘v,  S1 += (k/d^¼)ᵀ(w∘v),  S2 += φ₂(k)ᵀ(w∘v)     (and the z parts likewise)

    Args:
      q, k: [C, F]; v: [C, Dv], the program's value columns; w: [C, 1] token weights (1 real, 0 padding);
        ea, eb: the expansion matrices [F, P2]; all float32.
      state: (s0, s1, s2, z0, z1, z2) in the shapes of `state_shapes(F, Dv)`, float32.
      seg: None, or (labels, r, u, keep), each [C, 1] (keep repeated over the chunk): chunk-relative document
        labels, whether the token reads the carried state, whether it enters the new one, whether the carried
        state survives the chunk (see `document_flags`). A key reaches a query of the chunk only with an equal
        label, the carried state is read by the tokens with r = 1, kept only when keep = 1, and updated from the
        keys with u = 1: exact for documents of any length.
      write_output: None to accumulate the state only (the PLA encoder pass: no scores, no quadratic part of q);
        otherwise called with y [C, Dv] = num / (den + eps) — or (num [C, Dv], den [C, 1]) when not `normalize`
        — before the state update is built, so that the kernel's stores end the output tiles' lifetime: on
        Triton they otherwise stay live across the update and cost one more [C, P2] fp32 buffer of shared memory
        (64 KiB at F = 16, C = 64, too much for an A100 with fp32 inputs); the [C, P2] features of k are built
        after the output for the same reason.
      inv_sqrt_d, inv_d4: `taylor_scales(scale_dim)`; precision: `matmul_precision` of the kernel's inputs.
      lowering: "mosaic" or "triton", for the three steps the two compilers cannot share: comparing a [C, 1]
        column with itself across the chunk (document labels), the matrix-column product a·w, and reading the
        chunk-constant `keep`. Mosaic does them as narrow matmuls and a static slice, which avoid in-kernel
        transposes of a column; Triton's dots need every dimension ≥ 16 and its Pallas lowering has no static
        slice of a value, so there they are a reshape, a broadcast product with a row sum, and a max.
    """
    if lowering not in LOWERINGS:
        raise ValueError(f"chunk_body: lowering must be one of {LOWERINGS}; got {lowering!r}")
    mosaic = lowering == "mosaic"
    dot = functools.partial(jnp.dot, precision=precision, preferred_element_type=_F32)
    dot_t = lambda a, b: lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=precision,
                                         preferred_element_type=_F32)  # aᵀ b
    c = q.shape[0]
    if write_output is not None:
        q1 = q * inv_d4
        q2 = dot(q, ea) * dot(q, eb)
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=_F32)
        s = s * inv_sqrt_d
        row = lax.broadcasted_iota(jnp.int32, (c, c), 0)
        col = lax.broadcasted_iota(jnp.int32, (c, c), 1)
        allowed = row >= col
        if seg is not None:
            labels = seg[0]
            if mosaic:  # labels_j along the columns by a rank-1 product; labels are < C, so exact
                cols = lax.dot_general(jnp.ones_like(labels), labels, (((1,), (1,)), ((), ())),
                                       precision=lax.Precision.HIGHEST, preferred_element_type=_F32)
            else:
                cols = labels.reshape(1, c)
            allowed = allowed & (labels == cols)
        a = jnp.where(allowed, taylor_kernel(s), 0.0)
        s0, s1, s2, z0, z1, z2 = state
        carried_num = s0 + dot(q1, s1) + dot(q2, s2)
        carried_den = z0 + jnp.sum(q1 * z1, axis=1, keepdims=True) + jnp.sum(q2 * z2, axis=1, keepdims=True)
        if seg is not None:
            r = seg[1]
            carried_num, carried_den = carried_num * r, carried_den * r
        num = dot(a, v * w) + carried_num
        own_den = dot(a, w) if mosaic else jnp.sum(a * w.reshape(1, c), axis=1, keepdims=True)
        den = own_den + carried_den
        write_output(num / (den + eps) if normalize else (num, den))
    kept = state
    wu = w
    if seg is not None:
        u, keep = seg[2], seg[3]
        wu = w * u
        keep = keep[0:1, :] if mosaic else jnp.max(keep, axis=0, keepdims=True)
        kept = tuple(x * keep for x in state)  # the output read the carried state; what survives is updated
    vwu = v * wu
    k1 = k * inv_d4
    k2 = dot(k, ea) * dot(k, eb)
    return (
        kept[0] + jnp.sum(vwu, axis=0, keepdims=True),
        kept[1] + dot_t(k1, vwu),
        kept[2] + dot_t(k2, vwu),
        kept[3] + jnp.sum(wu, axis=0, keepdims=True),
        kept[4] + jnp.sum(k1 * wu, axis=0, keepdims=True),
        kept[5] + jnp.sum(k2 * wu, axis=0, keepdims=True),
    )


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


def patch_triton_for_jax_triton() -> str | None:
    """Give triton < 3.7 the `TMA_TF32` constant that jax-triton 0.4 imports; must run before jax_triton is first
    imported. jax-triton 0.4.1 asks for triton >= 3.7 and imports `triton.backends.nvidia.driver.TMA_TF32` under a
    guard: on triton 3.6 (the GPU image's) the guard replaces its whole NVIDIA backend by stubs and every kernel
    call fails later. The constant is 11 (CUDA's TF32 tensor-map type), used only for TMA descriptors, which this
    project's kernel does not use. Returns what it did, or None where nothing was needed or triton is absent."""
    try:
        from triton.backends.nvidia import driver
    except Exception:  # noqa: BLE001 - no triton, or no NVIDIA backend: nothing for jax-triton to use anyway
        return None
    if hasattr(driver, "TMA_TF32"):
        return None
    driver.TMA_TF32 = 11  # CU_TENSOR_MAP_DATA_TYPE_TFLOAT32
    return "defined triton.backends.nvidia.driver.TMA_TF32 = 11 for jax-triton (triton < 3.7)"
