"""Prefill benchmark: PLA and causal linear attention (xla path) against softmax attention.

    python benchmarks/prefill.py                       # T = 1k … 64k, B=1, H=16, F=16, D=64, fp32
    python benchmarks/prefill.py --seq-lens 1024 8192 --json out.json

Prints one table row per (method, T) — wall time (median of --repeats after a warm-up; the fp32 matmul
ceiling and the linear rows are timed round-robin, one call of each per round, so that a slow phase of a
shared machine lands neither on a single row nor between the ceiling and the rows divided by it), peak
memory (XLA buffer accounting), achieved GFLOP/s (FLOPs the chunked path executes, see `benchmarking.linear_attention_flops`) — and a summary:
speed-up over attention, t(32k)/t(8k), memory growth and the fraction of the matmul ceiling reached.

Run as a script on Linux, it re-executes itself with glibc's malloc on transparent huge pages (see
`benchmarking.huge_pages_environ`; all rows and the ceiling alike, printed on the `malloc:` line): XLA:CPU
maps every large buffer afresh, and on 4 KiB pages the page faults alone cost ~10 % of a long prefill.
`--4k-pages` keeps glibc's default. Other JAX CPU jobs with large buffers can gain the same way: export
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 before starting Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys

import jax

from jrt_jax import benchmarking as bm


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--feature-dim", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--attention-budget-s", type=float, default=120.0, help="skip attention lengths beyond this")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--4k-pages", dest="four_k_pages", action="store_true",
                   help="run as started: no re-execution with glibc's malloc on transparent huge pages")
    args = p.parse_args(argv)

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}")
    print(f"malloc: {bm.malloc_description(os.environ, bm.transparent_huge_pages_mode())}")
    print(f"B={args.batch} H={args.heads} F={args.feature_dim} D={args.head_dim} chunk={args.chunk_size} fp32; "
          f"first row: the fp32 matmul ceiling, timed round-robin with the linear rows")
    print(bm.TABLE_HEADER, flush=True)
    rows = bm.prefill_table(
        args.seq_lens, batch=args.batch, heads=args.heads, feature_dim=args.feature_dim, head_dim=args.head_dim,
        chunk_size=args.chunk_size, repeats=args.repeats, attention_time_budget_s=args.attention_budget_s,
        ceiling_n=4096, log=lambda line: print(line, flush=True),
    )
    ceiling = next(r.gflops for r in rows if r.method == bm.CEILING)
    print(f"\nfp32 matmul ceiling (4096³): {ceiling:.1f} GFLOP/s")
    for method in ("PLA (xla, M=T/2)", "causal LA (xla)"):
        mine = {r.seq_len: r for r in rows if r.method == method}
        sp = bm.speedups(rows, method)
        print(f"{method}:")
        if sp:
            print("  speed-up over attention: " + ", ".join(f"T={t}: {x:.1f}x" for t, x in sorted(sp.items())))
        if 8192 in mine and 32768 in mine:
            print(f"  t(32k)/t(8k) = {mine[32768].seconds / mine[8192].seconds:.2f}   "
                  f"mem(32k)/mem(8k) = {mine[32768].memory_bytes / mine[8192].memory_bytes:.2f}")
        for t in sorted(mine)[-2:]:
            print(f"  at T={t}: {mine[t].gflops:.1f} GFLOP/s = {100 * mine[t].gflops / ceiling:.0f}% of the matmul ceiling")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ceiling_gflops": ceiling, "rows": [dataclasses.asdict(r) for r in rows]}, fh, indent=1)


if __name__ == "__main__":
    if "--4k-pages" not in sys.argv and (env := bm.huge_pages_environ(os.environ, bm.transparent_huge_pages_mode())) is not None:
        os.execve(sys.executable, [sys.executable, *sys.argv], env)  # GLIBC_TUNABLES is read at start-up only
    main()
