"""Context parallelism on simulated devices: per-device memory and collective bytes of `jrt_jax.parallel`.

    python benchmarks/context_parallel.py                  # T = 16k … 256k, sequence axis = 1, 2, 4, 8
    python benchmarks/context_parallel.py --quick          # T = 8k, 16k: a small run (a few minutes on 2 cores)
    python benchmarks/context_parallel.py --seq-lens 16384 65536 --shards 1 8 --ops la pla --json out.json
    python benchmarks/context_parallel.py --train-budget-mib 512 --shards 1 8   # longest T jrt-tiny trains on

For every op, sequence length T and sequence-axis size n, one training step of the op alone — the gradient of
sum(op(...)) with respect to all its inputs, jitted over a mesh of the first n of 8 simulated CPU devices
(B = 1, inputs sharded on T) — is lowered and compiled, never run. Two tables come out:

1. per-device memory from `compiled.memory_analysis()`: arguments (the input shards) and temporaries (XLA's
   buffers for the step: activations, residuals saved for the backward, gradients), MiB; "/n=1" is the total
   relative to one device. Activation memory falls ~1/n with the sequence axis for every op except the Llama
   attention's gathered K/V, which is T-sized on every device by design (see `jrt_jax.parallel.attention`).
2. bytes moved by collectives, per device, from the compiled HLO text: the operand sizes of every
   all-gather / all-reduce / reduce-scatter / collective-permute (async "-start" forms included), KiB.
   For linear attention and PLA they are the per-shard state summaries: independent of T.

3. (`--train-budget-mib`) the longest sequence a whole model (default jrt-tiny) trains on — one step,
   forward + backward of the next-token loss, as `jrt train mesh.sequence=n` runs it — within a per-device
   memory budget, for each sequence-axis size: doubling then bisection over T (multiples of 512), each
   candidate compiled and measured with `memory_analysis()`.

Shapes are those of the released JRT-RNN 360M layers: H = 16 heads, F = 16 features (Φ = 153), D = 64, SWA
window 128, BaseConv on 2·d = 2048 channels with K = 3, Llama attention with 16 heads of 64.
Run as a script: it sets XLA_FLAGS to 8 host devices (and LLVM optimisation level 0, which leaves the HLO and
its memory analysis unchanged) before JAX starts, unless XLA_FLAGS already asks for a device count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # 8 host devices. Optimisation level 0 only changes LLVM code generation (a third less compile time); the
    # HLO, its buffer assignment (memory_analysis) and its collectives are the same.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                               " --xla_backend_optimization_level=0").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from jrt_jax import parallel  # noqa: E402

OPS = ("la", "pla", "swa", "conv", "attn")
OP_NAMES = {"la": "linear attention", "pla": "PLA (M = T/4)", "swa": "sliding window", "conv": "BaseConv conv",
            "attn": "Llama attention"}
H, F, D, WINDOW, CHANNELS, KSIZE = 16, 16, 64, 128, 2048, 3

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8}
_COLLECTIVE = re.compile(
    r"=\s*(\(.*?\)|\S+)\s+(all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)(-start)?\(")
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        if dtype in _BYTES:
            total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return total


def _group_size(line: str) -> int:
    m = _GROUPS_LIST.search(line)
    if m:
        return len([x for x in m.group(1).split(",") if x])
    m = _GROUPS_IOTA.search(line)
    return int(m.group(2)) if m else 1


def collective_bytes(hlo_text: str) -> dict:
    """{kind: operand bytes} summed over the collective instructions of a compiled HLO module's text, per
    device (an SPMD module is what every device runs). The text names operands without their shapes, so the
    operand size is derived from the result's: equal for all-reduce / collective-permute / all-to-all, the
    result over the group size for all-gather, times it for reduce-scatter. Async pairs count once, at
    "-start" (whose result tuple also holds the operand: its first element is used). Collectives over a group
    of one device (sequence = 1) move nothing and are not counted."""
    out: dict = {}
    for line in hlo_text.splitlines():
        m = _COLLECTIVE.search(line)
        if not m:
            continue
        result, kind, start = m.group(1), m.group(2), m.group(3)
        group = _group_size(line)
        if kind != "collective-permute" and group == 1:
            continue  # a group of one device moves nothing (sequence = 1)
        if start and result.startswith("("):
            size = _shape_bytes(_SHAPE.search(result).group(0))  # (operand, result, …) of an async start
        else:
            size = _shape_bytes(result)
            if kind == "all-gather":
                size //= group
            elif kind == "reduce-scatter":
                size *= group
        out[kind] = out.get(kind, 0) + size
    return out


def _inputs(op: str, t: int):
    """(parallel op, global argument shapes, keyword arguments) of one op at sequence length T."""
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    if op == "la":
        return parallel.linear_attention, [f32(1, t, H, F), f32(1, t, H, F), f32(1, t, H, D)], {}
    if op == "pla":  # the encoder slot-aligned (full length, first T/4 slots real), as a model under CP has it
        return parallel.prefix_linear_attention, [f32(1, t, H, F), f32(1, t, H, F), f32(1, t, H, D),
                                                  f32(1, t, H, F), f32(1, t, H, D)], {"enc_len": t // 4}
    if op == "swa":
        return parallel.sliding_window_attention, [f32(1, t, H, D)] * 3, {"window": WINDOW}
    if op == "conv":
        return parallel.causal_conv1d, [f32(1, t, CHANNELS), f32(KSIZE, CHANNELS)], {}
    if op == "attn":
        return parallel.causal_attention, [f32(1, t, H, D)] * 3, {}
    raise ValueError(f"unknown op {op!r}; choose from {OPS}")


def compile_step(op: str, t: int, n: int, devices):
    """Compile grad(sum(op)) over a 1-D mesh of n devices; returns (memory_analysis, collective bytes, s)."""
    fn, shapes, kw = _inputs(op, t)
    mesh = Mesh(np.array(devices[:n]), ("sequence",))
    sharded = parallel.context_parallel(fn, mesh, "sequence", jit=False)
    rep = op == "conv"  # the conv kernel is replicated

    def loss(*args):
        kwargs = dict(kw)
        if "enc_len" in kwargs:
            kwargs["enc_mask"] = jnp.arange(t)[None, :] < kwargs.pop("enc_len")
        return jnp.sum(sharded(*args, **kwargs))

    step = jax.grad(loss, argnums=tuple(range(len(shapes))))
    spec = lambda i, s: P() if (rep and i == 1) else P(None, "sequence")
    shardings = tuple(NamedSharding(mesh, spec(i, s)) for i, s in enumerate(shapes))
    start = time.perf_counter()
    compiled = jax.jit(step, in_shardings=shardings, out_shardings=shardings).lower(*shapes).compile()
    return compiled.memory_analysis(), collective_bytes(compiled.as_text()), time.perf_counter() - start


def _mib(x):
    return x / 2**20


# ------------------------------------------------------------------------------ a whole model's training step


def train_step_memory(preset: str, t: int, n: int, devices, *, batch: int = 1) -> dict:
    """Per-device memory of one training step (forward + backward: the gradient of the mean next-token loss
    w.r.t. every parameter) of the model `preset` on [batch, t] tokens split on T over n devices
    (`jrt_jax.nn.sequence_parallel`, as `jrt train mesh.sequence=n` runs it), from `memory_analysis()` of the
    compiled step (lowered on abstract arrays: nothing is allocated or run). Parameters are replicated; fp32.

    Returns {"arg", "out", "temp", "total"} in bytes; total = arguments + outputs + temporaries (parameters,
    their gradients and the step's buffers: an upper bound of the step's peak on one device).
    """
    from flax import nnx

    from jrt_jax import models
    from jrt_jax.nn.constraints import activation_sharding
    from jrt_jax.nn.sequence_parallel import sequence_parallel

    config = models.config_from_preset(preset)
    graphdef, params = nnx.split(models.abstract_model(config))
    mesh = Mesh(np.array(devices[:n]), ("sequence",))
    rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "sequence"))
    act = NamedSharding(mesh, P(None, "sequence", None))

    def loss(params, tokens, labels):
        with activation_sharding(act), sequence_parallel(mesh, "sequence"):
            logits = nnx.merge(graphdef, params)(tokens)
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
        return jnp.mean(logz - picked)

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), params)
    ids = jax.ShapeDtypeStruct((batch, t), jnp.int32, sharding=split)
    step = jax.jit(jax.grad(loss), out_shardings=jax.tree.map(lambda _: rep, params))
    mem = step.lower(abstract, ids, ids).compile().memory_analysis()
    arg, out, temp = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes
    return {"arg": arg, "out": out, "temp": temp, "total": arg + out + temp}


def longest_trainable(preset: str, budget: int, n: int, devices, *, granule: int = 512, start: int = 4096,
                      log=None) -> tuple[int, dict]:
    """The longest T (a multiple of `granule`) whose training step fits `budget` bytes per device on n
    sequence shards: doubling from `start`, then bisection. Returns (T, {T: total bytes} of every compile)."""
    seen: dict = {}

    def fits(t):
        if t not in seen:
            seen[t] = train_step_memory(preset, t, n, devices)["total"]
            if log:
                log(f"  {preset} sequence={n} T={t:7d}: {_mib(seen[t]):8.1f} MiB")
        return seen[t] <= budget

    lo, hi = 0, start
    while fits(hi):
        lo, hi = hi, hi * 2
    if lo == 0:  # even `start` does not fit: bisect below it
        lo = granule if fits(granule) else 0
        if lo == 0:
            return 0, seen
    while hi - lo > granule:
        mid = (lo + hi) // 2 // granule * granule
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, seen


def train_budget_table(preset: str, budget_mib: float, shards, devices, *, granule: int = 512) -> list[dict]:
    """Print and return, per sequence-axis size, the longest T (a multiple of `granule`) that `preset` trains
    on within the budget."""
    budget = int(budget_mib * 2**20)
    rows = []
    for n in shards:
        t, seen = longest_trainable(preset, budget, n, devices, granule=granule,
                                    log=lambda m: print(m, file=sys.stderr, flush=True))
        rows.append({"preset": preset, "n": n, "budget_mib": budget_mib, "longest_T": t,
                     "total_mib": round(_mib(seen.get(t, 0)), 1),
                     "tried": {str(k): round(_mib(v), 1) for k, v in sorted(seen.items())}})
    print(f"\nTable 3 — longest sequence {preset} trains on (one step: forward + backward, B = 1, fp32) within "
          f"{budget_mib:g} MiB per device (arguments + outputs + temporaries from memory_analysis; T a multiple "
          f"of {granule})")
    print(f"{'sequence':>8s} {'longest T':>10s} {'MiB at T':>9s} {'x sequence=' + str(shards[0]):>14s}")
    for r in rows:
        ratio = r["longest_T"] / max(rows[0]["longest_T"], 1)
        print(f"{r['n']:>8d} {r['longest_T']:>10d} {r['total_mib']:>9.1f} {ratio:>14.2f}")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[16384, 32768, 65536, 131072, 262144])
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--quick", action="store_true", help="T = 8k and 16k only")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--train-budget-mib", type=float,
                   help="instead of the op tables: the longest T that --train-model trains on within this many MiB "
                        "per device, for each --shards (e.g. --train-budget-mib 512 --shards 1 8)")
    p.add_argument("--train-model", default="jrt-tiny", help="model preset for --train-budget-mib")
    args = p.parse_args(argv)
    if args.quick:
        args.seq_lens = [8192, 16384]
    devices = jax.devices()
    if len(devices) < max(args.shards):
        raise SystemExit(f"need {max(args.shards)} devices, have {len(devices)} (set XLA_FLAGS="
                         f"--xla_force_host_platform_device_count=8 before starting Python)")
    if args.train_budget_mib is not None:
        rows = train_budget_table(args.train_model, args.train_budget_mib, args.shards, devices)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return
    print(f"jax {jax.__version__}, {len(devices)} {jax.default_backend()} devices; one training step per op "
          f"(grad of sum(op) w.r.t. its inputs), B=1, H={H}, F={F}, D={D}, fp32; compiled, not run", flush=True)

    rows = []
    for op in args.ops:
        for t in args.seq_lens:
            for n in args.shards:
                mem, coll, secs = compile_step(op, t, n, devices)
                rows.append(dict(op=op, T=t, n=n, arg=mem.argument_size_in_bytes, temp=mem.temp_size_in_bytes,
                                 out=mem.output_size_in_bytes, collectives=coll, compile_s=round(secs, 1)))
                print(f"  compiled {op:5s} T={t:7d} n={n}: {secs:5.1f} s", file=sys.stderr, flush=True)

    by = {(r["op"], r["T"], r["n"]): r for r in rows}
    shards = args.shards
    print("\nTable 1 — per-device memory of one step, MiB: arguments + temporaries = total (total / total at n=1)")
    head = f"{'op':18s} {'T':>7s} " + " ".join(f"{'sequence=' + str(n):>30s}" for n in shards)
    print(head)
    for op in args.ops:
        for t in args.seq_lens:
            base = by[(op, t, shards[0])]
            base_total = base["arg"] + base["temp"]
            cells = []
            for n in shards:
                r = by[(op, t, n)]
                total = r["arg"] + r["temp"]
                cells.append(f"{_mib(r['arg']):7.1f} + {_mib(r['temp']):8.1f} = {_mib(total):8.1f} "
                             f"({total / base_total:4.2f})")
            print(f"{OP_NAMES[op]:18s} {t:7d} " + " ".join(f"{c:>30s}" for c in cells))

    print("\nTable 2 — bytes moved by collectives per device and step (operand sizes in the compiled HLO), KiB")
    kinds = ("all-gather", "collective-permute", "all-reduce", "reduce-scatter", "all-to-all")
    short = {"all-gather": "gather", "collective-permute": "permute", "all-reduce": "reduce",
             "reduce-scatter": "rs", "all-to-all": "a2a"}
    print(f"{'op':18s} {'T':>7s} " + " ".join(f"{'sequence=' + str(n):>34s}" for n in shards))
    for op in args.ops:
        for t in args.seq_lens:
            cells = []
            for n in shards:
                c = by[(op, t, n)]["collectives"]
                parts = [f"{short[k]} {c[k] / 1024:.0f}" for k in kinds if c.get(k)]
                cells.append(", ".join(parts) if parts else "—")
            print(f"{OP_NAMES[op]:18s} {t:7d} " + " ".join(f"{c:>34s}" for c in cells))
    print("(gather = all-gather, reduce = all-reduce, rs = reduce-scatter (operand = n × result), "
          "permute = collective-permute, a2a = all-to-all)")

    for op in args.ops:
        n_max = shards[-1]
        lo, hi = by[(op, args.seq_lens[0], n_max)], by[(op, args.seq_lens[-1], n_max)]
        tot = lambda r: r["arg"] + r["temp"]
        ones = by[(op, args.seq_lens[-1], shards[0])]
        print(f"{OP_NAMES[op]:18s} T={args.seq_lens[-1]}: memory sequence={n_max} / sequence={shards[0]} = "
              f"{tot(hi) / tot(ones):.3f} (1/{n_max} = {1 / n_max:.3f}); collective bytes at sequence={n_max}: "
              f"T={args.seq_lens[0]} {sum(lo['collectives'].values())} B → T={args.seq_lens[-1]} "
              f"{sum(hi['collectives'].values())} B")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
