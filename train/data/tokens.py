"""Streamed pre-tokenized data (`data.kind=tokens`): directories written by `jrt prepare-data`.

    data.kind=tokens data.path=[data/web,data/books] data.weights=[3,1] data.packing=true data.workers=2

`TokenData.batch(step, rows, split)` is a pure function of (config, step, rows, split): the trainer resumes
exactly after a kill -9 (the data position is the step), and each process of a multi-host run reads only its
own rows of the global batch. `TokenData.iterate(start_step, rows)` yields the same batches, prepared ahead of
the step by grain (a background thread for data.workers=0, worker processes otherwise).

Sequences. Every dataset (one prepare-data directory) has its own list of sequences, for the training
documents (split 0) and the held-out ones (split 1):

* packing=false: the documents in stored order, each followed by EOS, joined into one stream and cut into
  windows of seq_len + 1 tokens (consecutive windows share one token, as kind="text"); tokens = w[:-1],
  labels = w[1:]. The held-out stream is read cyclically, so a small held-out split still fills a window.
* packing=true: each document followed by its EOS is a unit; a unit longer than seq_len is cut into seq_len
  pieces (each piece its own segment). The pieces, in a seeded shuffled document order, are packed greedily by
  FIRST-FIT over the last 32 open rows (`pack_plan`): a piece goes into the oldest open row with room for it,
  else it opens a new row (closing the oldest when 32 are open). The plan (piece arrays in row order and the
  row starts) is computed from the document lengths alone, deterministically from the seed, once per TokenData
  (2-3 µs a piece: 0.24 s for 100 000 documents; grain workers get it with the pickle); any row is then random
  access. Why first-fit: in-order packing (next-fit, window 1) left 16-18 % padding on lognormal documents of
  median 300 tokens at seq_len 2048 and 25 % on 20-250-token documents at 256; first-fit over 32 open rows
  0.7-0.8 % and 7 %, first-fit over all rows 0.65 % and 5 % (`benchmarks/data.py`, section 3). The Shakespeare
  plays (gpt2) are many rows long each: 0.03 % padding at seq_len 256, 0.46 % at 2048 (all 42 plays).
  segment_ids are 1, 2, 3 … within a row and 0 on padding; labels are the next token within the same segment,
  -1 at each segment's last token and on padding; padding tokens are 0.

Order. The global sequence index g = step · batch_size + row goes through a deterministic weighted interleave
of the datasets (an exact, stateless Beatty-sequence split, `interleave`: every prefix of m global positions
holds m · w_i / Σw sequences of dataset i to within i + 1), giving dataset d and its own index k;
k = epoch · n_d + pos reads sequence perm_{d,epoch}[pos] of a permutation seeded by (seed, d, epoch), new every
epoch. Held-out batches
(split 1) read the held-out sequences in plan order, cyclically. Why not grain.MapDataset.mix: its length is
finite (the shortest dataset over its weight) while training runs through many epochs of each dataset at
different rates, it rounds float weights to integers scaled from the smallest (100), and the data position must
not change when a grain upgrade changes its mixing formula.

Files open lazily: memory maps are opened per process on first read and dropped when the object is pickled
(grain worker processes re-open them); the plans (numpy arrays) travel with the pickle.
"""

from __future__ import annotations

import atexit
import dataclasses
import fractions
import functools
import importlib.util
import math
import os
import pathlib
import shutil
import threading
import time
import weakref

import numpy as np

from train.data.synthetic import Batch

_GRAIN_MISSING = "data.kind='tokens' needs grain: pip install 'jrt-jax[data]'"
_MAX_STEP = 1 << 62
_PERM_CACHE = 4  # epoch permutations kept per process
PACK_WINDOW = 32  # open rows that first-fit packing considers (benchmarks/data.py measures 1 … all)


def _grain():
    try:
        import grain
    except ImportError:
        raise ValueError(_GRAIN_MISSING) from None
    return grain


def _absl_flags_parsed() -> None:
    """grain reads absl flags (with their defaults) when it starts worker processes; a program that is not an
    absl app never parsed them, and reading one then raises UnparsedFlagAccessError."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# ------------------------------------------------------------------------------------------------ plans


@dataclasses.dataclass
class WindowPlan:
    """packing=false: windows of seq_len + 1 tokens over the split's documents (each + EOS) in stored order."""

    docs: np.ndarray  # [n_docs] global document indices, in stream order
    cum: np.ndarray  # [n_docs + 1] stream position where each document's unit (tokens + EOS) starts
    count: int  # windows
    cyclic: bool  # the held-out stream wraps around when shorter than a window

    @property
    def size(self) -> int:
        return int(self.cum[-1])


@dataclasses.dataclass
class PackPlan:
    """packing=true: rows of whole pieces (see `pack_plan`); the piece arrays are in row order."""

    piece_doc: np.ndarray  # [pieces] global document index
    piece_off: np.ndarray  # [pieces] start of the piece within the document's unit (tokens + EOS)
    piece_len: np.ndarray  # [pieces] tokens of the piece (<= seq_len)
    row_start: np.ndarray  # [rows + 1] the first piece of each row (row r = pieces row_start[r]:row_start[r+1])
    seq_len: int

    @property
    def count(self) -> int:
        return len(self.row_start) - 1

    @property
    def padding_fraction(self) -> float:
        return 1.0 - float(self.piece_len.sum()) / max(1, self.count * self.seq_len)


def window_plan(docs: np.ndarray, lengths: np.ndarray, seq_len: int, *, cyclic: bool) -> WindowPlan:
    cum = np.zeros(len(docs) + 1, np.int64)
    np.cumsum(np.asarray(lengths, np.int64) + 1, out=cum[1:])
    count = (int(cum[-1]) - 1) // seq_len
    if cyclic and len(docs):
        count = max(1, count)
    return WindowPlan(np.asarray(docs, np.int64), cum, count, cyclic)


def pack_plan(docs: np.ndarray, lengths: np.ndarray, seq_len: int, rng: np.random.Generator | None = None, *,
              window: int = PACK_WINDOW) -> PackPlan:
    """Pack the units (document + EOS, cut into seq_len pieces) into rows: first-fit over the last `window` open
    rows, in a shuffled document order (`rng`; None keeps the given order).

    Each piece goes into the first (oldest) open row with room for it; if none has room it opens a new row,
    closing the oldest open row when `window` are open. A full piece (seq_len tokens) is a row by itself and leaves
    the open rows open (so window=1 is next-fit but for that). Rows are numbered in the order they were opened;
    the pieces of a row keep the shuffled order."""
    order = rng.permutation(len(docs)) if rng is not None else np.arange(len(docs))
    docs = np.asarray(docs, np.int64)[order]
    units = np.asarray(lengths, np.int64)[order] + 1
    pieces = (units + seq_len - 1) // seq_len
    total = int(pieces.sum())
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece_off = (np.arange(total, dtype=np.int64) - first) * seq_len
    piece_len = np.minimum(seq_len, np.repeat(units, pieces) - piece_off)
    row = np.empty(total, np.int64)
    free, ids = [], []  # the open rows, oldest first: room left, row number
    rows = 0
    for p, n in enumerate(piece_len.tolist()):
        if n < seq_len and free and n <= max(free):
            j = 0
            while free[j] < n:
                j += 1
            row[p] = ids[j]
            if free[j] == n:
                del free[j], ids[j]
            else:
                free[j] -= n
            continue
        row[p] = rows
        if n < seq_len:
            if len(free) >= window:
                del free[0], ids[0]
            free.append(seq_len - n)
            ids.append(rows)
        rows += 1
    by_row = np.argsort(row, kind="stable")
    row_start = np.zeros(rows + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=rows), out=row_start[1:])
    return PackPlan(np.repeat(docs, pieces)[by_row], piece_off[by_row], piece_len[by_row].astype(np.int32),
                    row_start, seq_len)


# ------------------------------------------------------------------------------------------------ mixture


def integer_weights(weights) -> tuple[int, ...]:
    """Positive weights as the smallest integers in the same proportions (floats via a ≤ 10⁶ denominator)."""
    fr = [fractions.Fraction(w).limit_denominator(10**6) for w in weights]
    if any(f <= 0 for f in fr):
        raise ValueError(f"data.weights must be positive; got {list(weights)}")
    denom = math.lcm(*[f.denominator for f in fr])
    ints = [int(f * denom) for f in fr]
    g = math.gcd(*ints)
    return tuple(i // g for i in ints)


def interleave(g: int, weights: tuple[int, ...]) -> tuple[int, int]:
    """(dataset, index within it) of global position g: an exact, stateless weighted interleave.

    Dataset 0 takes the slots where floor(m · w_0 / W) steps up (m = slots so far); the slots it leaves are
    renumbered and split the same way between the other datasets. So over any prefix of m slots dataset i gets
    m · w_i / W of them to within i + 1, and its own sequences in order, none skipped."""
    remaining = sum(weights)
    m = g
    for i, w in enumerate(weights):
        if w == remaining:
            return i, m
        before, after = m * w // remaining, (m + 1) * w // remaining
        if after > before:
            return i, before
        m -= before
        remaining -= w
    raise AssertionError("unreachable: the last dataset takes every remaining slot")


# ------------------------------------------------------------------------------------------------ datasets


class _Dataset:
    """One prepare-data directory: its index, document table and (lazily) its memory-mapped shards."""

    def __init__(self, folder: str):
        from train.data.prepare import read_index

        self.folder = pathlib.Path(folder).resolve()
        self.index = read_index(self.folder)
        self.dtype = np.dtype(self.index["dtype"])
        self.eos = int(self.index["eos_id"])
        shard, start, length = [], [], []
        self.shards = []
        for i, s in enumerate(self.index["shards"]):
            offsets = np.load(self.folder / s["offsets"])
            shard.append(np.full(len(offsets) - 1, i, np.int32))
            start.append(offsets[:-1])
            length.append(np.diff(offsets))
            path, size = self.folder / s["file"], int(offsets[-1])
            if not path.is_file() or path.stat().st_size != size * self.dtype.itemsize:
                found = f"{path.stat().st_size} bytes" if path.is_file() else "missing"
                raise ValueError(f"data.path {self.folder}: {s['file']} should hold {size} {self.dtype} tokens "
                                 f"({size * self.dtype.itemsize} bytes) but is {found}; rerun `jrt prepare-data`")
            self.shards.append((path, size))
        self.doc_shard = np.concatenate(shard)
        self.doc_start = np.concatenate(start).astype(np.int64)
        self.doc_len = np.concatenate(length).astype(np.int64)
        n = len(self.doc_len)
        eval_docs = np.load(self.folder / self.index["eval"]["file"]).astype(np.int64)
        held = np.zeros(n, bool)
        held[eval_docs] = True
        self.split_docs = (np.flatnonzero(~held), np.flatnonzero(held))
        self._maps = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _map(self, shard: int) -> np.ndarray:
        m = self._maps.get(shard)
        if m is None:
            path, size = self.shards[shard]
            m = np.memmap(path, self.dtype, mode="r", shape=(size,)) if size else np.zeros(0, self.dtype)
            self._maps[shard] = m
        return m

    def unit(self, doc: int, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of the document followed by EOS, as int32."""
        n = int(self.doc_len[doc])
        a, b = min(lo, n), min(hi, n)
        start = int(self.doc_start[doc])
        part = self._map(int(self.doc_shard[doc]))[start + a : start + b].astype(np.int32)
        if hi > n:
            part = np.append(part, np.int32(self.eos))
        return part


# ------------------------------------------------------------------------------------------------ TokenData


class TokenData:
    """Batches of `jrt prepare-data` directories; what `make_task` returns for data.kind="tokens"."""

    def __init__(self, cfg, model_config=None):
        if importlib.util.find_spec("grain") is None:
            raise ValueError(_GRAIN_MISSING)
        if not cfg.path:
            raise ValueError("data.path must name at least one `jrt prepare-data` directory for data.kind='tokens'")
        self.seq_len, self.batch_size, self.seed = cfg.seq_len, cfg.batch_size, cfg.seed
        self.packed = bool(cfg.packing)
        self.workers, self.prefetch = cfg.workers, cfg.prefetch
        self.eval_examples = cfg.eval_examples
        self.enc_len = None
        self.datasets = [_Dataset(p) for p in cfg.path]
        weights = tuple(cfg.weights) if cfg.weights else (1,) * len(self.datasets)
        if len(weights) != len(self.datasets):
            raise ValueError(f"data.weights has {len(weights)} entries but data.path has {len(self.datasets)}")
        self.weights = integer_weights(weights)

        first = self.datasets[0]
        rec = first.index["tokenizer"]
        key = lambda r: (r["name"], r["vocab_size"], r["eos_id"], r.get("sha256"))
        for ds in self.datasets[1:]:
            if key(ds.index["tokenizer"]) != key(rec):
                raise ValueError(f"data.path: {ds.folder} was prepared with tokenizer {ds.index['tokenizer']['name']} "
                                 f"(vocab {ds.index['vocab_size']}) but {first.folder} with {rec['name']} (vocab "
                                 f"{first.index['vocab_size']}); all data.path directories must share one tokenizer")
        self.vocab_needed = int(first.index["vocab_size"])
        self.eos_id = int(first.index["eos_id"])
        self.tokenizer_record = dict(rec, dir=str(first.folder),
                                     path=str(first.folder / rec["file"]) if rec.get("file") else None)

        self.plans = []  # [dataset][split]
        for d, ds in enumerate(self.datasets):
            plans = []
            for split, docs in enumerate(ds.split_docs):
                lengths = ds.doc_len[docs]
                if self.packed:
                    plans.append(pack_plan(docs, lengths, self.seq_len,
                                           np.random.default_rng([self.seed, d, split, 0x5EED])))
                else:
                    plans.append(window_plan(docs, lengths, self.seq_len, cyclic=split == 1))
            if plans[0].count < 1:
                held = int(ds.doc_len[ds.split_docs[0]].sum())
                raise ValueError(f"data.path {ds.folder}: its training documents hold {held} tokens: too few for one "
                                 f"sequence of data.seq_len={self.seq_len}")
            self.plans.append(plans)
        self._eval_datasets = [d for d in range(len(self.datasets)) if self.plans[d][1].count > 0]
        if not self._eval_datasets:
            raise ValueError(f"data.path: no held-out documents in {', '.join(str(d.folder) for d in self.datasets)} "
                             "(a directory with one document, or --eval-fraction 0): nothing to evaluate on")
        self._eval_weights = integer_weights([self.weights[d] for d in self._eval_datasets])
        self._perms = {}

    # -------------------------------------------------------------------------------------------- pickling

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_perms"] = {}
        return state

    # -------------------------------------------------------------------------------------------- indexing

    def num_sequences(self, split: int = 0) -> list[int]:
        """Sequences per dataset (one epoch of each) of a split."""
        return [plans[split].count for plans in self.plans]

    def padding_fraction(self, split: int = 0) -> float:
        """Padding tokens / all tokens over one epoch of every dataset (0 without packing)."""
        if not self.packed:
            return 0.0
        pad = sum(p[split].padding_fraction * p[split].count for p in self.plans)
        return pad / max(1, sum(p[split].count for p in self.plans))

    def _perm(self, d: int, epoch: int) -> np.ndarray:
        key = (d, epoch)
        perm = self._perms.get(key)
        if perm is None:
            perm = np.random.default_rng([self.seed, d, epoch]).permutation(self.plans[d][0].count)
            try:  # evict the oldest; tolerant of another thread (data.workers=0 prefetch) doing the same
                while len(self._perms) >= _PERM_CACHE:
                    self._perms.pop(next(iter(self._perms)), None)
            except (RuntimeError, StopIteration):
                pass
            self._perms[key] = perm
        return perm

    def locate(self, step: int, row: int, split: int = 0) -> tuple[int, int]:
        """(dataset, sequence index in its plan) of one row of one step."""
        g = int(step) * self.batch_size + int(row)
        if split == 0:
            d, k = interleave(g, self.weights)
            epoch, pos = divmod(k, self.plans[d][0].count)
            return d, int(self._perm(d, epoch)[pos])
        i, k = interleave(g, self._eval_weights)
        d = self._eval_datasets[i]
        return d, k % self.plans[d][1].count

    def _window_spans(self, d: int, seq: int, split: int):
        """(document, lo, hi) unit spans of window `seq`."""
        plan = self.plans[d][split]
        size = plan.size
        pos, need = (seq * self.seq_len) % size, self.seq_len + 1
        while need:
            j = int(np.searchsorted(plan.cum, pos, side="right")) - 1
            lo = pos - int(plan.cum[j])
            take = min(need, int(plan.cum[j + 1]) - int(plan.cum[j]) - lo)
            yield int(plan.docs[j]), lo, lo + take
            need -= take
            pos = (pos + take) % size

    def _pieces(self, d: int, seq: int, split: int):
        plan = self.plans[d][split]
        for p in range(int(plan.row_start[seq]), int(plan.row_start[seq + 1])):
            off = int(plan.piece_off[p])
            yield int(plan.piece_doc[p]), off, off + int(plan.piece_len[p])

    # -------------------------------------------------------------------------------------------- batches

    def sequence(self, d: int, seq: int, split: int = 0):
        """(tokens [seq_len], labels [seq_len], segment_ids [seq_len] or None) of one sequence of dataset d."""
        ds, L = self.datasets[d], self.seq_len
        if not self.packed:
            w = np.concatenate([ds.unit(doc, lo, hi) for doc, lo, hi in self._window_spans(d, seq, split)])
            return w[:-1], w[1:], None
        tokens = np.zeros(L, np.int32)
        seg = np.zeros(L, np.int32)
        at = 0
        for i, (doc, lo, hi) in enumerate(self._pieces(d, seq, split), 1):
            tokens[at : at + hi - lo] = ds.unit(doc, lo, hi)
            seg[at : at + hi - lo] = i
            at += hi - lo
        labels = np.full(L, -1, np.int32)
        same = (seg[:-1] == seg[1:]) & (seg[:-1] > 0)
        labels[:-1] = np.where(same, tokens[1:], -1)
        return tokens, labels, seg

    def batch(self, step: int, rows, split: int = 0) -> Batch:
        """Rows `rows` of the global batch of step `step` (split 1: held-out documents). Pure in its arguments."""
        out = [self.sequence(*self.locate(step, r, split), split) for r in rows]
        tokens = np.stack([o[0] for o in out]).astype(np.int32)
        labels = np.stack([o[1] for o in out]).astype(np.int32)
        seg = np.stack([o[2] for o in out]).astype(np.int32) if self.packed else None
        return Batch(tokens, labels, None, seg)

    def documents_read(self, step: int, rows, split: int = 0) -> set[tuple[int, int]]:
        """{(dataset, document index)} that `batch(step, rows, split)` reads; from the plan, without reading data."""
        return {(d, doc) for d, doc, _, _ in self.spans_read(step, rows, split)}

    def spans_read(self, step: int, rows, split: int = 0) -> set[tuple[int, int, int, int]]:
        """{(dataset, document index, start, length)}: the token spans `batch(step, rows, split)` reads (a long
        document split over several rows appears once per piece); from the plan, without reading data."""
        out = set()
        for r in rows:
            d, seq = self.locate(step, r, split)
            spans = self._pieces(d, seq, split) if self.packed else self._window_spans(d, seq, split)
            out.update((d, int(doc), int(start), int(length)) for doc, start, length in spans)
        return out

    # -------------------------------------------------------------------------------------------- streaming

    def iterate(self, start_step: int = 0, rows=None, split: int = 0) -> BatchIterator:
        """Batches of steps start_step, start_step + 1, … (exactly `batch(step, rows, split)`), prepared ahead by
        grain: a background thread (data.workers=0) or data.workers processes, data.prefetch batches ahead each.
        Close the iterator (or use it as a context manager) to stop the workers."""
        grain = _grain()
        _close_at_exit()
        rows = tuple(range(self.batch_size)) if rows is None else tuple(int(r) for r in rows)
        ds = grain.MapDataset.range(int(start_step), _MAX_STEP).map(_StepBatch(self, rows, split))
        read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=self.prefetch)
        it = ds.to_iter_dataset(read)
        if self.workers > 0:
            _absl_flags_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                             per_worker_buffer_size=self.prefetch),
                                worker_init_fn=_exit_with_parent)
        return BatchIterator(iter(it))

    # -------------------------------------------------------------------------------------------- tokenizer

    def write_tokenizer(self, folder) -> pathlib.Path | None:
        """Copy the data's tokenizer.json into `folder` (a checkpoint directory: `jrt generate --tokenizer auto`
        and `jrt_jax.convert.load_tokenizer` find it there); None for the byte tokenizer, which has no file."""
        src = self.tokenizer_record.get("path")
        if src is None:
            return None
        dest = pathlib.Path(folder) / "tokenizer.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return dest


def _exit_with_parent(worker_index: int = 0, worker_count: int = 1) -> None:
    """In a grain worker: exit when the parent process is gone. grain's workers wait on their output queue
    until told to stop; after a kill -9 of the trainer nobody tells them, and they would live on as orphans."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="jrt-exit-with-parent", daemon=True).start()


class _StepBatch:
    """The grain map function: step -> TokenData.batch(step, rows, split) (picklable for worker processes)."""

    def __init__(self, data: TokenData, rows: tuple[int, ...], split: int):
        self.data, self.rows, self.split = data, rows, split

    def __call__(self, step: int) -> Batch:
        return self.data.batch(int(step), self.rows, self.split)


_OPEN: weakref.WeakSet = weakref.WeakSet()  # BatchIterators not closed yet


def _close_open_iterators() -> None:
    """At exit, before the interpreter tears modules down: grain iterators closed later by the garbage collector
    print "Exception ignored in __del__" tracebacks (their modules are gone by then)."""
    for it in list(_OPEN):
        try:
            it.close()
        except Exception:
            pass


@functools.cache
def _close_at_exit() -> None:
    """Register the hook once, after grain (and multiprocessing) registered theirs: atexit runs it first."""
    atexit.register(_close_open_iterators)


class BatchIterator:
    """An iterator of Batches over a grain iterator; `close()` (or leaving a `with` block) stops its workers.
    Iterators still open when the program exits are closed by an atexit hook."""

    def __init__(self, it):
        self._it = it
        _OPEN.add(self)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            raise StopIteration
        return next(self._it)

    def close(self) -> None:
        it, self._it = self._it, None
        _OPEN.discard(self)
        if it is not None:
            it.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


__all__ = ["BatchIterator", "PackPlan", "TokenData", "WindowPlan", "integer_weights", "interleave", "pack_plan",
           "window_plan"]
