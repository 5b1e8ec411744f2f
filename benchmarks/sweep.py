"""`jrt sweep` vs `jrt train`: replica-steps per second of the same grid of small recall runs, both ways, in one run.

    python benchmarks/sweep.py                     # MQAR, recall-based F=8, 4 seeds, 300 steps each
    python benchmarks/sweep.py --steps 60 --steps-per-scan 20 --json out.json

The grid is what the recall studies train: MQAR (8 pairs, 4 asked, 64 keys + 64 values, T 32, batch 64, lr 3e-3,
50 warmup steps, cosine) on recall-based with F = 8 (quadratic "reference" linear attention), one run per seed.
`jrt train` trains them one after another (`train.trainer.Trainer`, its numpy host data by default, `--train-data
device` for the on-device generator); `jrt sweep` trains them as one program, K steps per scan (`train.sweep`, its
default sweep.batching: a loop over the replicas on CPU, vmap elsewhere). Two figures each:

  steady      replica-steps/s once compiled: jrt train's last logging window (its per-step loop: host batch, dispatch,
              step), jrt sweep's scans after the first;
  end to end  replicas × steps over the wall time from building the trainer / sweep to its final evaluation
              (compiles and evaluation included).

The ratio sweep / train is the speed-up of sweeping; the goal is ≥ 3× steady. Measured on 2 CPU cores (300 steps):
63.3 vs 48.3 replica-steps/s steady (1.3×), 40.6 vs 24.3 end to end (1.7×): on CPU this model's step is
compute-bound (~1 GFLOP, ~15 ms), so removing the per-step host work (~5 ms) is all a sweep can gain there.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

from train.config import load_config
from train.sweep import Sweep
from train.trainer import Trainer

# implementation=reference: at T = 32 the quadratic form is the faster one on CPU (63 vs 39 replica-steps/s, 4
# replicas vmapped). (The chunked "xla" path's one-chunk jitted forward at batch >= 64 was miscompiled by XLA:CPU
# before the zero-state fix in jrt_jax/ops/linear_attention/xla.py; either path is right now.)
TASK = ["model.preset=recall-based", "model.overrides={feature_dim: 8, implementation: reference}", "data.kind=mqar",
        "data.num_pairs=8", "data.num_queries=4", "data.num_keys=64", "data.num_values=64", "data.seq_len=32",
        "data.batch_size=64", "data.eval_examples=256", "optim.lr=3e-3", "optim.warmup_steps=50", "logging.dir=null",
        "checkpoint.dir=null", "logging.progress=false"]


def _quiet(*args, **kwargs):
    pass


def measure_train(seeds: list[int], steps: int, on_device: bool) -> dict:
    """jrt train, one run per seed: steady replica-steps/s (mean over the runs' last logging windows) and end to end."""
    every = max(1, steps // 2)
    rates, start = [], time.perf_counter()
    for seed in seeds:
        cfg = load_config(None, TASK + [f"steps={steps}", f"seed={seed}", f"logging.every={every}",
                                        f"data.on_device={str(on_device).lower()}"])
        trainer = Trainer(cfg, log=_quiet)
        try:
            summary = trainer.run()
        finally:
            trainer.close()
        rates.append(summary["tokens_per_s"] / (cfg.data.batch_size * cfg.data.seq_len))
    seconds = time.perf_counter() - start
    steady = len(rates) / sum(1 / r for r in rates)  # the harmonic mean: runs one after another
    return {"steady": steady, "end_to_end": len(seeds) * steps / seconds, "seconds": seconds}


def measure_sweep(seeds: list[int], steps: int, steps_per_scan: int) -> dict:
    cfg = load_config(None, TASK + [f"steps={steps}", f"sweep.seeds={json.dumps(seeds)}",
                                    f"sweep.steps_per_scan={steps_per_scan}", f"logging.every={steps}"])
    start = time.perf_counter()
    runner = Sweep(cfg, log=_quiet)
    try:
        summary = runner.run()
    finally:
        runner.close()
    seconds = time.perf_counter() - start
    steady = summary.get("replica_steps_per_s", len(seeds) * steps / summary["seconds"])
    best = summary["best"] or {}
    return {"steady": steady, "end_to_end": len(seeds) * steps / seconds, "seconds": seconds,
            "best_eval_accuracy": best.get("eval_accuracy")}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python benchmarks/sweep.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per replica (default 300)")
    p.add_argument("--seeds", type=int, default=4, help="replicas: seeds 0 … N-1 (default 4)")
    p.add_argument("--steps-per-scan", type=int, default=50, help="K of jrt sweep (default 50)")
    p.add_argument("--train-data", choices=("host", "device"), default="host",
                   help="jrt train's data: numpy on the host (its default) or the on-device generator")
    p.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.steps < 2 or args.seeds < 1 or args.steps_per_scan < 1:
        p.error("--steps must be >= 2, --seeds and --steps-per-scan >= 1")
    seeds = list(range(args.seeds))
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}); MQAR, recall-based F=8, "
          f"{args.seeds} seeds x {args.steps} steps", flush=True)
    swept = measure_sweep(seeds, args.steps, args.steps_per_scan)
    print(f"jrt sweep (one program, K={args.steps_per_scan}): {swept['steady']:9.1f} replica-steps/s steady, "
          f"{swept['end_to_end']:9.1f} end to end ({swept['seconds']:.1f} s)", flush=True)
    trained = measure_train(seeds, args.steps, args.train_data == "device")
    print(f"jrt train ({args.seeds} runs, {args.train_data} data):  {trained['steady']:9.1f} replica-steps/s steady, "
          f"{trained['end_to_end']:9.1f} end to end ({trained['seconds']:.1f} s)", flush=True)
    ratio = {k: swept[k] / trained[k] for k in ("steady", "end_to_end")}
    print(f"ratio sweep / train: {ratio['steady']:.1f}x steady, {ratio['end_to_end']:.1f}x end to end "
          f"(goal >= 3x steady: {'met' if ratio['steady'] >= 3 else 'NOT met'})")
    result = {"platform": device.platform, "device_kind": device.device_kind, "seeds": args.seeds,
              "steps": args.steps, "steps_per_scan": args.steps_per_scan, "train_data": args.train_data,
              "sweep": swept, "train": trained, "ratio": ratio}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
