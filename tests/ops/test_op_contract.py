"""The op contract: one suite run for every sequence op of `jrt_jax.ops` over every implementation it offers.

Each op is described once by an `Op` adapter (how to draw its inputs, call it with `implementation=`,
`segment_ids=` / `mask=` and its continuation argument, and run one call as two); the tests below state each
promise once for all of them:

* fp32 parity with the op's "reference" (tight), with and without packing, and for a one-token sequence;
* gradient parity with the reference, packed (continuation inputs included) and plain;
* bf16 parity (bounded; outputs in the input dtype);
* pad invariance: a ragged, padded batch equals the unpadded rows on their real tokens, pads are 0, and a NaN
  in a pad reaches neither an output nor a gradient;
* a packed row equals each of its documents run alone;
* NaN in any excluded token (padding, a masked token, an unmarked encoder slot) reaches nothing;
* two calls, the second continuing from the first (carried state or tail; key span and query offset), equal
  one call, outputs, final state and gradients;
* an implementation resolved before computing ("auto" of the softmax ops and the conv) is exactly its path;
* the errors every op shares, naming the argument.

Everything but the bf16, one-token and error checks runs under jax.jit with segment ids, mask, carry and
query offset traced (`_run`): the ops work under jit, and tests that share a configuration share a compilation.

The reference itself is held to the formula by the per-op tests against numpy loops; its rows here check what
the formula tests do not reach (mask ∧ segment_ids, pads, documents, continuation). Shapes are small
(T = 40, chunks and blocks of 8-16) so every multi-chunk and multi-block path runs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax import ops
from jrt_jax.ops import Implementation
from jrt_jax.ops.attention import api as attention_api
from jrt_jax.ops.causal_conv import api as conv_api
from jrt_jax.ops.linear_attention import api as linear_api
from jrt_jax.ops.sliding_window import api as window_api
from tests.helpers import assert_rel
from tests.segment_helpers import documents

B, T, SPLIT = 4, 40, 23
TOL, TOL_BF16 = 1e-5, 2e-2


def _row(*runs):
    """A row of segment ids from (id, length) runs."""
    return sum(([i] * n for i, n in runs), [])


# Documents shorter and longer than every chunk and block, holes, an id that comes back (a new document),
# leading / trailing / in-between padding and an all-padding row. SPLIT falls inside a document in every row
# (right after a hole in row 0), so a continuation carries that document.
SEG = np.asarray([
    _row((0, 2), (1, 8), (2, 12), (0, 1), (2, 2), (0, 1), (2, 5), (3, 7), (0, 2)),
    _row((0, 5), (1, 35)),
    _row((1, 12), (2, 20), (1, 3), (3, 2), (0, 1), (3, 2)),
    _row((0, T)),
], np.int32)
MASK = np.ones((B, T), bool)
MASK[0, 15] = MASK[1, 5] = MASK[1, 30] = MASK[2, 33] = False  # holes the ids do not have
FOLDED = np.where(MASK, SEG, 0)  # the same documents and pads, ids alone
PADS = (0, 3, 7, 5)  # the ragged batch of the pad-invariance test: leading pads per row, trailing to T
assert SEG.shape == (B, T) and all(SEG[r, SPLIT] == SEG[r, SPLIT - 1] or SEG[r, SPLIT - 1] == 0 for r in range(B))


# ------------------------------------------------------------------------------------------------ adapters


@dataclasses.dataclass(frozen=True, eq=False)
class Op:
    """One op as the suite sees it.

    make(rng, b, t, dtype, impl) -> dict of inputs: arrays whose axis 1 runs over tokens (`timed`; an array
    shorter than T, PLA's encoder, covers the first positions) and others (the conv kernel).
    call(impl, x, segment_ids, mask, carry) -> (y, carry_out): one call over the whole row from `carry`
    (the state of what preceded the row, or None); carry_out is what a continuation takes (None for the
    softmax ops, whose continuation is the key span itself).
    carry(rng, x) -> a carry for these inputs, or None.
    split(impl, x, segment_ids, mask, carry, s, offset) -> (y, carry_out): the same row as two calls, the second
    continuing the first at token s; `offset` is s as the second call's query offset where the op takes a
    traced one (None: the op's default).
    excluded(x) -> {name: bool [B, L]}: tokens of inputs excluded by the inputs themselves (an encoder slot
    enc_mask leaves out), beyond what segment_ids / mask exclude.
    positional: whether a token's position counts (a window, conv taps), so a hole in a document is a slot
      that reads nothing rather than no slot at all.
    aliases: {implementation: the implementation it resolves to for the suite's inputs on this platform} where
    the op resolves it before anything is computed (so it is checked to be that path, which the suite runs).
    """

    name: str
    implementations: tuple[str, ...]
    make: Callable
    timed: tuple[str, ...]
    call: Callable
    carry: Callable
    split: Callable
    first: str
    excluded: Callable = lambda x: {}
    aliases: dict = dataclasses.field(default_factory=dict)
    positional: bool = False
    continues: Callable = lambda impl: True
    bad_carry: tuple = ()


def _draw(rng, shape, dtype):
    return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)


# ---- causal softmax attention (grouped-query heads; the key span and query offset continue a row)

H, KVH, D = 4, 2, 8


def _attention_make(rng, b, t, dtype, impl):
    dv = 6 if impl in ("reference", "xla") else D  # value heads of another size where the path takes them
    return dict(q=_draw(rng, (b, t, H, D), dtype), k=_draw(rng, (b, t, KVH, D), dtype),
                v=_draw(rng, (b, t, KVH, dv), dtype))


def _attention(impl, x, segment_ids=None, mask=None, carry=None, *, q=None, q_offset=None, blocks=(16, 8)):
    del carry
    q = x["q"] if q is None else q
    return ops.causal_attention(q, x["k"], x["v"], segment_ids=segment_ids, mask=mask, q_offset=q_offset,
                                implementation=impl, block_q=blocks[0], block_k=blocks[1]), None


def _attention_split(impl, x, segment_ids, mask, carry, s, offset):
    """Queries [0, s) against the whole key span from offset 0 (a context-parallel shard: later keys present
    and causally hidden), then queries [s, T) at `offset` (None: the default, the last T − s of the span);
    other block lengths than the one call, so block edges fall elsewhere."""
    y1, _ = _attention(impl, x, segment_ids, mask, q=x["q"][:, :s], q_offset=0, blocks=(8, 32))
    y2, _ = _attention(impl, x, segment_ids, mask, q=x["q"][:, s:], q_offset=offset, blocks=(8, 32))
    return jnp.concatenate([y1, y2], 1), None


ATTENTION = Op(
    "attention", attention_api.IMPLEMENTATIONS, _attention_make, ("q", "k", "v"), _attention,
    lambda rng, x: None, _attention_split, "q", aliases={"auto": "dense"},  # T·S ≤ DENSE_MAX_LEN², Dv = Dk
    continues=lambda impl: impl != "cudnn",  # cuDNN takes as many queries as keys only
    bad_carry=(lambda: dict(q_offset=SPLIT + 1), ValueError, r"q_offset must be in \[0, S − T\]"),
)


# ---- sliding-window attention (the previous `window` keys / values are the prefix of the continuing call)

WINDOW = 5


def _window_make(rng, b, t, dtype, impl):
    return {n: _draw(rng, (b, t, 2, D), dtype) for n in "qkv"}


def _window(impl, x, segment_ids=None, mask=None, carry=None, *, q=None, q_offset=None):
    del carry
    q = x["q"] if q is None else q
    return ops.sliding_window_attention(q, x["k"], x["v"], window=WINDOW, segment_ids=segment_ids, mask=mask,
                                        q_offset=q_offset, implementation=impl, block_size=8), None


def _window_split(impl, x, segment_ids, mask, carry, s, offset):
    """Queries [0, s) against the whole span from offset 0, then queries [s, T) against the span that starts
    `window` keys before them (a ring buffer's worth; the default offset puts the queries after it)."""
    del offset  # a Python int here: the banded path is specialised to it
    y1, _ = _window(impl, x, segment_ids, mask, q=x["q"][:, :s], q_offset=0)
    a = s - WINDOW
    span = {"q": x["q"][:, s:], "k": x["k"][:, a:], "v": x["v"][:, a:]}
    y2, _ = _window(impl, span, segment_ids[:, a:], mask[:, a:])
    return jnp.concatenate([y1, y2], 1), None


WINDOW_OP = Op(
    "sliding_window", window_api.IMPLEMENTATIONS, _window_make, ("q", "k", "v"), _window,
    lambda rng, x: None, _window_split, "q", aliases={"auto": "xla"}, positional=True,
    bad_carry=(lambda: dict(q_offset=SPLIT + 1), ValueError, r"q_offset must be in \[0, S − T\]"),
)


# ---- depthwise causal conv (the tail of K − 1 inputs continues a row)

KERNEL, CHANNELS = 4, 8


def _conv_make(rng, b, t, dtype, impl):
    return dict(x=_draw(rng, (b, t, CHANNELS), dtype), kernel=_draw(rng, (KERNEL, CHANNELS), dtype))


def _conv(impl, x, segment_ids=None, mask=None, carry=None):
    return ops.causal_conv1d(x["x"], x["kernel"], segment_ids=segment_ids, mask=mask, initial_tail=carry,
                             return_tail=True, implementation=impl)


def _slice(x, timed, lo, hi=None):
    return {n: (a[:, lo:hi] if n in timed else a) for n, a in x.items()}


def _state_split(op_call, timed):
    def split(impl, x, segment_ids, mask, carry, s, offset):
        del offset
        y1, c1 = op_call(impl, _slice(x, timed, 0, s), segment_ids[:, :s], mask[:, :s], carry)
        y2, c2 = op_call(impl, _slice(x, timed, s), segment_ids[:, s:], mask[:, s:], c1)
        return jnp.concatenate([y1, y2], 1), c2

    return split


CONV = Op(
    "causal_conv", conv_api.IMPLEMENTATIONS, _conv_make, ("x",), _conv,
    lambda rng, x: _draw(rng, (x["x"].shape[0], KERNEL - 1, CHANNELS), x["x"].dtype),
    _state_split(_conv, ("x",)), "x", aliases={"auto": "xla"}, positional=True,
    bad_carry=(lambda: dict(initial_tail=jnp.zeros((B, KERNEL, CHANNELS))), ValueError, r"initial_tail must have shape"),
)


# ---- Based linear attention and PLA (the fp32 state continues a row; PLA's encoder is in the first call)

LA_HEADS, F, DV, M, CHUNK = 2, 8, 8, 12, 16


def _linear_make(rng, b, t, dtype, impl, encoder=False):
    x = dict(q=_draw(rng, (b, t, LA_HEADS, F), dtype), k=_draw(rng, (b, t, LA_HEADS, F), dtype),
             v=_draw(rng, (b, t, LA_HEADS, DV), dtype))
    if encoder:
        m = min(M, t)
        x.update(k_enc=_draw(rng, (b, m, LA_HEADS, F), dtype), v_enc=_draw(rng, (b, m, LA_HEADS, DV), dtype),
                 enc_mask=jnp.asarray(rng.random((b, m)) < 0.7))
    return x


def _linear(impl, x, segment_ids=None, mask=None, carry=None):
    kw = dict(segment_ids=segment_ids, mask=mask, initial_state=carry, implementation=impl, chunk_size=CHUNK,
              return_state=True)
    if "k_enc" in x:
        return ops.prefix_linear_attention(x["q"], x["k"], x["v"], x["k_enc"], x["v_enc"], enc_mask=x["enc_mask"],
                                           **kw)
    return ops.linear_attention(x["q"], x["k"], x["v"], **kw)


def _linear_carry(rng, x):
    """A state that keys could have produced, so every denominator is a sum of positive kernel values."""
    b = x["q"].shape[0]
    return ops.linear_attention_state(_draw(rng, (b, 20, LA_HEADS, F), jnp.float32),
                                      _draw(rng, (b, 20, LA_HEADS, DV), jnp.float32), implementation="reference")


LINEAR_TIMED = ("q", "k", "v", "k_enc", "v_enc", "enc_mask")
_bad_state = (lambda: dict(initial_state=ops.zero_state(B - 1, LA_HEADS, F, DV)), ValueError, "initial_state: kv must have shape")
LINEAR = Op(
    "linear_attention", linear_api.IMPLEMENTATIONS, _linear_make, LINEAR_TIMED, _linear, _linear_carry,
    _state_split(_linear, LINEAR_TIMED), "q", bad_carry=_bad_state,
)
# The encoder (first M ≤ SPLIT tokens) goes to the first call; the second continues with plain causal
# linear attention from the state that has the encoder folded in.
PLA = Op(
    "prefix_linear_attention", linear_api.IMPLEMENTATIONS, functools.partial(_linear_make, encoder=True),
    LINEAR_TIMED, _linear, _linear_carry, _state_split(_linear, LINEAR_TIMED), "q",
    excluded=lambda x: {n: ~np.asarray(x["enc_mask"]) for n in ("k_enc", "v_enc")}, bad_carry=_bad_state,
)

OPS = (ATTENTION, WINDOW_OP, CONV, LINEAR, PLA)


def _case(op, impl, heavy=False):
    """One (op, implementation) row. `heavy`: a row of a test that compiles a configuration of its own, for
    the linear-attention reference (an oracle, quadratic, slow to compile: the slow tier runs it there)."""
    marks = []
    if impl == "cudnn":
        marks.append(pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU"))
    if heavy and impl == "reference" and op in (LINEAR, PLA):
        marks.append(pytest.mark.slow)
    return pytest.param(op, impl, id=f"{op.name}-{impl}", marks=marks)


ALL = [_case(op, impl) for op in OPS for impl in op.implementations if impl not in op.aliases]
# The rows of the tests that compile configurations of their own (padded rows, two calls) take PLA for linear
# attention: its padded and packed rows run the same chunked backends as linear_attention's, after the encoder,
# and a PLA row continuing is linear_attention continuing (its second call, from the carried state).
HEAVY = [_case(op, impl, heavy=True) for op in OPS if op is not LINEAR for impl in op.implementations
         if impl not in op.aliases]
ALIASES = [pytest.param(op, impl, id=f"{op.name}-{impl}") for op in OPS for impl in op.aliases]


# ------------------------------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def _inputs(op, impl, b=B, t=T, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = op.make(rng, b, t, dtype, impl)
    return x, op.carry(rng, x)


def _floats(tree):
    """The floating leaves of a pytree, None elsewhere (what gradients are taken of)."""
    return jax.tree.map(lambda a: a if jnp.issubdtype(a.dtype, jnp.floating) else None, tree)


def _merge(floats, tree):
    return jax.tree.map(lambda f, a: a if f is None else f, floats, tree, is_leaf=lambda a: a is None)


@functools.lru_cache(maxsize=None)
def _run(op, impl, split=False):
    """jax.jit of (y, carry_out, gradients) for one call (or the two calls of `op.split`) over traced inputs,
    segment ids, mask, carry and query offset. The loss is Σ sin(y)·w, plus a small weight on every leaf of
    the carry out when a carry goes in, so gradients reach every input and the carry. One function per (op, impl, split): the tests that
    share a configuration share its compilation."""

    def run(x, carry, segment_ids, mask, w, offset):
        def loss(floats):
            xx, cc = _merge(floats, (x, carry))
            if split:
                y, c = op.split(impl, xx, segment_ids, mask, cc, SPLIT, offset)
            else:
                y, c = op.call(impl, xx, segment_ids, mask, cc)
            value = jnp.sum(jnp.sin(y.astype(jnp.float32)) * w)
            for leaf in jax.tree.leaves(c if carry is not None else None):
                value = value + 1e-3 * jnp.sum(leaf.astype(jnp.float32))
            return value, (y, c)

        (_, (y, c)), g = jax.value_and_grad(loss, has_aux=True)(_floats((x, carry)))
        return y, c, g

    return jax.jit(run)


def _cotangent(shape):
    return jnp.asarray(np.random.default_rng(99).standard_normal(shape, np.float32))


def run(op, impl, x, carry=None, segment_ids=None, mask=None, *, split=False, w=None):
    """(y, carry_out, (d inputs, d carry)) of `_run`; w defaults to a fixed draw of the output's shape."""
    if w is None:
        w = _cotangent(jax.eval_shape(lambda: op.call("reference", x))[0].shape)
    return _run(op, impl, split)(x, carry, segment_ids, mask, w, jnp.int32(SPLIT))


def _assert_trees(got, want, tol, what):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves), what
    for path, g, r in zip(jax.tree_util.tree_flatten_with_path(want)[0], got_leaves, want_leaves):
        if tol == 0:
            np.testing.assert_array_equal(np.asarray(g), np.asarray(r), f"{what} {jax.tree_util.keystr(path[0])}")
        else:
            assert_rel(g, r, tol, f"{what} {jax.tree_util.keystr(path[0])}")


def _upcast(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _padded(op, x, pads, length, fill):
    """Row r of every token-aligned input shifted right by pads[r] inside `length` (or its own length plus
    max(pads) for a shorter input), `fill` (floats) / 0 (bool) around it."""
    out = {}
    for n, a in x.items():
        if n not in op.timed:
            out[n] = a
            continue
        a = np.asarray(a)
        size = length if a.shape[1] == x[op.timed[0]].shape[1] else a.shape[1] + max(pads)
        new = np.full((len(pads), size) + a.shape[2:], fill if np.issubdtype(a.dtype, np.floating) else 0, a.dtype)
        for r, p in enumerate(pads):
            n_in = min(a.shape[1], size - p)
            new[r, p:p + n_in] = a[r, :n_in]
        out[n] = jnp.asarray(new)
    return out


def _poison(op, x, excluded):
    """x with NaN at the tokens `excluded` [B, ≥L] marks and at those the op's own inputs exclude."""
    more = op.excluded(x)
    out = {}
    for n, a in x.items():
        if n in op.timed and jnp.issubdtype(a.dtype, jnp.floating):
            bad = np.asarray(excluded)[:, : a.shape[1]] | more.get(n, False)
            a = jnp.where(jnp.asarray(bad).reshape(bad.shape + (1,) * (a.ndim - 2)), jnp.nan, a)
        out[n] = a
    return out


PAD = max(PADS)
SEG_J, MASK_J, FOLDED_J = (jnp.asarray(a) for a in (SEG, MASK, FOLDED))


# ---------------------------------------------------------------------------------------------- the suite


@pytest.mark.parametrize("op,impl", ALL)
def test_matches_reference(op, impl):
    """fp32 outputs, carried state and gradients (wrt every float input and the carry) equal the reference's:
    packed rows with mask ∧ segment_ids and a carry, against the reference given the folded ids alone (so the
    reference's own row checks that mask and ids combine); plain rows; a one-token sequence (outputs)."""
    x, carry = _inputs(op, impl)
    y, c, g = run(op, impl, x, carry, SEG_J, MASK_J)
    y_ref, c_ref, g_ref = run(op, "reference", x, carry, FOLDED_J, jnp.ones((B, T), bool))
    assert y.dtype == jnp.float32 and y.shape == y_ref.shape
    assert_rel(y, y_ref, TOL, "packed y")
    _assert_trees(c, c_ref, TOL, "packed carry")
    _assert_trees(g, g_ref, TOL, "packed d")
    assert not bool(jnp.any(y[FOLDED_J == 0])), "padding outputs 0"
    if impl == "reference":
        return
    _assert_trees(run(op, impl, x), run(op, "reference", x), TOL, "plain")
    one, _ = _inputs(op, impl, t=1)
    _assert_trees(op.call(impl, one), op.call("reference", one), TOL, "T = 1")


@pytest.mark.parametrize("op,impl", ALL)
def test_bf16_is_bounded_by_the_reference(op, impl):
    """bf16 inputs, called eagerly: outputs in bf16 within a bound of the fp32 reference on the same values,
    the carried state in the carry's own dtype."""
    x, carry = _inputs(op, impl, dtype=jnp.bfloat16)
    y, c = op.call(impl, x, SEG_J, MASK_J, carry)
    assert y.dtype == jnp.bfloat16
    y_ref, c_ref, _ = run(op, "reference", _upcast(x), _upcast(carry), FOLDED_J, jnp.ones((B, T), bool))
    assert_rel(y, y_ref, TOL_BF16, "bf16")
    for got, want, given in zip(jax.tree.leaves(c), jax.tree.leaves(c_ref), jax.tree.leaves(carry)):
        assert got.dtype == given.dtype
        assert_rel(got, want, TOL_BF16, "bf16 carry")


@pytest.mark.parametrize("op,impl", ALIASES)
def test_alias_is_the_path_it_names(op, impl):
    """An implementation the op resolves before computing ("auto" on this platform, at these shapes) gives
    exactly the outputs of the path it resolves to, which the rest of the suite holds to the contract."""
    x, carry = _inputs(op, op.aliases[impl])
    _assert_trees(op.call(impl, x, SEG_J, MASK_J, carry), op.call(op.aliases[impl], x, SEG_J, MASK_J, carry), 0.0,
                  f"{impl} = {op.aliases[impl]}")


@pytest.mark.parametrize("op,impl", HEAVY)
def test_padding_changes_nothing(op, impl):
    """A ragged batch — row r shifted right by PADS[r], NaN in the pads before and after it, a mask marking
    it — equals the unpadded rows on their real tokens, outputs and gradients; pads give 0 and get 0."""
    x, _ = _inputs(op, impl)
    padded = _padded(op, x, PADS, T + PAD, np.nan)
    real = np.zeros((B, T + PAD), bool)
    for r, p in enumerate(PADS):
        real[r, p:p + T] = True
    want, _, (g_want, _) = run(op, impl, x)
    w = np.asarray(_cotangent(want.shape))
    w_pad = np.zeros((B, T + PAD) + w.shape[2:], np.float32)
    for r, p in enumerate(PADS):
        w_pad[r, p:p + T] = w[r]
    y, _, (g, _) = run(op, impl, padded, mask=jnp.asarray(real), w=jnp.asarray(w_pad))
    for r, p in enumerate(PADS):
        assert_rel(y[r, p:p + T], want[r], TOL, f"row {r}")
        assert not bool(jnp.any(y[r, :p])) and not bool(jnp.any(y[r, p + T:])), f"row {r}: pads give 0"
    for n, a in g.items():
        if a is None:
            continue
        assert bool(jnp.all(jnp.isfinite(a))), f"d{n}"
        if n not in op.timed:
            assert_rel(a, g_want[n], TOL, f"d{n}")
            continue
        length = g_want[n].shape[1]
        for r, p in enumerate(PADS):
            assert_rel(a[r, p:p + length], g_want[n][r], TOL, f"d{n} row {r}")
            assert not bool(jnp.any(a[r, :p])) and not bool(jnp.any(a[r, p + length:])), f"d{n} row {r}: pads get 0"


@pytest.mark.parametrize("op,impl", HEAVY)
def test_packed_row_equals_each_document_alone(op, impl):
    """Each document of a packed row, moved alone to the start of a row of its own, gives the packed row's
    outputs on its tokens; every position outside a document gives exactly 0. Its holes are dropped (the
    document's real tokens side by side) or, where position counts, kept as mask=False; an encoder slot moves
    with its token."""
    x, carry = _inputs(op, impl)
    no_carry = jax.tree.map(jnp.zeros_like, carry)  # adds nothing: the packed configuration's compilation
    packed = np.asarray(run(op, impl, x, no_carry, FOLDED_J, jnp.ones((B, T), bool))[0])
    docs = [(r, start + np.arange(stop - start) if op.positional else start + np.flatnonzero(real), real)
            for r, start, stop, real in documents(FOLDED)]
    assert len(docs) == 8
    solo = []
    for lo in range(0, len(docs), B):  # batches shaped as the padded ones: their compilation
        alone = {n: (np.zeros((B, a.shape[1] + PAD) + a.shape[2:], np.asarray(a).dtype) if n in op.timed else a)
                 for n, a in x.items()}
        mask = np.zeros((B, T + PAD), bool)
        for i, (r, pos, real) in enumerate(docs[lo:lo + B]):
            mask[i, : len(pos)] = real if op.positional else True
            for n in op.timed:
                if n in x:
                    inside = pos[pos < x[n].shape[1]]
                    alone[n][i, : len(inside)] = np.asarray(x[n])[r, inside]
        solo.append(np.asarray(run(op, impl, {n: jnp.asarray(a) for n, a in alone.items()}, mask=jnp.asarray(mask))[0]))
    solo = np.concatenate(solo)
    covered = np.zeros((B, T), bool)
    for i, (r, pos, real) in enumerate(docs):
        keep = real if op.positional else np.ones(len(pos), bool)
        assert_rel(packed[r, pos[keep]], solo[i, : len(pos)][keep], TOL, f"document {i}")
        covered[r, pos[keep]] = True
    assert np.all(packed[~covered] == 0)


@pytest.mark.parametrize("op,impl", ALL)
def test_nan_in_an_excluded_token_reaches_nothing(op, impl):
    """NaN in every token that segment_ids, mask or the op's own inputs (PLA's enc_mask) exclude leaves the
    outputs, the carried state and every gradient exactly as with finite values there."""
    x, carry = _inputs(op, impl)
    bad = run(op, impl, _poison(op, x, FOLDED == 0), carry, SEG_J, MASK_J)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(bad))
    _assert_trees(bad, run(op, impl, x, carry, SEG_J, MASK_J), 0.0, "NaN")


@pytest.mark.parametrize("op,impl", HEAVY)
def test_two_calls_equal_one(op, impl):
    """The row as two calls, the second continuing the first at SPLIT (inside a document in every row),
    equals one call: outputs, final carry, and gradients through the carry, the key span or the tail (under
    jax.jit, the carry and the query offset traced)."""
    if not op.continues(impl):
        pytest.skip(f"{op.name} implementation={impl!r} cannot continue a row")
    x, carry = _inputs(op, impl)
    one = run(op, impl, x, carry, SEG_J, MASK_J)
    _assert_trees(run(op, impl, x, carry, SEG_J, MASK_J, split=True), one, TOL, "two calls")


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_shared_errors_name_the_argument(op):
    """The errors every op shares: segment_ids / mask of a wrong dtype or shape, an implementation the op does
    not offer, a non-float or wrong-rank first input, an empty sequence, a continuation that does not fit."""
    x, _ = _inputs(op, "reference")
    call = functools.partial(op.call, "reference", x)
    cases = [
        (dict(segment_ids=jnp.ones((B, T), jnp.float32)), TypeError, "segment_ids must have an integer dtype"),
        (dict(segment_ids=jnp.ones((B, T + 1), jnp.int32)), ValueError,
         rf"segment_ids must have shape \[batch, seq\] = \({B}, {T}\); got \({B}, {T + 1}\)"),
        (dict(mask=jnp.ones((B, T), jnp.float32)), TypeError, "mask must be boolean"),
        (dict(mask=jnp.ones((B, T - 1), bool)), ValueError, rf"mask must have shape \[batch, seq\] = \({B}, {T}\)"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            call(**kw)
    for name in ["cuda"] + [i.value for i in Implementation if i.value not in op.implementations]:
        with pytest.raises(ValueError, match=rf"implementation='{name}' is not offered .*implementation must be one of"):
            op.call(name, x)
    with pytest.raises(TypeError, match=f"{op.first} must have a floating dtype"):
        op.call("reference", {**x, op.first: x[op.first].astype(jnp.int32)})
    with pytest.raises(ValueError, match=f"{op.first} must have rank"):
        op.call("reference", {**x, op.first: x[op.first][0]})
    with pytest.raises(ValueError, match=f"{op.first}: sequence length \\(axis 1\\) must be at least 1; got 0"):
        op.call("reference", {n: (a[:, :0] if n in op.timed else a) for n, a in x.items()})
    make_kw, exc, match = op.bad_carry
    kw = make_kw()
    with pytest.raises(exc, match=match):
        if "q_offset" in kw:
            op.call("reference", x, q=x["q"][:, :T - SPLIT], **kw)
        else:
            op.call("reference", x, carry=next(iter(kw.values())))
