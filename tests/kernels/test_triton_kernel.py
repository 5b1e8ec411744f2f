"""The Triton-language prefill kernel (`pallas_kernels/linear_attention/triton.py`) in Triton's interpreter.

Triton's interpreter must be chosen before triton is first imported (TRITON_INTERPRET=1: triton.language's own
jitted functions, `tl.sum`, have to be interpreted too), and from then on interprets every Triton kernel of the
process, so jax-triton can no longer compile one. The interpreted runs therefore happen in one subprocess, this
module run as a script (`python -m tests.kernels.test_triton_kernel OUT.npz`), which leaves the pytest process (other
test modules, the GPU test below) untouched whatever xdist collects with it. The tests compare its outputs with
the Pallas interpreter's run of `gpu.prefill_gpu`, the same contract on the same inputs, and with the
`jrt_jax.ops` reference.

NaN in padded tokens is not tested here: neither kernel keeps it out (a NaN key or value with weight 0 still
gives 0 · NaN), the public ops zero excluded tokens before any kernel runs
(the contract suite, tests/ops/test_op_contract.py, tests that for every op).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("triton")
torch = pytest.importorskip("torch")

import pallas_kernels  # noqa: E402
from jrt_jax import ops  # noqa: E402
from pallas_kernels.linear_attention import api, common, gpu  # noqa: E402
from pallas_kernels.linear_attention import triton as triton_kernel  # noqa: E402
from tests.helpers import assert_rel, random_qkv  # noqa: E402
from tests.segment_helpers import python_document_ids, random_segment_ids  # noqa: E402

F = 16
ON_GPU = jax.default_backend() in ("gpu", "cuda")
ROOT = Path(__file__).resolve().parents[2]

# Small shapes keep the interpreter fast: B = 2, H = 2, T ≤ 96 after padding to whole chunks.
_BASE = dict(b=2, h=2, d=16, chunk=16, dtype="float32", weights="all", segments=None, state=False, normalize=True,
             save_states=False, emit_output=True, split=None)
CASES = {
    "plain": dict(seed=0, t=64),
    "padding_state_saved": dict(seed=1, t=70, d=32, weights="padded", state=True, save_states=True),
    "documents": dict(seed=2, t=90, chunk=32, segments=20, state=True, save_states=True),
    "short_documents_unnormalised": dict(seed=3, t=75, d=32, segments=6, state=True, normalize=False),
    "state_only": dict(seed=4, t=50, segments=12, state=True, emit_output=False),
    "bf16": dict(seed=5, t=50, dtype="bfloat16", weights="padded", state=True),
    "no_weights": dict(seed=6, t=64, chunk=32, weights=None, state=True),
    "two_calls": dict(seed=7, t=96, weights="padded", state=True, split=48),
}


def _case(name):
    return {**_BASE, **CASES[name]}


def _bf16_round(x):
    return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))


def _inputs(name):
    """Deterministic inputs of a case, in the public layout ("raw") and in kernel layout ("kernel", numpy)."""
    c = _case(name)
    b, t, h, d, chunk = c["b"], c["t"], c["h"], c["d"], c["chunk"]
    rng = np.random.default_rng(c["seed"])
    q, k = rng.standard_normal((2, b, t, h, F), dtype=np.float32)
    v = rng.standard_normal((b, t, h, d), dtype=np.float32)
    if c["dtype"] == "bfloat16":
        q, k, v = _bf16_round(q), _bf16_round(k), _bf16_round(v)
    ea, eb = common.expansion_matrices(F, float(F))
    seg = doc = None
    if c["segments"]:  # random lengths 1…max_len: documents shorter than a chunk and across chunk boundaries
        seg = random_segment_ids(c["seed"], b, t, max_len=c["segments"], hole_p=0.0)
        doc, real = python_document_ids(seg)
        w = real.astype(np.float32)
    elif c["weights"] == "padded":  # leading and trailing padding, a different amount per row
        pos = np.arange(t)[None]
        w = ((pos >= np.array([[0], [5]])) & (pos < t - np.array([[3], [0]]))).astype(np.float32)
    else:
        w = np.ones((b, t), np.float32)
    # The initial state: one that 20 real keys could have produced (so every denominator stays positive), in the
    # compact layout of `jrt_jax.ops`, φ(k) = [1, k/d^¼, compact k⊗k] (the expansion matrices' columns).
    p = common.compact_features(F)
    kv0, z0 = np.zeros((b, h, p, d), np.float32), np.zeros((b, h, p), np.float32)
    if c["state"]:
        k0 = rng.standard_normal((b, 20, h, F), dtype=np.float32)
        v0 = rng.standard_normal((b, 20, h, d), dtype=np.float32)
        phi = np.concatenate([np.ones(k0.shape[:-1] + (1,), np.float32), k0 / F**0.25,
                              ((k0 @ ea) * (k0 @ eb))[..., :common.quad_features(F)]], axis=-1)
        kv0, z0 = np.einsum("bthp,bthd->bhpd", phi, v0), phi.sum(1)
    tp = -(-t // chunk) * chunk
    heads_major = lambda x: np.pad(x, [(0, 0), (0, tp - t), (0, 0), (0, 0)]).transpose(0, 2, 1, 3).reshape(
        b * h, tp, x.shape[-1])
    kseg = None
    if doc is not None:
        kseg = [np.asarray(x) for x in common.kernel_segments(common.document_flags(jnp.asarray(doc), chunk), chunk)]
    kernel = dict(q=heads_major(q), k=heads_major(k), v=heads_major(v),
                  w=None if c["weights"] is None else np.pad(w, [(0, 0), (0, tp - t)])[..., None], ea=ea, eb=eb,
                  state=[np.asarray(x) for x in common.split_state(jnp.asarray(kv0), jnp.asarray(z0), F)], seg=kseg)
    raw = dict(q=q, k=k, v=v, w=w, seg=seg, kv0=kv0, z0=z0)
    return raw, kernel


def _options(name):
    c = _case(name)
    return dict(heads=c["h"], chunk=c["chunk"], eps=1e-12, scale_dim=float(F), emit_output=c["emit_output"],
                save_states=c["save_states"], normalize=c["normalize"])


def _flat(y, final, saved, to_numpy):
    """The outputs of one kernel call as {name: float32 numpy array}."""
    out = {}
    if isinstance(y, tuple):
        out["num"], out["den"] = (to_numpy(x) for x in y)
    elif y is not None:
        out["y"] = to_numpy(y)
    out.update({f"final.{n}": to_numpy(x) for n, x in zip(common.KernelState._fields, final)})
    if saved is not None:
        out.update({f"saved.{n}": to_numpy(x) for n, x in zip(common.KernelState._fields, saved)})
    return out


# ------------------------------------------------------------------------------ the interpreted subprocess


def _torch_dtype(name):
    return getattr(torch, _case(name)["dtype"])


def _triton_run(name):
    """The case on `prefill_triton_torch` (in the interpreted subprocess): flat outputs and y's dtype."""
    c = _case(name)
    _, kin = _inputs(name)
    as_t = lambda x: None if x is None else torch.from_numpy(np.array(x))
    q, k, v = (as_t(kin[n]).to(_torch_dtype(name)) for n in ("q", "k", "v"))
    w = as_t(kin["w"])
    state = common.KernelState(*map(as_t, kin["state"]))
    seg = None if kin["seg"] is None else [as_t(x) for x in kin["seg"]]
    run = functools.partial(triton_kernel.prefill_triton_torch, ea=as_t(kin["ea"]), eb=as_t(kin["eb"]),
                            **_options(name))
    if c["split"] is None:
        y, final, saved = run(q, k, v, w, state=state, seg=seg)
    else:  # the first `split` tokens, then the rest from the carried state
        s = c["split"]
        y1, mid, _ = run(q[:, :s], k[:, :s], v[:, :s], w[:, :s], state=state)
        y2, final, saved = run(q[:, s:], k[:, s:], v[:, s:], w[:, s:], state=mid)
        y = torch.cat([y1, y2], dim=1)
    dtype = None if y is None or isinstance(y, tuple) else str(y.dtype).removeprefix("torch.")
    return _flat(y, final, saved, lambda x: x.float().numpy()), dtype


def _run_interpreted(path):
    """Every case through Triton's interpreter; writes {case/output: array} and {case/y_dtype: name} to path."""
    out = {}
    for name in CASES:
        arrays, dtype = _triton_run(name)
        out.update({f"{name}/{key}": x for key, x in arrays.items()})
        out[f"{name}/y_dtype"] = np.array(dtype or "")
    np.savez(path, **out)


class _Interpreted:
    """{case: ({output: array}, y dtype name)} from one subprocess with TRITON_INTERPRET=1, started at once and
    waited for at the first lookup (so it runs while the tests compute the Pallas side)."""

    def __init__(self, path):
        env = dict(os.environ, TRITON_INTERPRET="1", JAX_PLATFORMS="cpu")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
        self._path = path
        self._proc = subprocess.Popen([sys.executable, "-m", "tests.kernels.test_triton_kernel", str(path)], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._results = None

    def __getitem__(self, name):
        if self._results is None:
            log, _ = self._proc.communicate(timeout=600)
            if self._proc.returncode:
                pytest.fail(f"the interpreted Triton run failed:\n{log[-4000:]}")
            data = np.load(self._path)
            self._results = {
                case: ({key.split("/", 1)[1]: data[key] for key in data.files
                        if key.startswith(case + "/") and not key.endswith("/y_dtype")}, str(data[f"{case}/y_dtype"]))
                for case in CASES
            }
        return self._results[name]

    def close(self):
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    runs = _Interpreted(tmp_path_factory.mktemp("triton") / "out.npz")
    yield runs
    runs.close()


# ----------------------------------------------------------------------------------- against the Pallas kernel


def _pallas_run(name, dtype=None):
    """The case in one call of `gpu.prefill_gpu` in the Pallas interpreter (inputs cast to `dtype`)."""
    _, kin = _inputs(name)
    dtype = dtype or jnp.dtype(_case(name)["dtype"])
    q, k, v = (jnp.asarray(kin[n], dtype) for n in ("q", "k", "v"))
    w = kin["w"]
    if w is None:  # the Pallas kernel always takes weights
        w = np.ones((_case(name)["b"], kin["q"].shape[1], 1), np.float32)
    seg = None if kin["seg"] is None else [jnp.asarray(x) for x in kin["seg"]]
    out = gpu.prefill_gpu(q, k, v, jnp.asarray(w), jnp.asarray(kin["ea"]), jnp.asarray(kin["eb"]),
                          common.KernelState(*map(jnp.asarray, kin["state"])), seg, interpret=True, **_options(name))
    return _flat(*out, lambda x: np.asarray(x, np.float32))


@pytest.mark.parametrize("name", list(CASES))
def test_triton_kernel_matches_the_pallas_kernel(interpreted, name):
    """Every output (y or num/den, final state, saved chunk states) of the interpreted Triton kernel against the
    Pallas kernel's: fp32 within 1e-5; bf16 inputs against the fp32 run on the same (bf16-rounded) inputs
    within 2e-2, the output's own rounding."""
    want = _pallas_run(name, jnp.float32)
    got, y_dtype = interpreted[name]
    assert sorted(got) == sorted(want)
    bf16 = _case(name)["dtype"] == "bfloat16"
    for key in want:
        assert got[key].shape == want[key].shape, key
        assert_rel(got[key], want[key], 2e-2 if bf16 and key == "y" else 1e-5, key)
    if "y" in want:
        assert y_dtype == _case(name)["dtype"]


def test_bf16_matches_the_pallas_kernel_in_bf16(interpreted):
    """Both kernels with bf16 inputs: the same outputs up to one bf16 step of y (Triton's interpreter truncates
    fp32 → bf16 where compiled Triton and XLA round to nearest even: 4.2e-3 measured)."""
    want = _pallas_run("bf16")
    got, _ = interpreted["bf16"]
    for key in want:
        assert_rel(got[key], want[key], 1e-2 if key == "y" else 1e-5, key)


@pytest.mark.parametrize("name", ["documents", "short_documents_unnormalised", "padding_state_saved"])
def test_triton_kernel_matches_the_reference(interpreted, name):
    """The interpreted kernel against `jrt_jax.ops` (quadratic reference) at every real token, and its final
    state in the public compact layout."""
    c = _case(name)
    raw, _ = _inputs(name)
    got, _ = interpreted[name]
    b, t, h = c["b"], c["t"], c["h"]
    seq_major = lambda x: x.reshape(b, h, -1, x.shape[-1]).transpose(0, 2, 1, 3)[:, :t]
    if c["normalize"]:
        y = seq_major(got["y"])
    else:
        y = seq_major(got["num"]) / (seq_major(got["den"]) + 1e-12)
    kw = {"segment_ids": jnp.asarray(raw["seg"])} if raw["seg"] is not None else {"mask": jnp.asarray(raw["w"] > 0)}
    want, st = ops.linear_attention(*(jnp.asarray(raw[n]) for n in ("q", "k", "v")),
                                    initial_state=ops.LinearAttentionState(jnp.asarray(raw["kv0"]),
                                                                           jnp.asarray(raw["z0"])),
                                    implementation="reference", return_state=True, **kw)
    real = raw["w"] > 0
    assert_rel(y[real], np.asarray(want)[real], 1e-5, "y")
    kv, z = common.merge_state(common.KernelState(*(jnp.asarray(got[f"final.{n}"])
                                                    for n in common.KernelState._fields)), b, h, F)
    assert_rel(kv, st.kv, 1e-5, "kv")
    assert_rel(z, st.z, 1e-5, "z")


# ------------------------------------------------------------------------------------ wiring and bad input


def test_triton_backend_errors():
    q, k, v = random_qkv(9, 1, 32, 1, F, 16)
    with pytest.raises(ValueError, match="interpret=True cannot run backend='triton'; Triton's interpreter runs on "
                                         "torch tensors"):
        pallas_kernels.linear_attention_prefill(q, k, v, backend="triton", interpret=True)
    with pytest.raises(ValueError, match="the GPU kernel needs a power-of-two feature size >= 16; got F = 8"):
        pallas_kernels.linear_attention_prefill(q[..., :8], k[..., :8], v, backend="triton")
    assert "multiple of 16; got D = 8" in api.unsupported_reason(q.shape, (1, 32, 1, 8), q.dtype, backend="triton")
    assert "chunk_size >= 16; got 24" in api.unsupported_reason(q.shape, v.shape, q.dtype, backend="triton",
                                                                 chunk_size=24)
    assert api.unsupported_reason(q.shape, v.shape, q.dtype, backend="triton") is None
    _, kin = _inputs("plain")
    args = [jnp.asarray(kin[n]) for n in ("q", "k", "v", "w", "ea", "eb")]
    with pytest.raises(ValueError, match="Triton's interpreter runs on torch tensors"):
        triton_kernel.prefill_triton(*args, common.KernelState(*map(jnp.asarray, kin["state"])), interpret=True,
                                     **_options("plain"))


@pytest.mark.skipif(triton_kernel._interpreted(), reason="this process runs Triton's interpreter")
def test_cpu_tensors_need_the_interpreter():
    _, kin = _inputs("plain")
    t = lambda x: torch.from_numpy(np.array(x))
    with pytest.raises(ValueError, match="the tensors are on the CPU, which needs Triton's interpreter"):
        triton_kernel.prefill_triton_torch(*(t(kin[n]) for n in ("q", "k", "v", "w", "ea", "eb")),
                                           common.KernelState(*map(t, kin["state"])), **_options("plain"))


@pytest.mark.gpu
@pytest.mark.skipif(not (ON_GPU and api.jax_triton_available()), reason="needs an NVIDIA GPU and jax-triton")
def test_triton_kernel_on_device():
    """backend="triton" through jax on the GPU: PLA against the reference (fp32 1e-5, bf16 2e-2), and packed
    documents with the unnormalised output against the Pallas-Triton kernel."""
    q, k, v, ke, ve = random_qkv(6, 4, 1000, 4, F, 64, 300)
    prefill = functools.partial(pallas_kernels.linear_attention_prefill, backend="triton")
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
        a = [x.astype(dtype) for x in (q, k, v, ke, ve)]
        _, enc, _ = prefill(a[3], a[3], a[4], emit_output=False)
        y, _, _ = prefill(a[0], a[1], a[2], initial_state=enc)
        ref = ops.prefix_linear_attention(*(x.astype(jnp.float32) for x in a), implementation="reference")
        assert_rel(y, ref, tol)
    seg = jnp.asarray(random_segment_ids(7, 4, 1000, max_len=150, hole_p=0.0))
    doc, real = ops.segments.document_ids(seg)
    kw = dict(w=real.astype(jnp.float32), doc=doc, normalize=False, save_states=True)
    (num, den), (kv, z), (kvs, zs) = prefill(q, k, v, **kw)
    (num_g, den_g), (kv_g, z_g), (kvs_g, zs_g) = pallas_kernels.linear_attention_prefill(q, k, v, backend="gpu", **kw)
    for got, want in ((num, num_g), (den, den_g), (kv, kv_g), (z, z_g), (kvs, kvs_g), (zs, zs_g)):
        assert_rel(got, want, 1e-5)


if __name__ == "__main__":
    _run_interpreted(sys.argv[1])
