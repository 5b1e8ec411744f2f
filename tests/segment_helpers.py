"""Packed-batch fixtures for the segment-id tests: random rows and a plain-Python reading of the semantic."""

from __future__ import annotations

import numpy as np


def random_segment_ids(seed: int, batch: int, seq: int, *, max_len: int = 12, hole_p: float = 0.1,
                       empty_row: bool = False) -> np.ndarray:
    """[batch, seq] int32 rows of random documents: leading / trailing padding, holes (0) inside documents,
    ids drawn from 1…3 (an id may come back later in the row: a new document), lengths 1…max_len.
    With `empty_row`, the last row is all padding."""
    rng = np.random.default_rng(seed)
    out = np.zeros((batch, seq), np.int32)
    for b in range(batch):
        pos = int(rng.integers(0, 4))  # leading pads
        prev = 0
        while pos < seq:
            n = int(rng.integers(1, max_len + 1))
            ident = int(rng.choice([i for i in (1, 2, 3) if i != prev]))
            for p in range(pos, min(pos + n, seq)):
                out[b, p] = 0 if (p > pos and rng.random() < hole_p) else ident
            prev = ident
            pos += n
            if rng.random() < 0.15:
                pos += int(rng.integers(1, 4))  # padding between documents
        if rng.random() < 0.5:
            out[b, seq - int(rng.integers(1, 4)):] = 0  # trailing pads
    if empty_row:
        out[-1] = 0
    return out


def python_document_ids(seg) -> tuple[np.ndarray, np.ndarray]:
    """(run, real) by walking each row: a document starts at a non-zero id that differs from the last non-zero
    id before it; pads take the number of the previous real token (0 when they lead)."""
    seg = np.asarray(seg)
    run = np.zeros(seg.shape, np.int32)
    for b in range(seg.shape[0]):
        last, n = None, -1
        for i, s in enumerate(seg[b]):
            if s != 0 and s != last:
                n += 1
            if s != 0:
                last = s
            run[b, i] = max(n, 0)
    return run, seg != 0


def documents(seg):
    """[(row, start, stop, mask)]: each document's span [start, stop) and which positions in it are real."""
    run, real = python_document_ids(seg)
    out = []
    for b in range(run.shape[0]):
        for d in np.unique(run[b][real[b]]):
            where = np.nonzero(real[b] & (run[b] == d))[0]
            start, stop = int(where[0]), int(where[-1]) + 1
            out.append((b, start, stop, real[b, start:stop] & (run[b, start:stop] == d)))
    return out


def assert_packed_equals_alone(packed, solo, docs, shape, what: str = "") -> None:
    """Each document's real positions in the packed output equal row n of `solo` (document n run alone, as
    `documents` lists them); every position outside a document is exactly 0."""
    from tests.helpers import assert_rel

    covered = np.zeros(shape, bool)
    for n, (b, start, stop, m) in enumerate(docs):
        assert_rel(packed[b, start:stop][m], solo[n, : stop - start][m], 1e-5, what)
        covered[b, start:stop] |= m
    assert np.all(packed[~covered] == 0)
