"""Data pipeline figures: `jrt prepare-data` throughput, the storage format, packing, and the grain loader.

    python benchmarks/data.py              # the Shakespeare plays, gpt2 + bytes; prints four tables
    python benchmarks/data.py --quick      # 10 plays, fewer reads and batches (what CI can run)
    python benchmarks/data.py --trainer    # also the trainer's tokens/s on the same shapes (compiles a model)

1. prepare-data: tokens/s of the Shakespeare plays with the gpt2 tokenizer for --workers 1, 2, 4.
2. Format: random whole-document reads/s from the flat memory-mapped shards (what prepare-data writes) and from
   ArrayRecord files with one record per document (group_size 1, i.e. random access; uncompressed and with
   ArrayRecord's default compression), on the gpt2 plays and on 20 000 synthetic documents of ~300 tokens.
3. Packing: the padding fraction of `TokenData`'s plan (first-fit over the last 32 open rows) next to next-fit
   (in order) and first-fit over all rows, on the same shuffled pieces of the plays and of synthetic length
   mixes, and the time to build a plan of many documents.
4. Loader: tokens/s of `TokenData.iterate` for data.workers 0 (background thread), 1, 2, 4 at batch 32 × 256
   (jrt-micro's shapes; byte-tokenized plays), packed and not, after a warm-up that includes starting the
   workers; "direct" is `TokenData.batch` called in the loop without prefetch. With --trainer, the trainer's own
   tokens/s (jrt-micro, data.kind=tokens, the same shapes) for comparison: the loader keeps up when its tokens/s
   is well above the trainer's.

Figures only, no pass / fail. The machine's core count bounds the worker rows (workers beyond the free cores
cannot help).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import tempfile
import time

import numpy as np

from train.config import DataConfig
from train.data.prepare import prepare
from train.data.tokens import PACK_WINDOW, TokenData, pack_plan


def _plays(quick: bool) -> list[str]:
    from jrt_jax.datasets import shakespeare_files

    files = [str(p) for p in shakespeare_files()]
    return files[:10] if quick else files


# ------------------------------------------------------------------------------------------------ 1. prepare


def bench_prepare(files, root: pathlib.Path, workers_list, log=print) -> dict:
    mb = sum(os.path.getsize(f) for f in files) / 1e6
    log(f"\n1. prepare-data, gpt2 tokenizer, {len(files)} plays ({mb:.1f} MB), {os.cpu_count()} CPUs")
    log(f"{'workers':>8}{'tokens':>11}{'seconds':>9}{'tokens/s':>12}")
    out = {}
    for w in workers_list:
        start = time.perf_counter()
        index = prepare(files, root / f"gpt2-w{w}", tokenizer="gpt2", workers=w, overwrite=True)
        sec = time.perf_counter() - start
        out[w] = index["tokens"] / sec
        log(f"{w:>8}{index['tokens']:>11,}{sec:>9.2f}{out[w]:>12,.0f}")
    return out


# ------------------------------------------------------------------------------------------------ 2. format


def _flat(folder: pathlib.Path):
    import json

    index = json.loads((folder / "index.json").read_text())
    shard = index["shards"][0]
    tokens = np.memmap(folder / shard["file"], dtype=index["dtype"], mode="r")
    offsets = np.load(folder / shard["offsets"])
    return tokens, offsets


def _write_flat(folder: pathlib.Path, docs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(len(docs) + 1, np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    np.concatenate(docs).astype(np.uint16).tofile(folder / "shard.tokens")
    np.save(folder / "shard.offsets.npy", offsets)


def _write_arrayrecord(path: pathlib.Path, docs, options: str) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), options)
    for d in docs:
        writer.write(np.asarray(d, np.uint16).tobytes())
    writer.close()


def _reads_per_s(read, n_docs: int, reads: int, seed: int = 0) -> tuple[float, float]:
    """(documents/s, tokens/s) of `read(i)` over random document indices; the median of 3 passes."""
    order = np.random.default_rng(seed).integers(0, n_docs, reads)
    for i in order[:100]:  # warm the page cache and the reader
        read(int(i))
    rates = []
    for _ in range(3):
        tokens = 0
        start = time.perf_counter()
        for i in order:
            tokens += read(int(i)).size
        sec = time.perf_counter() - start
        rates.append((reads / sec, tokens / sec))
    return sorted(rates)[1]


def bench_format(gpt2_dir: pathlib.Path, root: pathlib.Path, reads: int, log=print) -> dict:
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    tokens, offsets = _flat(gpt2_dir)
    plays = [np.asarray(tokens[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    rng = np.random.default_rng(0)
    synthetic = [rng.integers(0, 50257, n).astype(np.uint16)
                 for n in np.clip(rng.lognormal(np.log(250), 0.6, 20_000), 1, 4000).astype(int)]
    _write_flat(root / "synthetic", synthetic)
    log(f"\n2. random whole-document reads ({reads} per pass, median of 3, page cache warm)")
    log(f"{'corpus':<28}{'format':<34}{'docs/s':>11}{'tokens/s':>14}")
    out = {}
    for name, docs, folder in (("gpt2 plays (%d docs)" % len(plays), plays, gpt2_dir),
                               ("synthetic (%d docs)" % len(synthetic), synthetic, root / "synthetic")):
        if folder is gpt2_dir:
            flat_tokens, flat_offsets = tokens, offsets
        else:
            flat_tokens = np.memmap(folder / "shard.tokens", dtype=np.uint16, mode="r")
            flat_offsets = np.load(folder / "shard.offsets.npy")
        fmt_reads = {"flat memmap (prepare-data)": lambda i: flat_tokens[flat_offsets[i]:flat_offsets[i + 1]]
                     .astype(np.int32)}
        for k, (options, label) in enumerate((("group_size:1,uncompressed", "ArrayRecord group 1, uncompressed"),
                                              ("group_size:1", "ArrayRecord group 1, default codec"))):
            path = root / f"{name.split()[0]}-{k}.array_record"
            _write_arrayrecord(path, docs, options)
            source = ArrayRecordDataSource([str(path)])
            fmt_reads[label] = lambda i, s=source: np.frombuffer(s[i], np.uint16).astype(np.int32)
        n_reads = reads if len(docs) > 100 else max(200, reads // 20)
        for label, read in fmt_reads.items():
            assert np.array_equal(read(len(docs) // 2), np.asarray(docs[len(docs) // 2], np.int32))
            docs_s, tok_s = _reads_per_s(read, len(docs), n_reads)
            out[(name, label)] = docs_s
            log(f"{name:<28}{label:<34}{docs_s:>11,.0f}{tok_s:>14,.0f}")
    return out


# ------------------------------------------------------------------------------------------------ 3. packing


def first_fit_padding(piece_len: np.ndarray, seq_len: int) -> float:
    """Padding of first-fit over all rows, same pieces in the same order (reference only; O(pieces × rows))."""
    free = np.zeros(0, np.int64)
    for n in piece_len:
        fits = np.flatnonzero(free >= n)
        if fits.size:
            free[fits[0]] -= n
        else:
            free = np.append(free, seq_len - n)
    return float(free.sum()) / (len(free) * seq_len)


def bench_packing(gpt2_dir: pathlib.Path, quick: bool, log=print) -> dict:
    _, offsets = _flat(gpt2_dir)
    plays = np.diff(offsets)
    rng = np.random.default_rng(1)
    n = 3000 if quick else 20_000
    mixes = [
        ("gpt2 plays", plays, 256), ("gpt2 plays", plays, 2048),
        ("lognormal median 300", np.clip(rng.lognormal(np.log(300), 1.0, n), 1, 50_000).astype(int), 2048),
        ("uniform 20-250", rng.integers(20, 250, n), 256),
        ("uniform L/2..L (worst)", rng.integers(128, 256, n), 256),
    ]
    log(f"\n3. packing padding fraction of the same shuffled pieces: next-fit (window 1), first-fit over the last "
        f"{PACK_WINDOW} open rows (used), first-fit over all rows")
    log(f"{'lengths':<26}{'docs':>7}{'seq_len':>8}{'rows':>8}{'next-fit':>10}{f'ff-{PACK_WINDOW}':>10}"
        f"{'ff-all':>10}")
    out = {}
    for name, lengths, L in mixes:
        nf = pack_plan(np.arange(len(lengths)), lengths, L, np.random.default_rng(0), window=1)
        used = pack_plan(np.arange(len(lengths)), lengths, L, np.random.default_rng(0))
        ff = first_fit_padding(nf.piece_len, L)
        out[(name, L)] = (nf.padding_fraction, used.padding_fraction, ff)
        log(f"{name:<26}{len(lengths):>7}{L:>8}{used.count:>8}{nf.padding_fraction:>10.2%}"
            f"{used.padding_fraction:>10.2%}{ff:>10.2%}")
    big = 100_000 if quick else 1_000_000
    lengths = np.clip(rng.lognormal(np.log(300), 1.0, big), 1, 50_000).astype(int)
    start = time.perf_counter()
    plan = pack_plan(np.arange(big), lengths, 2048, np.random.default_rng(0))
    sec = time.perf_counter() - start
    log(f"plan of {big:,} documents ({int(lengths.sum()):,} tokens, {plan.count:,} rows of 2048, "
        f"{plan.padding_fraction:.2%} padding): {sec:.2f} s")
    return out


# ------------------------------------------------------------------------------------------------ 4. loader


def bench_loader(bytes_dir: pathlib.Path, workers_list, *, batch: int, seq_len: int, batches: int, log=print):
    log(f"\n4. loader tokens/s, batch {batch} x seq {seq_len}, {batches} batches after 3 warm-up batches "
        f"({os.cpu_count()} CPUs)")
    log(f"{'packing':<9}{'workers':>9}{'tokens/s':>13}{'batches/s':>11}{'warm-up s':>11}")
    out = {}
    for packing in (False, True):
        cfg = DataConfig(kind="tokens", path=(str(bytes_dir),), seq_len=seq_len, batch_size=batch, packing=packing)
        data = TokenData(cfg)
        start = time.perf_counter()
        for step in range(batches):
            data.batch(step, range(batch))
        sec = time.perf_counter() - start
        out[(packing, "direct")] = batches * batch * seq_len / sec
        log(f"{str(packing):<9}{'direct':>9}{out[(packing, 'direct')]:>13,.0f}{batches / sec:>11.1f}{'':>11}")
        for w in workers_list:
            data = TokenData(dataclasses.replace(cfg, workers=w, prefetch=4))
            start = time.perf_counter()
            with data.iterate(0) as it:
                for _ in range(3):
                    next(it)
                warm = time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(batches):
                    next(it)
                sec = time.perf_counter() - start
            out[(packing, w)] = batches * batch * seq_len / sec
            log(f"{str(packing):<9}{w:>9}{out[(packing, w)]:>13,.0f}{batches / sec:>11.1f}{warm:>11.2f}")
    return out


def bench_trainer(bytes_dir: pathlib.Path, *, batch: int, seq_len: int, steps: int, log=print):
    """The trainer's tokens/s (jrt-micro on data.kind=tokens): the rate the loader must keep up with."""
    from train.config import load_config
    from train.trainer import Trainer

    rows = {}
    for packing in (False, True):
        cfg = load_config(None, [
            "model.preset=jrt-micro", "data.kind=tokens", f"data.path=[{bytes_dir}]", f"data.seq_len={seq_len}",
            f"data.batch_size={batch}", f"data.packing={str(packing).lower()}", "data.eval_examples=32",
            "logging.dir=null", "logging.progress=false", f"logging.every={steps // 2}", "checkpoint.dir=null",
            f"steps={steps}"])
        trainer = Trainer(cfg, log=lambda *a, **k: None)
        try:
            summary = trainer.run()  # tokens_per_s of the last logging window: after compilation
        finally:
            trainer.close()
        rows[packing] = summary["tokens_per_s"]
        log(f"{str(packing):<9}{'trainer':>9}{rows[packing]:>13,.0f}   (jrt-micro train step, data.kind=tokens)")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 plays, fewer reads / batches")
    p.add_argument("--prepare-workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 2, 4])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batches", type=int, default=None, help="timed loader batches (default 200, --quick 40)")
    p.add_argument("--reads", type=int, default=None, help="random reads per pass (default 20000, --quick 3000)")
    p.add_argument("--trainer", action="store_true", help="also time the trainer on the loader's shapes")
    p.add_argument("--trainer-steps", type=int, default=40)
    p.add_argument("--dir", help="keep the prepared directories here (default: a temporary directory)")
    args = p.parse_args(argv)
    batches = args.batches or (40 if args.quick else 200)
    reads = args.reads or (3000 if args.quick else 20_000)
    files = _plays(args.quick)
    with tempfile.TemporaryDirectory(prefix="jrt-data-bench-") as tmp:
        root = pathlib.Path(args.dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        results = {"prepare": bench_prepare(files, root, args.prepare_workers)}
        gpt2_dir = root / f"gpt2-w{args.prepare_workers[0]}"
        results["format"] = bench_format(gpt2_dir, root, reads)
        results["packing"] = bench_packing(gpt2_dir, args.quick)
        bytes_dir = root / "bytes"
        prepare(files, bytes_dir, tokenizer="bytes", workers=max(args.prepare_workers), overwrite=True)
        results["loader"] = bench_loader(bytes_dir, args.loader_workers, batch=args.batch, seq_len=args.seq_len,
                                         batches=batches)
        if args.trainer:
            results["trainer"] = bench_trainer(bytes_dir, batch=args.batch, seq_len=args.seq_len,
                                               steps=args.trainer_steps)
        else:
            print("(trainer tokens/s for comparison: rerun with --trainer)")
    return results


if __name__ == "__main__":
    main()
