"""Training throughput: tokens/s, MFU and memory per device of a JRT-RNN vs a Llama of the same width.

    python benchmarks/training.py                          # jrt-tiny vs llama-jrt-tiny, T = 2048, on CPU
    python benchmarks/training.py --seq-len 4096 --batch 2 --steps 5

Both models train on the same Shakespeare text (byte tokenizer) with the trainer's own jitted step. MFU is
XLA's count of the step's FLOPs over the wall time and the device peak (on CPU: an fp32 matmul measured in
this process). Memory per device is XLA's buffer accounting of the compiled step (arguments + outputs +
temporaries), divided by the number of devices.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from train.config import load_config
from train.metrics import peak_flops_per_device
from train.trainer import Trainer


def measure(preset: str, objective: str, *, seq_len: int, batch: int, steps: int, overrides=()) -> dict:
    """Median step time of `steps` steps after one warm-up step, with the figures of the module docstring.

    overrides: more `key=value` config overrides (e.g. "optim.compute_dtype=bfloat16"). The step is compiled
    once, ahead of time: the FLOP count and the timed calls use that one executable (a 26-layer model compiles
    for tens of seconds; `Trainer.flops_per_step` and the first jitted call would each compile it again).
    """
    cfg = load_config(None, [
        f"model.preset={preset}", f"objective.kind={objective}", "data.kind=text", "data.text_files=[shakespeare]",
        "data.tokenizer=bytes", f"data.seq_len={seq_len}", f"data.batch_size={batch}", "logging.dir=null",
        "checkpoint.dir=null", f"steps={steps + 1}", *overrides,
    ])
    trainer = Trainer(cfg, log=lambda *a, **k: None)
    tokens, labels, segments = trainer._global_batch(0)
    compiled = trainer.train_step.lower(trainer.state, trainer.rest, tokens, labels, segments, np.int32(0)).compile()
    mem = compiled.memory_analysis()
    mem_bytes = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")  # what Trainer.flops_per_step reads
    times = []
    for step in range(steps + 1):
        tokens, labels, segments = trainer._global_batch(step)
        start = time.perf_counter()
        trainer.state, metrics = compiled(trainer.state, trainer.rest, tokens, labels, segments, np.int32(step))
        jax.block_until_ready(metrics["loss"])
        if step:  # the first call warms up (allocations, autotuning)
            times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    peak, source = peak_flops_per_device()
    from jrt_jax.models import count_params

    return dict(model=preset, params=count_params(trainer.model_config), tokens_per_s=batch * seq_len / sec,
                step_s=sec, mfu=flops / sec / (peak * jax.device_count()), gflops_per_step=flops / 1e9,
                mem_per_device_mib=mem_bytes / jax.device_count() / 2**20, peak_source=source,
                loss=float(metrics["loss"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--models", nargs="+", default=["jrt-tiny:jrt", "llama-jrt-tiny:ntp"],
                   help="preset:objective pairs")
    args = p.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, "
          f"T={args.seq_len} B={args.batch}, median of {args.steps} steps after compilation")
    print(f"{'model':<18}{'params':>11}{'tokens/s':>11}{'s/step':>9}{'GFLOP/step':>12}{'MFU':>8}{'MiB/device':>12}")
    rows = []
    for spec in args.models:
        preset, objective = spec.split(":")
        r = measure(preset, objective, seq_len=args.seq_len, batch=args.batch, steps=args.steps)
        rows.append(r)
        print(f"{r['model']:<18}{r['params']:>11,}{r['tokens_per_s']:>11.0f}{r['step_s']:>9.3f}"
              f"{r['gflops_per_step']:>12.1f}{r['mfu']:>8.1%}{r['mem_per_device_mib']:>12.1f}", flush=True)
    print(f"(MFU peak: {rows[0]['peak_source']})")
    return rows


if __name__ == "__main__":
    main()
