"""Linear attention and PLA with packed documents, per-row encoder masks and a carried initial state.

Every implementation against the reference (outputs, states, gradients), the reference against the meaning
(each document run alone), two calls against one, and NaN/Inf in excluded tokens kept where they are.
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
SLOW_REFERENCE = pytest.param("reference", marks=pytest.mark.slow)
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


# ------------------------------------------------------------------------------------ meaning of the packing


def _alone(q, k, v, ke=None, ve=None):
    """The DESIGN §3 formula for one unpacked sequence, float64 numpy: q, k [T,H,F], v [T,H,D], encoder [M,H,·]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    kern = lambda a, b: 1 + (s := np.einsum("ihf,jhf->hij", a, b) / F**0.5) + s * s / 2
    a = kern(q, k) * np.tril(np.ones((q.shape[0], q.shape[0])))
    num, den = np.einsum("hij,jhd->ihd", a, v), a.sum(-1).T
    if ke is not None:
        e = kern(q, np.asarray(ke, np.float64))
        num, den = num + np.einsum("hij,jhd->ihd", e, np.asarray(ve, np.float64)), den + e.sum(-1).T
    return num / (den[..., None] + 1e-12)


@pytest.mark.parametrize("impl", [SLOW_REFERENCE] + IMPLS)
def test_packed_row_equals_each_document_alone(impl):
    b, t, h, d = 2, 75, 2, 8
    q, k, v, ke, ve = random_qkv(0, b, t, h, F, d, t)
    seg = _packed_ids(1, b, t, max_len=25, holes=True)
    enc = _enc_mask(2, seg, t, 0.4)
    y = ops.prefix_linear_attention(q, k, v, ke, ve, segment_ids=seg, enc_mask=enc, implementation=impl,
                                    chunk_size=16)
    yc = ops.linear_attention(q, k, v, segment_ids=seg, implementation=impl, chunk_size=16)
    checked = 0
    for r in range(b):
        for pos in _documents(seg, r):
            slots = [j for j in pos if bool(enc[r, j])]
            assert_rel(yc[r, np.asarray(pos)], _alone(q[r, pos], k[r, pos], v[r, pos]), 1e-5, "causal document")
            want = _alone(q[r, pos], k[r, pos], v[r, pos], ke[r, slots], ve[r, slots])
            assert_rel(y[r, np.asarray(pos)], want, 1e-5, "PLA document")
            checked += 1
    assert checked >= 6
    pads = np.asarray(seg) == 0
    assert float(jnp.max(jnp.abs(y[pads]))) == 0.0 and float(jnp.max(jnp.abs(yc[pads]))) == 0.0


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


def test_initial_state_is_what_preceded_the_row():
    b, t, h, d = 1, 30, 2, 8
    q, k, v = random_qkv(4, b, 2 * t, h, F, d)
    st = ops.linear_attention_state(k[:, :t], v[:, :t], implementation="reference")
    full = ops.linear_attention(q, k, v, implementation="reference")
    got = ops.linear_attention(q[:, t:], k[:, t:], v[:, t:], initial_state=st, implementation="reference")
    assert_rel(got, full[:, t:], 1e-5)


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
def test_packed_outputs_and_states_match_reference(impl, name):
    (q, k, v, ke, ve), kw = _case(name)
    yr, sr = ops.prefix_linear_attention(q, k, v, ke, ve, implementation="reference", return_state=True, **kw)
    y, s = ops.prefix_linear_attention(q, k, v, ke, ve, implementation=impl, chunk_size=16, return_state=True,
                                       **kw)
    assert_rel(y, yr, 1e-5, "y")
    assert_rel(s.kv, sr.kv, 1e-5, "kv")
    assert_rel(s.z, sr.z, 1e-5, "z")
    st = ops.pla_prefill_state(k, v, ke, ve, implementation=impl, chunk_size=16, **kw)
    assert_rel(st.kv, sr.kv, 1e-5, "pla_prefill_state kv")
    causal_kw = {key: val for key, val in kw.items() if key != "enc_mask"}
    yr, sr = ops.linear_attention(q, k, v, implementation="reference", return_state=True, **causal_kw)
    y, s = ops.linear_attention(q, k, v, implementation=impl, chunk_size=32, return_state=True, **causal_kw)
    assert_rel(y, yr, 1e-5, "causal y")
    assert_rel(s.kv, sr.kv, 1e-5, "causal kv")
    st = ops.linear_attention_state(k, v, implementation=impl, chunk_size=32, **causal_kw)
    assert_rel(st.kv, sr.kv, 1e-5, "linear_attention_state kv")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["straddling", pytest.param("holes", marks=pytest.mark.slow)])
def test_packed_gradients_match_reference(impl, name):
    (q, k, v, ke, ve), kw = _case(name)
    st = kw.pop("initial_state")
    cot = jax.random.normal(jax.random.PRNGKey(11), q.shape[:3] + (v.shape[-1],))

    def loss(impl_, q, k, v, ke, ve, kv0, z0):
        y, s = ops.prefix_linear_attention(q, k, v, ke, ve, implementation=impl_, chunk_size=16, return_state=True,
                                           initial_state=ops.LinearAttentionState(kv0, z0), **kw)
        return jnp.sum(y * cot) + 1e-3 * jnp.sum(s.kv) + 1e-2 * jnp.sum(s.z)

    args = (q, k, v, ke, ve, st.kv, st.z)
    argnums = tuple(range(7))
    gr = jax.grad(functools.partial(loss, "reference"), argnums=argnums)(*args)
    gx = jax.grad(functools.partial(loss, impl), argnums=argnums)(*args)
    for name_, a, b_ in zip(["q", "k", "v", "k_enc", "v_enc", "kv0", "z0"], gx, gr):
        assert_rel(a, b_, 1e-5, f"d{name_}")


@pytest.mark.parametrize("impl", ["reference"] + IMPLS)
def test_packed_bf16(impl):
    (q, k, v, ke, ve), kw = _case("straddling")
    args16 = [a.astype(jnp.bfloat16) for a in (q, k, v, ke, ve)]
    y = ops.prefix_linear_attention(*args16, implementation=impl, chunk_size=16, **kw)
    assert y.dtype == jnp.bfloat16
    want = ops.prefix_linear_attention(*(a.astype(jnp.float32) for a in args16), implementation="reference", **kw)
    assert_rel(y, want, 2e-2)


# ------------------------------------------------------------------------------------- two calls equal one


# The fast tier splits at 23 through XLA; the other splits and implementations are in the slow tier.
@pytest.mark.parametrize("impl", [SLOW_REFERENCE] + [i if i == "xla" else pytest.param(i, marks=pytest.mark.slow)
                                  for i in IMPLS])
@pytest.mark.parametrize("split", [pytest.param(1, marks=pytest.mark.slow), 23, pytest.param(32, marks=pytest.mark.slow)])
def test_two_calls_equal_one(impl, split):
    b, t, h, d, m = 2, 60, 2, 8, 20
    q, k, v, ke, ve = random_qkv(12, b, t, h, F, d, m)
    seg = _packed_ids(13, b, t, max_len=25)
    enc = _enc_mask(0, seg, m, 0.5)
    run = functools.partial(ops.linear_attention, implementation=impl, chunk_size=16, return_state=True)
    y_one, s_one = run(q, k, v, segment_ids=seg)
    y1, s1 = run(q[:, :split], k[:, :split], v[:, :split], segment_ids=seg[:, :split])
    y2, s2 = run(q[:, split:], k[:, split:], v[:, split:], segment_ids=seg[:, split:], initial_state=s1)
    # The second call's first document continues the first call's last one only when it really is the
    # same document; the ids say so here exactly where the split falls inside a document.
    continues = [int(seg[r, split]) != 0 and int(seg[r, split]) == int(seg[r, split - 1]) for r in range(b)]
    for r in range(b):
        if continues[r]:
            assert_rel(jnp.concatenate([y1, y2], 1)[r], y_one[r], 1e-5, f"row {r}")
    assert any(continues) or split == 1
    # Without packing the split may fall anywhere: PLA over the prefix, then plain causal steps.
    y_pla, s_pla = ops.prefix_linear_attention(q, k, v, ke, ve, implementation=impl, chunk_size=16,
                                               return_state=True, enc_mask=enc)
    if split >= m:
        a, sa = ops.prefix_linear_attention(q[:, :split], k[:, :split], v[:, :split], ke, ve, enc_mask=enc,
                                            implementation=impl, chunk_size=16, return_state=True)
        c, sc = run(q[:, split:], k[:, split:], v[:, split:], initial_state=sa)
        assert_rel(jnp.concatenate([a, c], 1), y_pla, 1e-5, "PLA two calls")
        assert_rel(sc.kv, s_pla.kv, 1e-5, "PLA state")
    y_c, s_c = run(q, k, v)
    a, sa = run(q[:, :split], k[:, :split], v[:, :split])
    c, sc = run(q[:, split:], k[:, split:], v[:, split:], initial_state=sa)
    assert_rel(jnp.concatenate([a, c], 1), y_c, 1e-5, "causal two calls")
    assert_rel(sc.kv, s_c.kv, 1e-5, "causal state")


# ---------------------------------------------------------------------------------------------- NaN safety


@pytest.mark.parametrize("impl,how", [pytest.param("reference", "segment_ids", marks=pytest.mark.slow)]
                         + [(i, h) for i in IMPLS for h in ("mask", "segment_ids", "enc_mask")])
def test_nan_in_an_excluded_token_stays_there(impl, how):
    b, t, h, d, m = 2, 40, 2, 8, 40
    q, k, v, ke, ve = random_qkv(14, b, t, h, F, d, m)
    seg = _packed_ids(15, b, t, max_len=15)
    kw = {"mask": seg != 0} if how == "mask" else {"segment_ids": seg}
    enc = _enc_mask(0, seg, m, 0.5)
    kw["enc_mask"] = enc
    excluded = ~np.asarray(enc) if how == "enc_mask" else np.asarray(seg) == 0
    poison = lambda x: jnp.where(jnp.asarray(excluded)[:, :, None, None], jnp.nan, x)
    if how == "enc_mask":
        args = (q, k, v, poison(ke), poison(ve))
    else:
        args = (poison(q), poison(k), poison(v), poison(ke), poison(ve))

    def loss(*a):
        y, s = ops.prefix_linear_attention(*a, implementation=impl, chunk_size=16, return_state=True, **kw)
        return jnp.sum(y) + jnp.sum(s.kv), y

    (l_clean, y_clean), g_clean = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True)(q, k, v, ke, ve)
    (l_bad, y_bad), g_bad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True)(*args)
    assert bool(jnp.isfinite(l_bad))
    assert_rel(y_bad, y_clean, 1e-6, "outputs")
    for name, a, b_ in zip(["q", "k", "v", "k_enc", "v_enc"], g_bad, g_clean):
        assert bool(jnp.all(jnp.isfinite(a))), f"d{name} not finite"
        assert_rel(a, b_, 1e-6, f"d{name}")


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
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[batch, seq\]"):
        ops.linear_attention(q, k, v, segment_ids=jnp.ones((2, 9), jnp.int32))
    with pytest.raises(TypeError, match="segment_ids must have an integer dtype"):
        ops.linear_attention(q, k, v, segment_ids=jnp.ones((2, 10), jnp.float32))
    with pytest.raises(ValueError, match="enc_mask needs an encoder"):
        ops.pla_prefill_state(k, v, None, None, enc_mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"enc_mask must have shape \[batch, seq\] = \(2, 4\)"):
        ops.prefix_linear_attention(q, k, v, ke, ve, enc_mask=jnp.ones((2, 10), bool))
    with pytest.raises(TypeError, match="initial_state must be a LinearAttentionState"):
        ops.linear_attention(q, k, v, initial_state=jnp.zeros((2, 2, 153, 8)))
    with pytest.raises(ValueError, match="initial_state: kv must have shape"):
        ops.linear_attention(q, k, v, initial_state=_state(0, 1, 2, 8))
