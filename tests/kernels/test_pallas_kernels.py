"""Pallas prefill kernels: interpret mode against the reference, lowering for TPU and CUDA, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels
from jrt_jax import ops
from pallas_kernels.linear_attention import api as kernel_api
from tests.helpers import assert_rel, export_for, random_qkv

BACKENDS = ["tpu", "gpu"]
ON_GPU = jax.default_backend() in ("gpu", "cuda")


def _prefill(backend, *args, **kwargs):
    kwargs.setdefault("interpret", not ON_GPU or backend == "tpu")
    return pallas_kernels.linear_attention_prefill(*args, backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "b,t,h,d,m,chunk", [(1, 1, 1, 16, 1, 16), (2, 70, 2, 16, 1, 16), (1, 70, 3, 32, 70, 32), (2, 45, 2, 16, 20, 64)]
)
def test_kernel_matches_reference_fp32(backend, b, t, h, d, m, chunk):
    q, k, v, ke, ve = random_qkv(t + m, b, t, h, 16, d, m)
    mask = jnp.arange(t)[None] >= jnp.arange(b)[:, None] * 3
    w = mask.astype(jnp.float32)
    # Encoder state by the state-only kernel, then the causal pass starting from it: PLA.
    _, enc, _ = _prefill(backend, ke, ke, ve, w=w[:, :m], chunk_size=chunk, emit_output=False)
    y, (kv, z), _ = _prefill(backend, q, k, v, w=w, initial_state=enc, chunk_size=chunk)
    yr, st = ops.prefix_linear_attention(q, k, v, ke, ve, mask=mask, implementation="reference", return_state=True)
    assert y.shape == (b, t, h, d) and y.dtype == jnp.float32
    assert_rel(jnp.where(mask[..., None, None], y, 0), yr, 1e-5, "y")
    assert_rel(kv, st.kv, 1e-5, "kv")
    assert_rel(z, st.z, 1e-5, "z")


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_bf16(backend):
    q, k, v = random_qkv(1, 2, 50, 2, 16, 16, dtype=jnp.bfloat16)
    y, _, _ = _prefill(backend, q, k, v, chunk_size=16)
    assert y.dtype == jnp.bfloat16
    ref = ops.linear_attention(*(a.astype(jnp.float32) for a in (q, k, v)), implementation="reference")
    assert_rel(y, ref, 2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_chunk_states_and_decoding_continues(backend):
    b, t, h, d, chunk = 1, 40, 2, 16, 16
    q, k, v = random_qkv(2, b, t + 5, h, 16, d)
    _, (kv, z), (kv_chunks, z_chunks) = _prefill(backend, q[:, :t], k[:, :t], v[:, :t], chunk_size=chunk,
                                                 save_states=True)
    assert kv_chunks.shape == (3, b, h, 153, d) and z_chunks.shape == (3, b, h, 153)
    for n in range(3):  # the state at the start of chunk n is the state after n·chunk tokens
        want = ops.linear_attention_state(k[:, : n * chunk], v[:, : n * chunk], implementation="reference") if n else None
        if want is None:
            assert float(jnp.max(jnp.abs(kv_chunks[0]))) == 0.0
        else:
            assert_rel(kv_chunks[n], want.kv, 1e-5)
            assert_rel(z_chunks[n], want.z, 1e-5)
    state = ops.LinearAttentionState(kv, z)
    full = ops.linear_attention(q, k, v, implementation="reference")
    for i in range(t, t + 5):
        y_i, state = ops.linear_attention_step(state, q[:, i], k[:, i], v[:, i])
        assert_rel(y_i, full[:, i], 1e-5)


@pytest.mark.slow
def test_ops_pallas_path_and_gradients():
    b, t, h, d, m = 2, 37, 2, 16, 11
    q, k, v, ke, ve = random_qkv(3, b, t, h, 16, d, m)
    mask = jnp.arange(t)[None] >= jnp.array([[0], [5]])
    cot = jax.random.normal(jax.random.PRNGKey(4), (b, t, h, d))

    def loss(impl, *args):
        y, s = ops.prefix_linear_attention(*args, implementation=impl, chunk_size=16, mask=mask, return_state=True)
        return jnp.sum(y * cot) + 1e-3 * jnp.sum(s.kv)

    assert_rel(loss("pallas", q, k, v, ke, ve), loss("reference", q, k, v, ke, ve), 1e-5)
    gp = jax.grad(functools.partial(loss, "pallas"), argnums=(0, 1, 2, 3, 4))(q, k, v, ke, ve)
    gr = jax.grad(functools.partial(loss, "reference"), argnums=(0, 1, 2, 3, 4))(q, k, v, ke, ve)
    for name, a, bb in zip(["q", "k", "v", "k_enc", "v_enc"], gp, gr):
        assert_rel(a, bb, 1e-5, f"d{name}")
    st = ops.pla_prefill_state(k, v, ke, ve, mask=mask, implementation="pallas", chunk_size=16)
    want = ops.pla_prefill_state(k, v, ke, ve, mask=mask, implementation="reference")
    assert_rel(st.kv, want.kv, 1e-5)


# ----------------------------------------------------------------------------------- lowering for hardware

@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("emit_output,save_states", [(True, False), (True, True), (False, False)])
def test_kernels_lower_for_hardware(platform, dtype, emit_output, save_states):
    """jax.export runs the real Mosaic / Triton lowering without the hardware."""
    backend = "tpu" if platform == "tpu" else "gpu"
    f = jax.jit(functools.partial(pallas_kernels.linear_attention_prefill, backend=backend, interpret=False,
                                  chunk_size=64, emit_output=emit_output, save_states=save_states))
    args = [jax.ShapeDtypeStruct((2, 1000, 4, 16), dtype)] * 2 + [jax.ShapeDtypeStruct((2, 1000, 4, 64), dtype)]
    text = export_for(f, [platform], *args).mlir_module()
    assert ("tpu_custom_call" if platform == "tpu" else "xla.gpu.triton") in text


def _count_kernels(text):
    """(TPU kernels, CUDA kernels) in an exported module: the CUDA kernel is the Pallas-Triton one, or the
    jax-triton one where `jax_triton` imports (a CUDA jaxlib; see pallas_kernels/linear_attention/api.py)."""
    return text.count("tpu_custom_call"), text.count("xla.gpu.triton") + text.count("@triton_kernel_call")


@pytest.mark.parametrize("impl", [pytest.param("pallas", marks=pytest.mark.slow), "auto"])
def test_one_function_exports_for_every_platform(impl):
    """One jitted, differentiable PLA (kernel forward, XLA backward) exported for TPU, CUDA and CPU from this
    CPU-only machine: each platform's kernel is in it, chosen by platform, not by a context manager."""
    def loss(q, k, v, ke, ve, seg):
        y = ops.prefix_linear_attention(q, k, v, ke, ve, segment_ids=seg, implementation=impl, chunk_size=64)
        return jnp.sum(y.astype(jnp.float32))

    shapes = [(1, 300, 2, 16), (1, 300, 2, 16), (1, 300, 2, 64), (1, 100, 2, 16), (1, 100, 2, 64)]
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in shapes] + [jax.ShapeDtypeStruct((1, 300), jnp.int32)]
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    export = lambda platforms: export_for(fn, platforms, *args)
    # Packed documents with an encoder: a forward and a backward causal pass over the encoder plus the causal
    # pass itself, three kernel calls per platform.
    assert _count_kernels(export(["tpu", "cuda", "cpu"]).mlir_module()) == (3, 3)
    assert _count_kernels(export(["tpu"]).mlir_module()) == (3, 0)
    assert _count_kernels(export(["cuda"]).mlir_module()) == (0, 3)
    assert _count_kernels(export(["cpu"]).mlir_module()) == (0, 0)


def test_auto_falls_back_where_a_kernel_cannot_run():
    """F = 8 is no shape for the Triton kernel: "auto" lowers the XLA path for CUDA, "pallas" says why."""
    args = [jax.ShapeDtypeStruct((1, 64, 2, 8), jnp.float32)] * 2 + [jax.ShapeDtypeStruct((1, 64, 2, 16), jnp.float32)]
    auto = jax.jit(functools.partial(ops.linear_attention, implementation="auto"))
    text = export_for(auto, ["tpu", "cuda"], *args).mlir_module()
    assert _count_kernels(text) == (1, 0)
    pallas = jax.jit(functools.partial(ops.linear_attention, implementation="pallas"))
    with pytest.raises(ValueError, match="the cuda kernel cannot take these inputs: the GPU kernel needs a power-of-two"):
        export_for(pallas, ["cuda"], *args)


@pytest.mark.parametrize("impl", ["pallas", "auto"])
def test_platform_dispatch_under_vmap_and_eagerly(impl):
    q, k, v = random_qkv(7, 3, 40, 2, 16, 16)
    run = functools.partial(ops.linear_attention, implementation=impl, chunk_size=16)
    want = ops.linear_attention(q, k, v, implementation="reference")
    assert_rel(run(q, k, v), want, 1e-5)
    mapped = jax.vmap(lambda a, b_, c: run(a[None], b_[None], c[None])[0])(q, k, v)
    assert_rel(mapped, want, 1e-5)


# ------------------------------------------------------------------------------------- one shared definition


def test_chunk_body_lowerings_agree_and_definitions_are_shared():
    """`common.chunk_body` computes the same chunk in its Mosaic and Triton forms (the three steps that differ),
    with packed documents and the unnormalised output; the Taylor map's size, kernel and the precision rule that
    `jrt_jax.ops` uses are the kernels' own."""
    from jrt_jax.ops import _checks, feature_map
    from pallas_kernels.linear_attention import common

    c, f, d = 16, 16, 16
    keys = jax.random.split(jax.random.PRNGKey(11), 4)
    q, k = (jax.random.normal(kk, (c, f)) for kk in keys[:2])
    v = jax.random.normal(keys[2], (c, d))
    w = (jnp.arange(c) < c - 3).astype(jnp.float32)[:, None]
    ea, eb = (jnp.asarray(e) for e in common.expansion_matrices(f, float(f)))
    state = tuple(jax.random.uniform(kk, s) for kk, s in zip(jax.random.split(keys[3], 6),
                                                              common.state_shapes(f, d)))
    labels = jnp.repeat(jnp.arange(4.0), 4)[:, None]  # four documents of 4 tokens
    seg = (labels, (labels == 0).astype(jnp.float32), (labels == 3).astype(jnp.float32), jnp.zeros((c, 1)))
    inv_sqrt_d, inv_d4 = common.taylor_scales(float(f))
    runs = {}
    for lowering in common.LOWERINGS:
        out = []
        new = common.chunk_body(q, k, v, w, ea, eb, state, seg, write_output=out.append, normalize=False, eps=0.0,
                                inv_sqrt_d=inv_sqrt_d, inv_d4=inv_d4, precision=common.matmul_precision(q),
                                lowering=lowering)
        runs[lowering] = (*out[0], *new)
    for a, b in zip(*runs.values()):
        assert_rel(a, b, 1e-6)
    with pytest.raises(ValueError, match="lowering must be one of"):
        common.chunk_body(q, k, v, w, ea, eb, state, lowering="cuda", eps=0.0, inv_sqrt_d=1.0, inv_d4=1.0,
                          precision=None)
    assert feature_map.taylor_feature_dim is common.taylor_feature_dim and common.compact_features(16) == 153
    assert feature_map.taylor_kernel is common.taylor_kernel and ops.taylor_feature_dim(16) == 273
    assert _checks.matmul_precision is common.matmul_precision
    assert common.matmul_precision(jnp.float32) == jax.lax.Precision.HIGHEST
    assert common.matmul_precision(q.astype(jnp.bfloat16), q) == jax.lax.Precision.HIGHEST
    assert common.matmul_precision(jnp.bfloat16) == common.matmul_precision(jnp.float16) == jax.lax.Precision.DEFAULT
    assert [common.triton_input_precision(common.matmul_precision(t)) for t in (jnp.float32, jnp.bfloat16)] == [
        "ieee", "tf32"]


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_errors():
    q, k, v = random_qkv(5, 1, 20, 1, 16, 16)
    with pytest.raises(ValueError, match="chunk_size must be a positive multiple of 8"):
        pallas_kernels.linear_attention_prefill(q, k, v, chunk_size=12)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        pallas_kernels.linear_attention_prefill(q.astype(jnp.int32), k, v)
    with pytest.raises(ValueError, match="k must have the shape of q"):
        pallas_kernels.linear_attention_prefill(q, k[..., :8], v)
    with pytest.raises(ValueError, match="power-of-two feature size >= 16; got F = 8"):
        pallas_kernels.linear_attention_prefill(q[..., :8], k[..., :8], v, backend="gpu")
    with pytest.raises(ValueError, match="multiple of 16; got D = 8"):
        pallas_kernels.linear_attention_prefill(q, k, v[..., :8], backend="gpu")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        pallas_kernels.linear_attention_prefill(q, k, v, backend="metal")
    # Through the public op: a clear error naming the reason, and "auto" falls back to the XLA path instead.
    with pytest.raises(ValueError, match="implementation='pallas' cannot run these inputs: chunk_size 12"):
        ops.linear_attention(q, k, v, implementation="pallas", chunk_size=12)
    assert_rel(ops.linear_attention(q, k, v, implementation="auto", chunk_size=12),
               ops.linear_attention(q, k, v, implementation="reference"), 1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU")
def test_gpu_kernel_on_device():
    q, k, v, ke, ve = random_qkv(6, 4, 1000, 4, 16, 64, 300)
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
        args = [a.astype(dtype) for a in (q, k, v, ke, ve)]
        y = ops.prefix_linear_attention(*args, implementation="pallas")
        ref = ops.prefix_linear_attention(*(a.astype(jnp.float32) for a in args), implementation="reference")
        assert_rel(y, ref, tol)


@pytest.mark.skipif(not kernel_api.jax_triton_available(),
                    reason="jax-triton cannot lower here (needs jax-triton and the jax CUDA plugin's bindings)")
@pytest.mark.parametrize("normalize", [True, False])
def test_triton_backend_exports_for_cuda(normalize):
    """With jax-triton, `backend="triton"` and `backend=None` lower for CUDA to jax-triton's kernel call (the
    kernel compiled to PTX on the host; without a local GPU for compute capability 9.0). Needs no torch, so the
    Python 3.12 / jax-triton 0.4 stage of CI runs it too."""
    args = [jax.ShapeDtypeStruct((2, 300, 2, 16), jnp.bfloat16)] * 2 + [jax.ShapeDtypeStruct((2, 300, 2, 64),
                                                                                               jnp.bfloat16)]
    for backend in ("triton", None):
        fn = jax.jit(lambda q, k, v, backend=backend: pallas_kernels.linear_attention_prefill(
            q, k, v, doc=jnp.zeros(q.shape[:2], jnp.int32), backend=backend, normalize=normalize, save_states=True))
        text = export_for(fn, ["cuda"], *args).mlir_module()
        assert "triton_kernel_call" in text and "xla.gpu.triton" not in text
