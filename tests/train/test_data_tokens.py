"""`jrt prepare-data` and data.kind=tokens (`train.data.prepare`, `train.data.tokens.TokenData`).

Small text files in tmp_path with the byte tokenizer (no network): round trips, --jsonl, the held-out split,
atomic output, one-line CLI errors; packing invariants; batch(step, rows) purity and the row split between
processes; iterate() == batch() in a background thread and in a grain worker process, and the worker stopping;
mixture weights; pickling.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import multiprocessing
import os
import pathlib
import pickle
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from train.config import DataConfig
from train.data import make_task
from train.data.prepare import PrepareError, held_out, prepare, read_index
from train.data.tokens import TokenData, integer_weights, interleave

ROOT = pathlib.Path(__file__).resolve().parents[2]
EOS = 256  # ByteTokenizer's end of text


def _write_docs(folder: pathlib.Path, texts, prefix="doc") -> list[pathlib.Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        p = folder / f"{prefix}{i:03d}.txt"
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    return paths


def _random_texts(n, lo, hi, seed=0):
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "δέλτα", "eps", "zêta", "eta", "θ", "iota", "kappa"]
    out = []
    for _ in range(n):
        size = rng.randrange(lo, hi)
        text = ""
        while len(text.encode()) < size:
            text += rng.choice(words) + rng.choice([" ", " ", "\n"])
        out.append(text)
    return out


def _docs_of(folder) -> list[np.ndarray]:
    """Every stored document's tokens, in global order, read back from the shards."""
    folder = pathlib.Path(folder)
    index = read_index(folder)
    out = []
    for s in index["shards"]:
        tokens = np.fromfile(folder / s["file"], dtype=index["dtype"])
        offsets = np.load(folder / s["offsets"])
        assert offsets[0] == 0 and offsets[-1] == len(tokens) == s["tokens"] and len(offsets) == s["documents"] + 1
        out += [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return out


def _decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 documents of 20-400 bytes (some longer than seq_len 64, most shorter), 10 % held out."""
    root = tmp_path_factory.mktemp("corpus")
    texts = _random_texts(40, 20, 400)
    _write_docs(root / "src", texts)
    prepare([str(root / "src" / "*.txt")], root / "out", tokenizer="bytes", workers=1, eval_fraction=0.1)
    return root / "out", texts


def _cfg(path, **kw) -> DataConfig:
    base = dict(kind="tokens", path=tuple(str(p) for p in (path if isinstance(path, (list, tuple)) else [path])),
                seq_len=64, batch_size=8, seed=3)
    base.update(kw)
    return DataConfig(**base)


# ------------------------------------------------------------------------------------------------ prepare-data


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_round_trip_across_shards(tmp_path, workers):
    texts = _random_texts(12, 1, 300, seed=workers) + ["", "ünïcödé ✓ 𝄞"]
    _write_docs(tmp_path / "src", texts)
    index = prepare([str(tmp_path / "src" / "*.txt")], tmp_path / "out", tokenizer="bytes", workers=workers,
                    shard_tokens=500)
    docs = _docs_of(tmp_path / "out")
    assert [_decode(d) for d in docs] == texts  # sorted glob order, no EOS stored
    assert index == read_index(tmp_path / "out")
    assert index["documents"] == len(texts) and index["tokens"] == sum(len(t.encode()) for t in texts)
    assert len(index["shards"]) > 1 and all(s["tokens"] >= 500 for s in index["shards"][:-1])
    assert index["dtype"] == "uint16" and index["vocab_size"] == 258 and index["eos_id"] == EOS
    assert index["tokenizer"]["name"] == "bytes" and index["tokenizer"]["file"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temp directory left


def test_prepare_jsonl(tmp_path):
    rows = [{"text": "first document", "id": 1}, {"text": "zweites Dokument — ß", "id": 2}, {"text": "", "id": 3}]
    src = tmp_path / "a.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "from the second file"}) + "\n")
    index = prepare([str(src), str(tmp_path / "b.jsonl")], tmp_path / "out", tokenizer="bytes", jsonl_field="text",
                    workers=2)
    assert [_decode(d) for d in _docs_of(tmp_path / "out")] == [r["text"] for r in rows] + ["from the second file"]
    assert index["jsonl_field"] == "text" and index["documents"] == 4

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(PrepareError, match=r"bad\.jsonl:2: not valid JSON"):
        prepare([str(bad)], tmp_path / "o2", tokenizer="bytes", jsonl_field="text", workers=1)
    bad.write_text('{"text": "ok"}\n\n{"body": "no text field"}\n')
    with pytest.raises(PrepareError, match=r"bad\.jsonl:3: no field 'text'"):
        prepare([str(bad)], tmp_path / "o2", tokenizer="bytes", jsonl_field="text", workers=1)
    bad.write_text('{"text": 5}\n')
    with pytest.raises(PrepareError, match=r"bad\.jsonl:1: field 'text' is a int"):
        prepare([str(bad)], tmp_path / "o2", tokenizer="bytes", jsonl_field="text", workers=1)
    assert not (tmp_path / "o2").exists()


def test_held_out_split(corpus):
    out, texts = corpus
    index = read_index(out)
    eval_docs = np.load(out / "eval-documents.npy")
    assert index["eval"]["documents"] == len(eval_docs) == math.ceil(0.1 * len(texts))
    assert np.array_equal(eval_docs, held_out(len(texts), 0.1, 0))  # deterministic in the seed
    assert not np.array_equal(held_out(len(texts), 0.1, 1), eval_docs)
    assert len(held_out(2, 0.05, 0)) == 1 and len(held_out(1, 0.5, 0)) == 0 and len(held_out(100, 0.05, 0)) == 5
    for packing in (False, True):
        data = TokenData(_cfg(out, packing=packing))
        train_docs, held = data.datasets[0].split_docs
        assert np.array_equal(held, eval_docs) and not set(train_docs) & set(held)
        assert len(train_docs) + len(held) == len(texts)
        read_train = set().union(*(data.documents_read(s, range(8)) for s in range(40)))
        read_eval = set().union(*(data.documents_read(s, range(8), split=1) for s in range(10)))
        assert {doc for _, doc in read_train} <= set(train_docs.tolist())
        assert {doc for _, doc in read_eval} == set(eval_docs.tolist())


def test_atomic_output_and_refusal(tmp_path):
    _write_docs(tmp_path / "src", ["one", "two", "three"])
    (tmp_path / "zz.jsonl").write_text('{"text": "fine"}\nnot json\n')
    out = tmp_path / "out"
    # fails on the second file, after the first was tokenized: nothing is left behind
    with pytest.raises(PrepareError, match="not valid JSON"):
        prepare([str(tmp_path / "src" / "doc000.txt"), str(tmp_path / "zz.jsonl")], out, tokenizer="bytes",
                jsonl_field="text", workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "zz.jsonl"]

    out.mkdir()  # an empty directory may be used
    prepare([str(tmp_path / "src" / "*.txt")], out, tokenizer="bytes", workers=1)
    first = (out / "index.json").read_text()
    with pytest.raises(PrepareError, match="not empty; pass --overwrite"):
        prepare([str(tmp_path / "src" / "doc000.txt")], out, tokenizer="bytes", workers=1)
    assert (out / "index.json").read_text() == first
    prepare([str(tmp_path / "src" / "doc000.txt")], out, tokenizer="bytes", workers=1, overwrite=True)
    assert read_index(out)["documents"] == 1
    other = tmp_path / "src"  # --overwrite replaces only an earlier prepare-data output
    with pytest.raises(PrepareError, match="not a `jrt prepare-data` directory"):
        prepare([str(tmp_path / "src" / "doc000.txt")], other, tokenizer="bytes", workers=1, overwrite=True)
    assert sorted(p.name for p in other.iterdir()) == ["doc000.txt", "doc001.txt", "doc002.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src", "zz.jsonl"]


def test_temp_directories_of_killed_runs_are_removed_and_unwritable_output_named(tmp_path, monkeypatch):
    _write_docs(tmp_path / "src", ["one", "two"])
    src = [str(tmp_path / "src" / "*.txt")]
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = finished.pid
    hour_ago = time.time() - 3600
    planted = {
        f".out.{dead}-0123abcd.tmp": False,  # what a run killed by kill -9 left: removed
        f".out.{os.getpid()}-89abcdef.tmp": True,  # a live run's: kept
        ".out.tmp-00ff00ff": False,  # the older naming (no pid), unchanged for an hour: removed
        ".out.tmp-11ff11ff": True,  # the older naming, recent: kept
        f".other.{dead}-0123abcd.tmp": True,  # another output's
        f".out.old.{dead}-4567abcd.tmp": True,  # a replaced output moved aside: kept while "out" does not exist
    }
    for name in planted:
        (tmp_path / name).mkdir()
        (tmp_path / name / "shard-00000.tokens").write_bytes(b"\0" * 100)
    os.utime(tmp_path / ".out.tmp-00ff00ff" / "shard-00000.tokens", (hour_ago, hour_ago))
    os.utime(tmp_path / ".out.tmp-00ff00ff", (hour_ago, hour_ago))
    logged = []
    prepare(src, tmp_path / "out", tokenizer="bytes", workers=1, log=logged.append)
    kept = sorted(name for name, keep in planted.items() if keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["out", "src"])
    assert logged[0].startswith("removed 2 temporary directories left by killed runs")
    prepare(src, tmp_path / "out", tokenizer="bytes", workers=1, overwrite=True)
    assert not (tmp_path / f".out.old.{dead}-4567abcd.tmp").exists()  # "out" exists: the aside copy is stale

    (tmp_path / "locked").mkdir()

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", denied)
    out = tmp_path / "locked" / "out"
    with pytest.raises(PrepareError, match=rf"^--output {out}: cannot create a directory in {out.parent} "
                                           r"\(permission denied\)$"):
        prepare(src, out, tokenizer="bytes", workers=1)


def _prepare_cli(args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "train.cli", "prepare-data"] + args, env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from train import cli

    _write_docs(tmp_path, ["some text"])
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(20_000))  # binary, not UTF-8
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (tmp_path / "nul.txt").write_bytes(b"text\0with a NUL")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "nul.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "a\0b"}\n')
    cases = [
        (["--tokenizer", "bytes", "--output", "o", "missing.txt"], "no such file: missing.txt"),
        (["--tokenizer", "bytes", "--output", "o", "nothing/*.txt"], "no file matches"),
        (["--tokenizer", "nonsense", "--output", "o", "doc000.txt"], "unknown tokenizer 'nonsense'"),
        (["--tokenizer", "bytes", "--output", "full", "doc000.txt"], "not empty; pass --overwrite"),
        (["--tokenizer", "bytes", "--jsonl", "text", "--output", "o", "bad.jsonl"], "bad.jsonl:2: not valid JSON"),
        (["--tokenizer", "bytes", "--jsonl", "text", "--output", "o", "empty.jsonl"], "holds no documents"),
        (["--tokenizer", "bytes", "--output", "o", "doc000.txt", "random.bin"], "random.bin: not UTF-8 text ("),
        (["--tokenizer", "bytes", "--output", "o", "latin1.txt"], "latin1.txt: not UTF-8 text (invalid continuation "
                                                                  "byte at byte offset 3)"),
        (["--tokenizer", "bytes", "--output", "o", "nul.txt"], "nul.txt: a NUL byte at byte offset 4"),
        (["--tokenizer", "bytes", "--jsonl", "text", "--output", "o", "latin1.jsonl"],
         "latin1.jsonl:2: not UTF-8 text (invalid continuation byte at byte offset 28)"),
        (["--tokenizer", "bytes", "--jsonl", "text", "--output", "o", "nul.jsonl"],
         "nul.jsonl:2: a NUL byte at byte offset 26"),
        (["--tokenizer", "bytes", "--output", "doc000.txt/o", "doc000.txt"],
         "--output doc000.txt/o: doc000.txt is not a directory"),
    ]
    monkeypatch.chdir(tmp_path)
    for i, (args, message) in enumerate(cases):
        if i in (0, 4):  # the real command in a subprocess (each imports jax via train.data: 2-5 s)
            r = _prepare_cli(args, tmp_path)
            code, err = r.returncode, r.stderr
        else:  # the same code path in-process
            code, err = cli.main(["prepare-data"] + args), capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (args, err)
        assert lines[0].startswith("jrt prepare-data: error: ") and message in lines[0], (args, lines)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))  # nothing written, no temp left
    assert cli.main(["prepare-data", "--tokenizer", "bytes", "--output", "o", "doc000.txt"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "1 documents, 9 tokens" in captured.out
    assert read_index(tmp_path / "o")["documents"] == 1


def _tokenizer_json(path: pathlib.Path, words) -> pathlib.Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "</s>"] + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def test_tokenizer_file_recorded_and_mixed_tokenizers_refused(tmp_path):
    from train.data.prepare import load_tokenizer

    tj = _tokenizer_json(tmp_path / "tokenizer.json", ["red", "green", "blue"])
    _write_docs(tmp_path / "src", ["red green", "blue blue red", "green"])
    index = prepare([str(tmp_path / "src" / "*.txt")], tmp_path / "words", tokenizer=str(tmp_path), workers=1)
    assert index["tokenizer"]["name"] == "tokenizer.json" and index["eos_id"] == 1 and index["vocab_size"] == 5
    assert (tmp_path / "words" / "tokenizer.json").read_bytes() == tj.read_bytes()
    tok = load_tokenizer(tmp_path / "words")
    assert [tok.decode(d) for d in _docs_of(tmp_path / "words")] == ["red green", "blue blue red", "green"]
    prepare([str(tmp_path / "src" / "*.txt")], tmp_path / "bytes", tokenizer="bytes", workers=1, eval_fraction=0.4)

    data = TokenData(_cfg(tmp_path / "words", seq_len=2, batch_size=2))
    assert data.vocab_needed == 5 and data.tokenizer_record["path"].endswith("words/tokenizer.json")
    written = data.write_tokenizer(tmp_path / "ckpt")
    assert written.read_bytes() == tj.read_bytes()
    with pytest.raises(ValueError, match="must share one tokenizer"):
        TokenData(_cfg([tmp_path / "words", tmp_path / "bytes"], seq_len=2, batch_size=2))


def test_gpt2_tokenizer_record_reloads(tmp_path):
    from jrt_jax import tokenizer as T

    try:
        gpt2 = T.gpt2_tokenizer()
    except RuntimeError as e:
        pytest.skip(f"PyPI not reachable: {e}")
    from train.data.prepare import load_tokenizer

    text = "Hello world,  spaces\n\nand <|endoftext|> ünïcode."
    _write_docs(tmp_path / "src", [text])
    index = prepare([str(tmp_path / "src" / "doc000.txt")], tmp_path / "out", tokenizer="gpt2", workers=1)
    assert index["tokenizer"]["name"] == "gpt2" and index["vocab_size"] == 50257 and index["eos_id"] == 50256
    tok = load_tokenizer(tmp_path / "out")  # the tokenizer.json written from the GPT-2 BPE
    assert tok.eos_id == 50256 and tok.vocab_size == 50257
    assert tok.encode(text) == gpt2.encode(text) == _docs_of(tmp_path / "out")[0].tolist()


# ------------------------------------------------------------------------------------------------ TokenData


def test_make_task_and_vocab_check(corpus):
    out, _ = corpus
    task = make_task(_cfg(out))
    assert isinstance(task, TokenData) and task.vocab_needed == 258 and task.enc_len is None and not task.packed

    @dataclasses.dataclass
    class Small:
        vocab_size: int = 200

    with pytest.raises(ValueError, match="vocab_size is 200"):
        make_task(_cfg(out), Small())


def test_grain_missing_is_one_line(corpus, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match=r"needs grain: pip install 'jrt-jax\[data\]'"):
        TokenData(_cfg(corpus[0]))


def test_unpacked_windows_are_the_document_stream(corpus):
    out, texts = corpus
    data = TokenData(_cfg(out))
    train_docs = data.datasets[0].split_docs[0]
    stream = []
    for i in train_docs:
        stream += list(texts[i].encode()) + [EOS]
    L = data.seq_len
    n = data.num_sequences()[0]
    assert n == (len(stream) - 1) // L
    for i in range(n):
        tokens, labels, seg = data.sequence(0, i)
        assert seg is None and tokens.tolist() == stream[i * L : i * L + L]
        assert labels.tolist() == stream[i * L + 1 : i * L + L + 1]
    b = data.batch(0, range(8))
    assert b.segment_ids is None and b.enc_len is None and b.tokens.dtype == np.int32 and b.tokens.shape == (8, L)


def _segments(data, d=0, split=0):
    """{document: [piece tokens, ...]} over every row of the plan, checking each row's invariants."""
    pieces = {}
    L = data.seq_len
    pad = 0
    plan = data.plans[d][split]
    for seq in range(plan.count):
        tokens, labels, seg = data.sequence(d, seq, split)
        ids = [int(s) for s in np.unique(seg) if s > 0]
        assert ids == list(range(1, len(ids) + 1))  # numbered 1, 2, 3 … in order, padding at the end
        nonpad = int((seg > 0).sum())
        assert (seg[:nonpad] > 0).all() and (seg[nonpad:] == 0).all() and (tokens[nonpad:] == 0).all()
        assert (labels[nonpad:] == -1).all()
        pad += L - nonpad
        row_pieces = list(data._pieces(d, seq, split))
        assert len(row_pieces) == len(ids)
        for s, (doc, lo, hi) in zip(ids, row_pieces):
            at = np.flatnonzero(seg == s)
            assert (np.diff(at) == 1).all() and len(at) == hi - lo
            piece = tokens[at]
            # labels: the next token of the same segment, -1 at its last token
            assert labels[at[:-1]].tolist() == piece[1:].tolist() and labels[at[-1]] == -1
            pieces.setdefault(doc, []).append((lo, piece.tolist()))
    return {doc: [p for _, p in sorted(parts)] for doc, parts in pieces.items()}, pad / (plan.count * L)


def test_packing_invariants(corpus):
    out, texts = corpus
    data = TokenData(_cfg(out, packing=True))
    L = data.seq_len
    pieces, padding = _segments(data)
    train_docs = data.datasets[0].split_docs[0]
    assert sorted(pieces) == sorted(train_docs.tolist())  # every training document, and only those
    for doc, parts in pieces.items():
        unit = list(texts[doc].encode()) + [EOS]
        assert sum(parts, []) == unit  # each token exactly once, pieces in order
        assert len(parts) == math.ceil(len(unit) / L)  # only documents longer than a row are split ...
        assert all(len(p) == L for p in parts[:-1])  # ... into seq_len pieces
    assert any(len(p) > 1 for p in pieces.values()) and any(len(p) == 1 for p in pieces.values())
    assert padding == pytest.approx(data.padding_fraction()) and 0 < padding < 0.5
    # one epoch of the global order visits every row exactly once; the next epoch in a new order
    n = data.num_sequences()[0]
    first = [data.locate(g // 8, g % 8)[1] for g in range(n)]
    second = [data.locate(g // 8, g % 8)[1] for g in range(n, 2 * n)]
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
    # the held-out split is packed the same way from the held-out documents
    held, _ = _segments(data, split=1)
    assert sorted(held) == sorted(data.datasets[0].split_docs[1].tolist())
    b = data.batch(5, range(8))
    assert b.segment_ids.shape == b.tokens.shape == b.labels.shape == (8, L) and b.segment_ids.dtype == np.int32


def test_first_fit_plan():
    from train.data.tokens import pack_plan

    # units (document + EOS) 9 9 5 3 40 in this order, seq_len 16: first-fit puts 5 and 3 into the two half-full
    # rows; 40 is cut into 16 16 8, the 8 opening a new row (the open rows have 2 and 4 left)
    plan = pack_plan(np.arange(5), np.array([8, 8, 4, 2, 39]), 16)
    rows = [list(zip(plan.piece_doc[a:b].tolist(), plan.piece_len[a:b].tolist()))
            for a, b in zip(plan.row_start[:-1], plan.row_start[1:])]
    assert rows == [[(0, 9), (2, 5)], [(1, 9), (3, 3)], [(4, 16)], [(4, 16)], [(4, 8)]]
    assert plan.piece_off[plan.piece_doc == 4].tolist() == [0, 16, 32]
    nf = pack_plan(np.arange(5), np.array([8, 8, 4, 2, 39]), 16, window=1)  # next-fit: in order ...
    assert nf.piece_doc.tolist() == [0, 1, 2, 3, 4, 4, 4] and nf.row_start.tolist() == [0, 1, 3, 5, 6, 7]
    assert nf.piece_off[nf.piece_doc == 4].tolist() == [32, 0, 16]  # ... but full pieces leave the open row open
    # a short-document mix: a partition of every token into rows of <= seq_len, far less padding than next-fit
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 120, 2000)
    plans = [pack_plan(np.arange(2000), lengths, 128, np.random.default_rng(1), window=w) for w in (1, 32)]
    for plan in plans:
        fill = np.add.reduceat(plan.piece_len, plan.row_start[:-1])
        assert (fill <= 128).all() and fill.sum() == lengths.sum() + 2000
        assert sorted(plan.piece_doc.tolist()) == list(range(2000))
    assert plans[1].padding_fraction < plans[0].padding_fraction / 2
    again = pack_plan(np.arange(2000), lengths, 128, np.random.default_rng(1))
    assert np.array_equal(again.piece_doc, plans[1].piece_doc) and np.array_equal(again.row_start, plans[1].row_start)


@pytest.mark.parametrize("packing", [False, True])
def test_batch_is_pure_and_rows_split_between_processes(corpus, packing):
    out, _ = corpus
    data = TokenData(_cfg(out, packing=packing))
    other = TokenData(_cfg(out, packing=packing))  # "another process": same config, its own state
    for step in (0, 7, 123):
        full = data.batch(step, range(8))
        again = data.batch(step, range(8))
        a, b = other.batch(step, [0, 1, 2, 3]), data.batch(step, [4, 5, 6, 7])
        for name in ("tokens", "labels", "segment_ids"):
            x = getattr(full, name)
            if x is None:
                assert getattr(a, name) is None
                continue
            assert np.array_equal(x, getattr(again, name))
            assert np.array_equal(x, np.concatenate([getattr(a, name), getattr(b, name)]))
        reads = other.documents_read(step, [0, 1, 2, 3]), data.documents_read(step, [4, 5, 6, 7])
        assert reads[0] | reads[1] == data.documents_read(step, range(8))
    assert not np.array_equal(data.batch(1, range(8)).tokens, data.batch(2, range(8)).tokens)
    assert not np.array_equal(TokenData(_cfg(out, packing=packing, seed=4)).batch(1, range(8)).tokens,
                              data.batch(1, range(8)).tokens)


def test_documents_read_disjoint_between_processes(tmp_path):
    """Documents shorter than a row are each in one row: the two processes' rows read disjoint documents."""
    _write_docs(tmp_path / "src", _random_texts(60, 5, 50, seed=7))
    prepare([str(tmp_path / "src" / "*.txt")], tmp_path / "out", tokenizer="bytes", workers=1)
    data = TokenData(_cfg(tmp_path / "out", packing=True))
    for step in range(6):
        a, b = data.documents_read(step, [0, 1, 2, 3]), data.documents_read(step, [4, 5, 6, 7])
        assert a and b and not a & b
        got = set()
        batch = data.batch(step, [0, 1, 2, 3])
        for row in range(4):  # and the record names exactly what the rows hold
            rows_docs = {doc for doc, _, _ in data._pieces(0, data.locate(step, row)[1], 0)}
            assert int(batch.segment_ids[row].max()) == len(rows_docs)
            got |= {(0, doc) for doc in rows_docs}
        assert got == a


def test_mixture_weights(tmp_path):
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        _write_docs(tmp_path / name, _random_texts(20, 50, 200, seed=seed))
        prepare([str(tmp_path / name / "*.txt")], tmp_path / f"out-{name}", tokenizer="bytes", workers=1)
    paths = [tmp_path / "out-a", tmp_path / "out-b", tmp_path / "out-c"]
    for weights in ((3.0, 1.0, 1.0), (0.2, 0.5, 0.3)):
        data = TokenData(_cfg(paths, weights=weights, batch_size=16))
        counts = np.zeros(3)
        for step in range(250):
            for r in range(16):
                counts[data.locate(step, r)[0]] += 1
        share = np.asarray(weights) / sum(weights)
        assert np.allclose(counts / counts.sum(), share, atol=0.005), (weights, counts)
        docs = {d for step in range(20) for d, _ in data.documents_read(step, range(16))}
        assert docs == {0, 1, 2}
    # the interleave: exact and stateless
    w = integer_weights([0.25, 0.5, 0.25])
    assert w == (1, 2, 1)
    seen = [interleave(g, w) for g in range(4000)]
    for d in range(3):
        keys = [k for dd, k in seen if dd == d]
        assert keys == list(range(len(keys)))  # each dataset's sequences in order, none skipped
        counts = np.cumsum([dd == d for dd, _ in seen])
        assert np.abs(counts - np.arange(1, 4001) * w[d] / 4).max() <= d + 1


def test_pickling(corpus):
    out, _ = corpus
    for packing in (False, True):
        data = TokenData(_cfg(out, packing=packing))
        before = data.batch(9, range(8))  # opens the memory maps
        assert data.datasets[0]._maps
        blob = pickle.dumps(data)
        assert b"memmap" not in blob
        clone = pickle.loads(blob)
        assert not clone.datasets[0]._maps
        after = clone.batch(9, range(8))
        assert np.array_equal(before.tokens, after.tokens) and np.array_equal(before.labels, after.labels)


def _same(a, b):
    return all(np.array_equal(getattr(a, n), getattr(b, n)) if getattr(a, n) is not None else getattr(b, n) is None
               for n in ("tokens", "labels", "segment_ids")) and a.enc_len == b.enc_len


@pytest.mark.parametrize("workers", [0, 1])
def test_iterate_equals_batch(corpus, workers):
    out, _ = corpus
    data = TokenData(_cfg(out, packing=True, workers=workers, prefetch=2))
    rows = [4, 5, 6, 7]
    with data.iterate(11, rows) as it:
        for step in range(11, 19):
            assert _same(next(it), data.batch(step, rows))
    with pytest.raises(StopIteration):
        next(it)  # closed


def _grain_children():
    return [p for p in multiprocessing.active_children() if p.name.startswith("grain")]


@pytest.mark.slow
def test_worker_iterator_stops_when_closed_or_deleted(corpus):
    out, _ = corpus
    data = TokenData(_cfg(out, workers=1))
    it = data.iterate(0)
    assert _same(next(it), data.batch(0, range(8)))
    assert _grain_children()
    it.close()
    assert not _grain_children()
    it = data.iterate(3)
    assert _same(next(it), data.batch(3, range(8)))
    del it
    gc.collect()
    deadline = time.time() + 30
    while _grain_children() and time.time() < deadline:
        time.sleep(0.2)
    assert not _grain_children()


@pytest.mark.slow
def test_worker_iterator_does_not_hang_at_exit(corpus, tmp_path):
    """A process that leaves a worker iterator open (mid-stream, buffers full) still exits promptly and quietly."""
    out, _ = corpus
    script = textwrap.dedent(f"""
        from train.config import DataConfig
        from train.data.tokens import TokenData
        data = TokenData(DataConfig(kind="tokens", path=({str(out)!r},), seq_len=64, batch_size=8, workers=2))
        it = data.iterate(0)
        next(it)
        print("ok", flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.time()
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-2000:]
    assert time.time() - start < 60


def test_iterate_equals_batch_two_workers_unpacked(corpus):
    out, _ = corpus
    data = TokenData(_cfg(out, workers=2, prefetch=1))
    with data.iterate(0, range(8)) as it:
        for step in range(10):
            assert _same(next(it), data.batch(step, range(8)))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\tZ" not in next(line for line in f if line.startswith("State:"))
    except (OSError, StopIteration):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_after_kill_9_of_the_trainer(corpus, tmp_path):
    out, _ = corpus
    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, time
        from train.config import DataConfig
        from train.data.tokens import TokenData
        if __name__ == "__main__":
            data = TokenData(DataConfig(kind="tokens", path=({str(out)!r},), seq_len=64, batch_size=8, workers=1))
            it = data.iterate(0)
            next(it)
            print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
            time.sleep(300)
    """))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        children = [int(p) for p in proc.stdout.readline().split()]
        assert children and all(_alive(p) for p in children)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 20
    while any(_alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in children)


def test_unusable_directories_are_one_line_errors(tmp_path):
    _write_docs(tmp_path / "src", ["first document", "second document", "third"])
    prepare([str(tmp_path / "src" / "*.txt")], tmp_path / "noeval", tokenizer="bytes", workers=1, eval_fraction=0)
    with pytest.raises(ValueError, match="no held-out documents"):
        TokenData(_cfg(tmp_path / "noeval", seq_len=4))
    with pytest.raises(ValueError, match="too few for one sequence of data.seq_len=4096"):
        TokenData(_cfg(tmp_path / "noeval", seq_len=4096))
    with pytest.raises(ValueError, match="not a `jrt prepare-data` directory"):
        TokenData(_cfg(tmp_path / "src", seq_len=4))
    prepare([str(tmp_path / "src" / "*.txt")], tmp_path / "cut", tokenizer="bytes", workers=1)
    shard = tmp_path / "cut" / "shard-00000.tokens"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"shard-00000.tokens should hold 34 uint16 tokens \(68 bytes\) but is 66"):
        TokenData(_cfg(tmp_path / "cut", seq_len=4))


@pytest.mark.slow
def test_prepare_with_a_gguf_files_own_tokenizer(tmp_path, monkeypatch):
    """--tokenizer model.gguf tokenizes with the file's tokenizer (SmolLM2's), recorded as a tokenizer.json."""
    from jrt_jax.convert import gguf_tokenizer, smollm2_path
    from train.data.prepare import prepare

    try:
        gguf = smollm2_path()
    except RuntimeError as e:  # no access to PyPI
        pytest.skip(f"SmolLM2 wheel not available: {e}")
    monkeypatch.setenv("JRT_JAX_CACHE", str(tmp_path / "cache"))  # the tokenizer.json is written fresh
    text = "To be, or not to be, that is the question. <|im_end|> isn't text here."
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text("Second document.")
    index = prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "out", tokenizer=str(gguf),
                    workers=1)
    shard = index["shards"][0]
    ids = np.fromfile(tmp_path / "out" / shard["file"], dtype=index["dtype"])
    offsets = np.load(tmp_path / "out" / shard["offsets"])
    tok = gguf_tokenizer(gguf)
    assert list(ids[offsets[0]:offsets[1]]) == tok.encode(text)
    assert index["vocab_size"] == 49152 and index["eos_id"] == tok.eos_id
    assert (tmp_path / "out" / "tokenizer.json").is_file()
