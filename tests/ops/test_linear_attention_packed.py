"""Linear attention and PLA with packed documents, per-row encoder masks and a carried initial state, what only
these ops have: per-row encoder lengths from `enc_mask`, the state-only functions on packed rows, the kernels
called directly (documents, unnormalised output, lowering for TPU and CUDA), their own argument errors. The
contract every implementation keeps on packed rows (outputs, states and gradients against the reference, each
document alone, two calls, NaN in excluded tokens) is tests/ops/test_op_contract.py's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from jrt_jax import ops
from tests.helpers import assert_rel, export_for, random_qkv
from tests.segment_helpers import documents, random_segment_ids

IMPLS = ["xla", "pallas"]  # "pallas" runs the kernels in the Pallas interpreter on CPU
F = 16


def _packed_ids(seed, b, t, *, max_len=30, holes=False):
    """[b, t] int32 segment ids (`segment_helpers.random_segment_ids`): random document lengths, leading,
    trailing and in-between padding, ids from 1…3 that recur (a recurring id is a new document)."""
    return jnp.asarray(random_segment_ids(seed, b, t, max_len=max_len, hole_p=0.1 if holes else 0.0))


def _documents(seg, row):
    """The real positions of each document of one row, in order."""
    return [start + np.nonzero(real)[0] for r, start, _, real in documents(seg) if r == row]


def _state(seed, b, h, d, n=20):
    """A state that keys could have produced (so every denominator is a sum of positive kernel values)."""
    _, k, v = random_qkv(seed, b, n, h, F, d)
    return ops.linear_attention_state(k, v, implementation="reference")


def _enc_mask(seed, seg, m, frac):
    """Each document's first ~frac of tokens are encoder slots (within the first m positions)."""
    seg = np.asarray(seg)
    out = np.zeros((seg.shape[0], m), bool)
    for r in range(seg.shape[0]):
        for pos in _documents(seg, r):
            n = max(1, int(round(frac * len(pos)))) if frac > 0 else 0
            for j in pos[:n]:
                if j < m:
                    out[r, j] = True
    return jnp.asarray(out)


def test_enc_mask_alone_gives_per_row_encoder_lengths():
    b, t, h, d, m = 3, 40, 2, 8, 24
    q, k, v, ke, ve = random_qkv(3, b, t, h, F, d, m)
    lengths = [0, 7, 24]
    enc = jnp.arange(m)[None] < jnp.asarray(lengths)[:, None]
    y = ops.prefix_linear_attention(q, k, v, ke, ve, enc_mask=enc, implementation="reference")
    for r, n in enumerate(lengths):
        row = lambda x: x[r : r + 1]
        if n == 0:  # an empty encoder: plain causal attention
            want = ops.linear_attention(row(q), row(k), row(v), implementation="reference")
        else:
            want = ops.prefix_linear_attention(row(q), row(k), row(v), row(ke)[:, :n], row(ve)[:, :n],
                                               implementation="reference")
        assert_rel(y[r : r + 1], want, 1e-6)


# ------------------------------------------------------------------------------- implementations vs reference


CASES = {  # name: (b, t, h, d, m, seg kwargs, enc fraction or None, with initial state)
    "short-docs": (2, 70, 2, 8, 70, dict(max_len=6), 0.5, False),
    "straddling": (2, 90, 3, 16, 90, dict(max_len=60), 0.3, True),
    "holes": (1, 64, 2, 8, 40, dict(max_len=30, holes=True), 0.6, True),
    "one-doc": (2, 50, 2, 8, 20, dict(max_len=200), None, True),
    "empty-encoder": (2, 48, 2, 8, 48, dict(max_len=20), 0.0, False),
}


def _case(name):
    b, t, h, d, m, seg_kw, enc_frac, with_state = CASES[name]
    q, k, v, ke, ve = random_qkv(hash(name) % 1000, b, t, h, F, d, m)
    seg = _packed_ids(len(name), b, t, **seg_kw)
    kw = dict(segment_ids=seg)
    if enc_frac is not None:
        kw["enc_mask"] = _enc_mask(0, seg, m, enc_frac)
    if with_state:
        kw["initial_state"] = _state(7, b, h, d)
    return (q, k, v, ke, ve), kw


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", [n if n == "straddling" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in CASES])
def test_packed_state_functions_match_reference(impl, name):
    """`pla_prefill_state` / `linear_attention_state` (no outputs computed) give the state `return_state` gives
    with the reference: the last document's, encoder slots and initial state included where they belong."""
    (q, k, v, ke, ve), kw = _case(name)
    _, want = ops.prefix_linear_attention(q, k, v, ke, ve, implementation="reference", return_state=True, **kw)
    st = ops.pla_prefill_state(k, v, ke, ve, implementation=impl, chunk_size=16, **kw)
    assert_rel(st.kv, want.kv, 1e-5, "pla_prefill_state kv")
    assert_rel(st.z, want.z, 1e-5, "pla_prefill_state z")
    causal_kw = {key: val for key, val in kw.items() if key != "enc_mask"}
    _, want = ops.linear_attention(q, k, v, implementation="reference", return_state=True, **causal_kw)
    st = ops.linear_attention_state(k, v, implementation=impl, chunk_size=32, **causal_kw)
    assert_rel(st.kv, want.kv, 1e-5, "linear_attention_state kv")
    assert_rel(st.z, want.z, 1e-5, "linear_attention_state z")


# ------------------------------------------------------------------------------------------ kernels directly


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_kernels_with_documents_and_unnormalised_output(backend):
    b, t, h, d = 2, 50, 2, 16
    q, k, v = random_qkv(16, b, t, h, F, d)
    seg = _packed_ids(17, b, t, max_len=20)
    doc, real = ops.segments.document_ids(seg)
    st = _state(18, b, h, d)
    run = functools.partial(pallas_kernels.linear_attention_prefill, q, k, v, w=real.astype(jnp.float32), doc=doc,
                            initial_state=st, chunk_size=16, backend=backend, interpret=True)
    y, (kv, z), _ = run()
    (num, den), (kv2, _), _ = run(normalize=False)
    yr, sr = ops.linear_attention(q, k, v, segment_ids=seg, initial_state=st, implementation="reference",
                                  return_state=True)
    keep = np.asarray(real)
    assert_rel(np.asarray(y)[keep], np.asarray(yr)[keep], 1e-5, "y")
    assert_rel(np.asarray(num / (den[..., None] + 1e-12))[keep], np.asarray(yr)[keep], 1e-5, "num/den")
    assert num.dtype == den.dtype == jnp.float32 and den.shape == (b, t, h)
    assert_rel(kv, sr.kv, 1e-5, "kv")
    assert_rel(kv2, sr.kv, 1e-5, "kv (unnormalised run)")
    assert_rel(z, sr.z, 1e-5, "z")


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("normalize", [True, False])
def test_kernels_with_documents_lower_for_hardware(platform, normalize):
    backend = "tpu" if platform == "tpu" else "gpu"

    def f(q, k, v, doc):
        return pallas_kernels.linear_attention_prefill(q, k, v, doc=doc, backend=backend, interpret=False,
                                                       chunk_size=64, normalize=normalize, save_states=True)

    args = [jax.ShapeDtypeStruct((2, 1000, 4, 16), jnp.bfloat16)] * 2
    args += [jax.ShapeDtypeStruct((2, 1000, 4, 64), jnp.bfloat16), jax.ShapeDtypeStruct((2, 1000), jnp.int32)]
    text = export_for(jax.jit(f), [platform], *args).mlir_module()
    assert ("tpu_custom_call" if platform == "tpu" else "xla.gpu.triton") in text


# --------------------------------------------------------------------------------------------- bad input


def test_bad_packing_arguments():
    q, k, v, ke, ve = random_qkv(19, 2, 10, 2, F, 8, 4)
    with pytest.raises(ValueError, match="enc_mask needs an encoder"):
        ops.pla_prefill_state(k, v, None, None, enc_mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"enc_mask must have shape \[batch, seq\] = \(2, 4\)"):
        ops.prefix_linear_attention(q, k, v, ke, ve, enc_mask=jnp.ones((2, 10), bool))
    with pytest.raises(TypeError, match="initial_state must be a LinearAttentionState"):
        ops.linear_attention(q, k, v, initial_state=jnp.zeros((2, 2, 153, 8)))
