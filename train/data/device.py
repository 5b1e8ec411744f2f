"""The synthetic recall tasks generated on the accelerator with `jax.random`: batches as pure functions of a key.

    task = device_task(cfg.data)                            # static, hashable: a jit / scan constant
    batch = make_batch(batch_key(task.seed, 0, step), task)  # {"tokens": [B, T] int32, "labels": [B, T] int32}

Why: a sweep (`train.sweep`) trains many small models at once inside one `lax.scan`; a batch made by numpy on the
host would stop the scan at every step. Here a batch is a function of (seed, split, step) only, so the same call
inside a scan, in a jitted step or at the host (`DeviceTask.batch`, what `jrt train data.on_device=true` reads)
gives the same tokens, and a run restored at step s continues with the same data.

Token format and loss mask are those of `jrt_jax.tasks` (0 PAD, 1 SEP, 3 MASK, content from 4; `labels[t]` the
token to predict at t, -1 elsewhere; every example a prefix of M tokens — the task's `enc_len`, what a JRT-RNN's
encoder reads — followed by the decoder part that carries the targets), so the trainer's objectives and its
evaluation apply unchanged. The examples are not the numpy generators' (another random stream), only their format:

  MQAR, order kv_first       k1 v1 … kN vN SEP q1 … qQ | q1 a1 q2 a2 …        (queries_first: q… SEP k v …)
  set disjointness           B SEP A | SEP x        (order long_first; short_first: A SEP B | SEP x)

Set disjointness as the JRT paper builds it (`data.set_format=paper`; HazyResearch/prefix-linear-attention,
`synthetic/zoology/data/non_autoreg.py`):

  PAD … PAD  1 A 2 B | 3 x

The element universe (`data.universe` ids from 4 on; the paper: a vocabulary of 2,048, so 2,044 elements) is split
into two halves and A is drawn from one, B from the other, then one position of B is overwritten with an element of
A: exactly one shared element x by construction. `data.set_halves`: "shuffled" (the paper) splits a fresh
permutation of the universe for every example — in distribution the same as drawing |A| + |B| − 1 distinct
elements, with each set limited to half the universe; "fixed" always draws A from the lower half of the ids and B
from the upper one, so an element's id also tells which set it came from. Each example draws its sizes (|A|, |B|)
from `data.size_pairs` (the paper trains on (4, 16), (16, 4), (8, 32), (32, 8), … — both orders, so the order gap is
measured within one model); rows are left-padded so that the answer separator 3 always sits at M = 2 + max|A| +
max|B| (the prompt up to the separator is the encoder of a JRT-RNN; a single size pair has no padding at all, the
paper's sequence exactly). Ids 1, 2, 3 are the paper's markers; 3 is also the MLM mask id, so this format refuses
objective.mlm_prob > 0 (`train.config`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jrt_jax.tasks import FIRST_CONTENT, PAD, SEP, Batch

START, LIST_SEP, ANSWER_SEP = 1, 2, 3  # the JRT paper's markers: 1 A 2 B 3 answer

KINDS = ("mqar", "set_disjointness")


@dataclasses.dataclass(frozen=True)
class DeviceTask:
    """A synthetic task's static description (hashable: it is a constant of the traced programs).

    kind: "mqar" or "set_disjointness"; set_format "default" or "paper" (set disjointness only); seq_len: the row
    length (with read_twice, the prefix copy included); batch_size: rows per batch; seed: the data seed.
    `enc_len` is the prefix length M (2M with read_twice) and `vocab_needed` the smallest vocabulary that holds
    every id. Build it with `device_task`, which validates.
    """

    kind: str
    seq_len: int
    batch_size: int
    seed: int = 0
    order: str = ""
    num_pairs: int = 0
    num_queries: int = 0
    num_keys: int = 0
    num_values: int = 0
    short_set: int = 0
    long_set: int = 0
    universe: int = 0
    set_format: str = "default"
    size_pairs: tuple[tuple[int, int], ...] = ()
    set_halves: str = "shuffled"
    read_twice: bool = False

    @property
    def inner_enc_len(self) -> int:
        """M of one copy of the example (the prefix before any read-twice copy)."""
        if self.kind == "mqar":
            return 2 * self.num_pairs + self.num_queries + 1
        if self.set_format == "paper":
            return 2 + max(a for a, _ in self.size_pairs) + max(b for _, b in self.size_pairs)
        return self.short_set + self.long_set + 1

    @property
    def enc_len(self) -> int:
        return 2 * self.inner_enc_len if self.read_twice else self.inner_enc_len

    @property
    def inner_len(self) -> int:
        """Tokens of the example itself (seq_len less the prefix copy of read_twice)."""
        return self.seq_len - self.inner_enc_len if self.read_twice else self.seq_len

    @property
    def vocab_needed(self) -> int:
        if self.kind == "mqar":
            return FIRST_CONTENT + self.num_keys + self.num_values
        return FIRST_CONTENT + self.universe

    # The trainer's data interface (`train.data.make_task`): the batch of a step as host arrays.

    def batch(self, step: int, rows, split: int = 0) -> Batch:
        """`make_batch` of (seed, split, step) as a numpy `Batch` of the given rows of the global batch."""
        out = _generate(self, jnp.int32(split), jnp.int32(step))
        index = np.asarray(list(rows), np.int64)
        tokens, labels = np.asarray(out["tokens"])[index], np.asarray(out["labels"])[index]
        return Batch(tokens, labels, self.enc_len)


@functools.partial(jax.jit, static_argnums=0)
def _generate(task: DeviceTask, split, step):
    return make_batch(batch_key(task.seed, split, step), task)


def batch_key(seed: int, split, step):
    """The key of batch `step` of `split` (0: training, 1: held-out evaluation): fold_in(key(seed), 2·step + split),
    so training and evaluation never share a key (one fold_in: each compiles to its own threefry rounds)."""
    data = 2 * jnp.asarray(step, jnp.uint32) + jnp.asarray(split, jnp.uint32)
    return jax.random.fold_in(jax.random.PRNGKey(seed), data)


def make_batch(key, task: DeviceTask) -> dict:
    """{"tokens": [B, T] int32, "labels": [B, T] int32 (-1: no loss)} of `task` from `key` (pure, jit-able)."""
    example = {"mqar": _mqar, "set_disjointness": _set_paper if task.set_format == "paper" else _sets}[task.kind]
    tokens, labels = example(key, task)
    if task.read_twice:
        m = task.inner_enc_len
        tokens = jnp.concatenate([tokens[:, :m], tokens], axis=1)
        labels = jnp.concatenate([jnp.full((task.batch_size, m), -1, jnp.int32), labels], axis=1)
    return {"tokens": tokens, "labels": labels}


# The generators draw all the random bits of a batch in one `jax.random.bits` call and shuffle by sorting random
# bits (a uniformly random permutation up to ties of 32-bit draws; a tie still gives a permutation). Every
# `jax.random` call compiles to its own threefry rounds, and a sweep compiles the generator into every scan: one
# call instead of `jax.random.permutation` (multi-round shuffles) and a key per row made the generator's share of a
# tiny model's scan compile small.


def _draw(key, rows: int, *widths: int) -> list:
    """[rows, w] uint32 random bits for each width, from one call."""
    bits = jax.random.bits(key, (rows, sum(widths)), jnp.uint32)
    cuts = np.cumsum((0,) + widths)
    return [bits[:, a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def _permutation(bits):
    """[rows, n] int32: per row, the permutation that sorts the row's random bits."""
    return jnp.argsort(bits, axis=-1).astype(jnp.int32)


def _below(bits, n):
    """Integers in [0, n) from random bits (n may be an array; the modulo bias is below n / 2^32)."""
    return (bits % jnp.asarray(n, jnp.uint32)).astype(jnp.int32)


def _layout(task: DeviceTask, prefix, decoder):
    """[B, T] tokens: prefix [B, M] at 0, decoder [B, D] after it, PAD after that; and [B, T] labels of -1."""
    b, t, m = task.batch_size, task.inner_len, task.inner_enc_len
    tokens = jnp.full((b, t), PAD, jnp.int32).at[:, :m].set(prefix).at[:, m:m + decoder.shape[1]].set(decoder)
    return tokens, jnp.full((b, t), -1, jnp.int32)


def _mqar(key, task: DeviceTask):
    b, p, q, m = task.batch_size, task.num_pairs, task.num_queries, task.inner_enc_len
    key_bits, value_bits, ask_bits = _draw(key, b, task.num_keys, p, p)
    keys = _permutation(key_bits)[:, :p] + FIRST_CONTENT  # distinct keys
    values = _below(value_bits, task.num_values) + FIRST_CONTENT + task.num_keys
    asked = _permutation(ask_bits)[:, :q]
    asked_keys = jnp.take_along_axis(keys, asked, axis=1)
    answers = jnp.take_along_axis(values, asked, axis=1)
    context = jnp.stack([keys, values], 2).reshape(b, 2 * p)
    sep = jnp.full((b, 1), SEP, jnp.int32)
    parts = [context, sep, asked_keys] if task.order == "kv_first" else [asked_keys, sep, context]
    tokens, labels = _layout(task, jnp.concatenate(parts, 1), jnp.stack([asked_keys, answers], 2).reshape(b, 2 * q))
    return tokens, labels.at[:, m:m + 2 * q:2].set(answers)  # at q_i, predict a_i


def _sets(key, task: DeviceTask):
    b, s, n, m = task.batch_size, task.short_set, task.long_set, task.inner_enc_len
    elem_bits, short_bits, long_bits = _draw(key, b, task.universe, s, n)
    elems = _permutation(elem_bits)[:, :s + n - 1] + FIRST_CONTENT
    common = elems[:, 0]  # the shared element
    short = jnp.take_along_axis(elems[:, :s], _permutation(short_bits), axis=1)
    long = jnp.take_along_axis(jnp.concatenate([elems[:, :1], elems[:, s:]], 1), _permutation(long_bits), axis=1)
    first, second = (long, short) if task.order == "long_first" else (short, long)
    sep = jnp.full((b, 1), SEP, jnp.int32)
    tokens, labels = _layout(task, jnp.concatenate([first, sep, second], 1), jnp.stack([sep[:, 0], common], 1))
    return tokens, labels.at[:, m].set(common)


def _set_paper(key, task: DeviceTask):
    b, m, half = task.batch_size, task.inner_enc_len, task.universe // 2
    sizes = np.asarray(task.size_pairs, np.int32)
    amax, bmax = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    if task.set_halves == "shuffled":  # a fresh split of the universe for every example (the paper)
        pool_bits, pick_bits = _draw(key, b, task.universe, 3)
        pool = _permutation(pool_bits)
        first, second = pool[:, :amax], pool[:, half:half + bmax]
    else:  # A from element ids [0, half), B from [half, universe)
        low_bits, high_bits, pick_bits = _draw(key, b, half, task.universe - half, 3)
        first = _permutation(low_bits)[:, :amax]
        second = _permutation(high_bits)[:, :bmax] + half
    first, second = first + FIRST_CONTENT, second + FIRST_CONTENT
    pair = _below(pick_bits[:, 0], len(sizes))
    a, n = jnp.asarray(sizes[:, 0])[pair][:, None], jnp.asarray(sizes[:, 1])[pair][:, None]  # [B, 1]
    i = _below(pick_bits[:, 1:2], a)  # which element of A is shared …
    j = _below(pick_bits[:, 2:3], n)  # … and where it goes in B
    answer = jnp.take_along_axis(first, i, axis=1)  # [B, 1]
    second = jnp.where(jnp.arange(bmax)[None, :] == j, answer, second)
    start = m - 2 - a - n  # left padding: the answer separator sits at m in every row
    p = jnp.arange(task.inner_len)[None, :]
    in_first, in_second = (p > start) & (p <= start + a), (p > start + a + 1) & (p <= start + a + 1 + n)
    take = lambda x, idx, width: jnp.take_along_axis(x, jnp.clip(idx, 0, width - 1), axis=1)
    tokens = jnp.where(in_first, take(first, p - start - 1, amax), PAD)
    tokens = jnp.where(in_second, take(second, p - start - a - 2, bmax), tokens)
    tokens = jnp.where(p == start, START, tokens)
    tokens = jnp.where(p == start + a + 1, LIST_SEP, tokens)
    tokens = jnp.where(p == m, ANSWER_SEP, tokens)
    tokens = jnp.where(p == m + 1, answer, tokens).astype(jnp.int32)
    labels = jnp.where(p == m, answer, -1).astype(jnp.int32)
    return tokens, labels


def size_pair_index(tokens, task: DeviceTask):
    """[B] int32: for each row of a `set_format="paper"` batch, the index in `task.size_pairs` of the (|A|, |B|)
    pair it was drawn with (the first listed when a pair repeats), read back from its markers: A lies between 1
    and 2, B between 2 and the answer separator 3 at M. Why: the paper trains on a mixture of orders and scores each
    (|A|, |B|) — short→long against long→short — separately; reading the pair from the tokens keeps the batches, and
    so every training stream, exactly those of `make_batch`. Pure and jit-able; with read_twice the example after
    the prefix copy is read."""
    if task.kind != "set_disjointness" or task.set_format != "paper":
        raise ValueError(f"size_pair_index needs a set_disjointness task with set_format='paper'; got kind="
                         f"{task.kind!r}, set_format={task.set_format!r}")
    example = jnp.asarray(tokens)[:, tokens.shape[1] - task.inner_len:]
    start = jnp.argmax(example == START, axis=1)
    middle = jnp.argmax(example == LIST_SEP, axis=1)
    a, n = middle - start - 1, task.inner_enc_len - middle - 1
    sizes = np.asarray(task.size_pairs, np.int32)
    match = (a[:, None] == sizes[None, :, 0]) & (n[:, None] == sizes[None, :, 1])
    return jnp.argmax(match, axis=1).astype(jnp.int32)


def device_task(cfg, *, batch_size: int | None = None) -> DeviceTask:
    """The `DeviceTask` of a `train.config.DataConfig`; a one-line ValueError naming the data.* field when the task
    has no on-device generator or its sizes do not fit."""
    if cfg.kind not in KINDS:
        raise ValueError(f"data.kind={cfg.kind!r} has no on-device generator (data.on_device and jrt sweep make "
                         f"{' and '.join(KINDS)} batches only)")
    common = dict(kind=cfg.kind, seq_len=cfg.seq_len, batch_size=batch_size or cfg.batch_size, seed=cfg.seed,
                  read_twice=cfg.read_twice)
    if cfg.kind == "mqar":
        order = cfg.order or "kv_first"
        if cfg.num_queries > cfg.num_pairs:
            raise ValueError(f"data.num_queries={cfg.num_queries} must be <= data.num_pairs={cfg.num_pairs}")
        if cfg.num_pairs > cfg.num_keys:
            raise ValueError(f"data.num_pairs={cfg.num_pairs} needs as many distinct keys; data.num_keys="
                             f"{cfg.num_keys}")
        for name in ("num_pairs", "num_queries", "num_keys", "num_values"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"data.{name} must be >= 1; got {getattr(cfg, name)}")
        task = DeviceTask(**common, order=order, num_pairs=cfg.num_pairs, num_queries=cfg.num_queries,
                          num_keys=cfg.num_keys, num_values=cfg.num_values)
        decoder = 2 * cfg.num_queries
    elif cfg.set_format == "paper":
        pairs = tuple((int(a), int(b)) for a, b in cfg.size_pairs) or (
            ((cfg.long_set, cfg.short_set),) if (cfg.order or "long_first") == "long_first"
            else ((cfg.short_set, cfg.long_set),))
        if any(a < 1 or b < 1 for a, b in pairs):
            raise ValueError(f"data.size_pairs must hold positive set sizes; got {[list(p) for p in pairs]}")
        half = cfg.universe // 2
        amax, bmax = max(a for a, _ in pairs), max(b for _, b in pairs)
        if amax > half or bmax > cfg.universe - half:
            raise ValueError(f"data.universe={cfg.universe} is too small for sets of up to {amax} and {bmax} elements "
                             f"drawn from its two halves ({half} and {cfg.universe - half} elements)")
        task = DeviceTask(**common, universe=cfg.universe, set_format="paper", size_pairs=pairs,
                          set_halves=cfg.set_halves)
        decoder = 2
    else:
        order = cfg.order or "long_first"
        if cfg.short_set < 1 or cfg.long_set < cfg.short_set:
            raise ValueError(f"need 1 <= data.short_set <= data.long_set; got {cfg.short_set} and {cfg.long_set}")
        if cfg.short_set + cfg.long_set - 1 > cfg.universe:
            raise ValueError(f"data.universe={cfg.universe} is too small for sets of {cfg.short_set} and "
                             f"{cfg.long_set} elements")
        task = DeviceTask(**common, order=order, short_set=cfg.short_set, long_set=cfg.long_set,
                          universe=cfg.universe)
        decoder = 2
    needed = task.inner_enc_len + decoder + (task.inner_enc_len if cfg.read_twice else 0)
    if needed > cfg.seq_len:
        twice = " (read twice)" if cfg.read_twice else ""
        raise ValueError(f"data.seq_len={cfg.seq_len} is too short for this {cfg.kind} task{twice}: it needs {needed} "
                         "tokens")
    return task


__all__ = ["ANSWER_SEP", "DeviceTask", "KINDS", "LIST_SEP", "START", "batch_key", "device_task", "make_batch",
           "size_pair_index"]
