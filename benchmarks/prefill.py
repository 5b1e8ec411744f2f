"""Prefill benchmark: PLA and causal linear attention (xla path) against softmax attention.

    python benchmarks/prefill.py                       # T = 1k … 64k, B=1, H=16, F=16, D=64, fp32
    python benchmarks/prefill.py --seq-lens 1024 8192 --json out.json

Prints the fp32 matmul ceiling measured in the same process, one table row per (method, T) — wall time
(median of --repeats after a warm-up; the linear rows are timed round-robin, one call of each per round, so
a slow phase of a shared machine does not land on a single row), peak memory (XLA buffer accounting),
achieved GFLOP/s (FLOPs the chunked path executes, see `benchmarking.linear_attention_flops`) — and a summary:
speed-up over attention, t(32k)/t(8k), memory growth and the fraction of the matmul ceiling reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform

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
    args = p.parse_args(argv)

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}")
    ceiling = bm.matmul_ceiling_gflops()
    print(f"fp32 matmul ceiling (4096³): {ceiling:.1f} GFLOP/s")
    print(f"B={args.batch} H={args.heads} F={args.feature_dim} D={args.head_dim} chunk={args.chunk_size} fp32")
    print(bm.TABLE_HEADER, flush=True)
    rows = bm.prefill_table(
        args.seq_lens, batch=args.batch, heads=args.heads, feature_dim=args.feature_dim, head_dim=args.head_dim,
        chunk_size=args.chunk_size, repeats=args.repeats, attention_time_budget_s=args.attention_budget_s,
        log=lambda line: print(line, flush=True),
    )
    print()
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
    main()
