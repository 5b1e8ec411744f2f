"""Synthetic recall tasks, generated on the fly and deterministic per (seed, split, step, row).

Token ids: 0 PAD, 1 SEP, 2 (unused), 3 MASK (the JRT objective's mask id); content tokens start at 4.
Every example is a prefix (what JRT-RNN's encoder reads, M tokens, the same M for every example of a task)
followed by a decoder part where the answers are predicted, so the JRT objective (NTP on positions ≥ M) and
plain causal NTP train on exactly the same targets.

Multi-query associative recall (MQAR), `num_pairs` key-value pairs, `num_queries` of them asked; the prefix
holds the pairs and the list of asked keys, in either order, and the decoder answers them one by one:
  order="kv_first"       k1 v1 … kN vN SEP q1 … qQ  |  q1 a1 q2 a2 …   the asked keys come after the context:
                                                                       a causal model must store every pair (hard)
  order="queries_first"  q1 … qQ SEP k1 v1 … kN vN  |  q1 a1 …          the keys to keep are announced first (easy)
JRT-RNN's encoder reads the whole prefix either way, so for it the order should not matter.

Set disjointness (one shared element; answer = that element), the paper's core experiment:
  order="long_first"     B (long set) SEP A (short set)  |  SEP answer      a causal model must store B (hard)
  order="short_first"    A SEP B  |  SEP answer

`labels[t]` is the token the model must predict at position t (-1 = no loss there).

JRT-Prompt as a format (`ReadTwice`, `read_twice`): the prefix placed in front of the example a second time,
  prefix  prefix decoder      (M more tokens; a JRT-RNN's encoder reads both copies, 2M tokens)
so on its second pass a causal model already knows the whole context when it decides what to store.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD, SEP, MASK = 0, 1, 3
FIRST_CONTENT = 4


@dataclasses.dataclass(frozen=True)
class Batch:
    tokens: np.ndarray  # [rows, seq_len] int32
    labels: np.ndarray  # [rows, seq_len] int32, -1 where no loss
    enc_len: int | None  # prefix length M, the same for every example of the task (None: the model's)
    segment_ids: np.ndarray | None = None  # [rows, seq_len] int32 document ids of a packed batch (0: padding)


def _rng(seed: int, split: int, step: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, step, row])


class MQAR:
    """Multi-query associative recall generator."""

    def __init__(self, *, seq_len, num_pairs, num_queries, num_keys, num_values, order="kv_first", seed=0):
        if order not in ("kv_first", "queries_first"):
            raise ValueError(f"order must be 'kv_first' or 'queries_first'; got {order!r}")
        if num_queries > num_pairs:
            raise ValueError(f"num_queries={num_queries} must be <= num_pairs={num_pairs}")
        if num_pairs > num_keys:
            raise ValueError(f"num_pairs={num_pairs} needs at least as many distinct keys; num_keys={num_keys}")
        self.order, self.seed = order, seed
        self.num_pairs, self.num_queries = num_pairs, num_queries
        self.num_keys, self.num_values = num_keys, num_values
        self.enc_len = 2 * num_pairs + num_queries + 1
        needed = self.enc_len + 2 * num_queries
        if needed > seq_len:
            raise ValueError(f"data.seq_len={seq_len} is too short for this MQAR task: it needs {needed} tokens")
        self.seq_len = seq_len
        self.vocab_needed = FIRST_CONTENT + num_keys + num_values

    def example(self, rng: np.random.Generator):
        keys = rng.choice(self.num_keys, self.num_pairs, replace=False) + FIRST_CONTENT
        values = rng.integers(0, self.num_values, self.num_pairs) + FIRST_CONTENT + self.num_keys
        asked = rng.choice(self.num_pairs, self.num_queries, replace=False)
        context = np.stack([keys, values], 1).reshape(-1)
        parts = [context, [SEP], keys[asked]] if self.order == "kv_first" else [keys[asked], [SEP], context]
        prefix = np.concatenate(parts)
        decoder = np.stack([keys[asked], values[asked]], 1).reshape(-1)
        tokens = np.full(self.seq_len, PAD, np.int32)
        tokens[: self.enc_len] = prefix
        tokens[self.enc_len : self.enc_len + decoder.size] = decoder
        labels = np.full(self.seq_len, -1, np.int32)
        labels[self.enc_len : self.enc_len + decoder.size : 2] = values[asked]  # at q_i, predict a_i
        return tokens, labels

    def batch(self, step: int, rows, split: int = 0) -> Batch:
        pairs = [self.example(_rng(self.seed, split, step, r)) for r in rows]
        return Batch(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), self.enc_len)


class SetDisjointness:
    """Two sets sharing exactly one element; the model names it after reading both."""

    def __init__(self, *, seq_len, short_set, long_set, universe, order="long_first", seed=0):
        if order not in ("long_first", "short_first"):
            raise ValueError(f"order must be 'long_first' or 'short_first'; got {order!r}")
        if short_set < 1 or long_set < short_set:
            raise ValueError(f"need 1 <= short_set <= long_set; got short_set={short_set}, long_set={long_set}")
        if short_set + long_set - 1 > universe:
            raise ValueError(f"universe={universe} is too small for sets of {short_set} and {long_set} elements")
        self.order, self.seed = order, seed
        self.short_set, self.long_set, self.universe = short_set, long_set, universe
        self.enc_len = short_set + long_set + 1
        if self.enc_len + 2 > seq_len:
            raise ValueError(f"data.seq_len={seq_len} is too short: set disjointness needs {self.enc_len + 2} tokens")
        self.seq_len = seq_len
        self.vocab_needed = FIRST_CONTENT + universe

    def example(self, rng: np.random.Generator):
        elems = rng.choice(self.universe, self.short_set + self.long_set - 1, replace=False) + FIRST_CONTENT
        common = elems[0]
        short = rng.permutation(np.concatenate([[common], elems[1 : self.short_set]]))
        long = rng.permutation(np.concatenate([[common], elems[self.short_set :]]))
        first, second = (long, short) if self.order == "long_first" else (short, long)
        tokens = np.full(self.seq_len, PAD, np.int32)
        tokens[: self.enc_len] = np.concatenate([first, [SEP], second])
        tokens[self.enc_len] = SEP
        tokens[self.enc_len + 1] = common
        labels = np.full(self.seq_len, -1, np.int32)
        labels[self.enc_len] = common
        return tokens, labels

    def batch(self, step: int, rows, split: int = 0) -> Batch:
        pairs = [self.example(_rng(self.seed, split, step, r)) for r in rows]
        return Batch(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), self.enc_len)


def read_twice(tokens: np.ndarray, labels: np.ndarray, enc_len: int) -> tuple[np.ndarray, np.ndarray]:
    """JRT-Prompt on a batch: the first `enc_len` tokens (the prefix) repeated in front of each row; the labels
    shift with their tokens (no loss on the added copy). Returns [rows, enc_len + seq_len] tokens and labels."""
    if not 0 < enc_len <= tokens.shape[1]:
        raise ValueError(f"enc_len must be in 1..{tokens.shape[1]} (the row length); got {enc_len}")
    pad = np.full((tokens.shape[0], enc_len), -1, labels.dtype)
    return np.concatenate([tokens[:, :enc_len], tokens], axis=1), np.concatenate([pad, labels], axis=1)


class ReadTwice:
    """A synthetic task whose every example reads its prefix twice (`read_twice`): rows of
    `task.seq_len + task.enc_len` tokens, prefix length 2 · `task.enc_len`. Training on it teaches a model the
    JRT-Prompt format (`jrt train data.read_twice=true`); the examples are `task`'s, same seeds and splits."""

    def __init__(self, task):
        self.task = task
        self.enc_len = 2 * task.enc_len
        self.seq_len = task.seq_len + task.enc_len
        self.vocab_needed = task.vocab_needed
        self.seed = task.seed

    def batch(self, step: int, rows, split: int = 0) -> Batch:
        inner = self.task.batch(step, rows, split)
        tokens, labels = read_twice(inner.tokens, inner.labels, self.task.enc_len)
        return Batch(tokens, labels, self.enc_len)
