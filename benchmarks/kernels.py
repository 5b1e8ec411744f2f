"""Kernel benchmark in the setup of the JRT paper: B=16, H=16, F=16, D=64, bf16, T ∈ {2k … 32k}.

    python benchmarks/kernels.py                 # on a GPU / TPU: the full table and kernels.png
    python benchmarks/kernels.py --cpu-sanity    # on CPU: a small interpret-mode subset (what CI can run)

Rows: PLA with M = T/2 over T tokens, JRT-Prompt (causal linear attention over 2T tokens: the prompt read twice),
Based (causal linear attention over T) — each on the Pallas kernel and on the xla path; on a GPU where jax-triton
imports also on each GPU kernel called directly, "[kernel gpu]" (Pallas-Triton) and "[kernel triton]" (Triton
through jax-triton, what "pallas" runs there) — and
`jax.nn.dot_product_attention(implementation="cudnn", is_causal=True)` over T (the FlashAttention role; "xla"
on a TPU). Prints ms (median of --repeats after a warm-up), TFLOP/s (the compact-feature algorithm's FLOPs,
see `jrt_jax.benchmarking.linear_attention_flops`; attention counts the causal half), GB/s (compulsory traffic:
inputs read once, output written once) and speed-ups over attention, and writes a PNG plot (matplotlib).
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp

import pallas_kernels
from jrt_jax import benchmarking as bm
from jrt_jax import ops
from pallas_kernels.linear_attention import api as kernel_api


def _bytes(*shapes_dtypes) -> int:
    return sum(int(jnp.prod(jnp.array(s))) * jnp.dtype(d).itemsize for s, d in shapes_dtypes)


def _kernel_fn(backend, pla):
    """PLA (encoder state, then the causal pass from it) or causal linear attention on one kernel backend."""
    prefill = functools.partial(pallas_kernels.linear_attention_prefill, backend=backend)

    def causal(q, k, v):
        return prefill(q, k, v)[0]

    def prefix(q, k, v, k_enc, v_enc):
        _, enc, _ = prefill(k_enc, k_enc, v_enc, emit_output=False)
        return prefill(q, k, v, initial_state=enc)[0]

    return prefix if pla else causal


def run(seq_lens, *, batch, heads, dtype, repeats, impls, attention_impl, kernel_backends=(), log=print):
    """`impls`: `jrt_jax.ops` implementations; `kernel_backends`: `pallas_kernels` backends timed directly."""
    b, h, f, d = batch, heads, 16, 64
    rows = []
    for t in seq_lens:
        keys = jax.random.split(jax.random.PRNGKey(t), 6)
        rnd = lambda kk, s: jax.random.normal(kk, s, dtype)
        m = t // 2
        q, k = rnd(keys[0], (b, 2 * t, h, f)), rnd(keys[1], (b, 2 * t, h, f))
        v = rnd(keys[2], (b, 2 * t, h, d))
        k_enc, v_enc = rnd(keys[3], (b, m, h, f)), rnd(keys[4], (b, m, h, d))
        cases = {
            "PLA M=T/2": (ops.prefix_linear_attention, (q[:, :t], k[:, :t], v[:, :t], k_enc, v_enc), t, m),
            "JRT-Prompt (LA over 2T)": (ops.linear_attention, (q, k, v), 2 * t, 0),
            "Based (LA over T)": (ops.linear_attention, (q[:, :t], k[:, :t], v[:, :t]), t, 0),
        }
        for name, (fn, args, length, enc) in cases.items():
            variants = [(impl, functools.partial(fn, implementation=impl)) for impl in impls]
            variants += [(f"kernel {kb}", _kernel_fn(kb, enc > 0)) for kb in kernel_backends]
            for label, variant in variants:
                sec = bm.median_time(jax.jit(variant), *args, repeats=repeats)
                flops = bm.linear_attention_flops(b, h, length, f, d, 64, enc)
                moved = _bytes(*[(a.shape, a.dtype) for a in args], ((b, length, h, d), dtype))
                rows.append(dict(method=f"{name} [{label}]", seq_len=t, ms=sec * 1e3, tflops=flops / sec / 1e12,
                                 gbs=moved / sec / 1e9))
                log(_fmt(rows[-1]))
        qa = rnd(keys[5], (b, t, h, d))
        att = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation=attention_impl))
        try:
            sec = bm.median_time(att, qa, qa, qa, repeats=repeats)
            rows.append(dict(method=f"attention [{attention_impl or 'default'}]", seq_len=t, ms=sec * 1e3,
                             tflops=bm.attention_flops(b, h, t, d) / 2 / sec / 1e12,
                             gbs=_bytes(*[((b, t, h, d), dtype)] * 4) / sec / 1e9))
        except Exception as exc:  # e.g. out of memory, or cudnn unavailable for this shape
            rows.append(dict(method=f"attention [{attention_impl or 'default'}]", seq_len=t, ms=None, tflops=None,
                             gbs=None, note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
        log(_fmt(rows[-1]))
    return rows


def _fmt(r):
    if r.get("ms") is None:
        return f"{r['method']:<40}{r['seq_len']:>7}  {r.get('note', '')}"
    return f"{r['method']:<40}{r['seq_len']:>7}{r['ms']:>11.3f}{r['tflops']:>10.2f}{r['gbs']:>10.1f}"


def summarise(rows, log=print):
    att = {r["seq_len"]: r["ms"] for r in rows if r["method"].startswith("attention") and r.get("ms")}
    for r in rows:
        if not r["method"].startswith("attention") and r.get("ms") and r["seq_len"] in att:
            r["speedup_vs_attention"] = att[r["seq_len"]] / r["ms"]
    for name in sorted({r["method"] for r in rows if "speedup_vs_attention" in r}):
        log(f"{name:<40} speed-up over attention: " + ", ".join(
            f"T={r['seq_len']}: {r['speedup_vs_attention']:.1f}x" for r in rows if r["method"] == name
            and "speedup_vs_attention" in r))


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed; no plot written (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in sorted({r["method"] for r in rows}):
        pts = [(r["seq_len"], r["ms"]) for r in rows if r["method"] == name and r.get("ms")]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("ms")
    ax.set_title(f"prefill on {jax.devices()[0].device_kind}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-sanity", action="store_true", help="small interpret-mode subset for CPU")
    p.add_argument("--seq-lens", type=int, nargs="+")
    p.add_argument("--batch", type=int)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--plot", default="kernels.png")
    p.add_argument("--json")
    args = p.parse_args(argv)
    backend = jax.default_backend()
    kernel_backends = []
    if args.cpu_sanity or backend == "cpu":
        seq_lens, batch, heads, dtype = args.seq_lens or [256, 512], args.batch or 1, min(args.heads, 2), jnp.float32
        impls, attention_impl = ["pallas", "xla"], None
        print("CPU: Pallas kernels in interpret mode (correctness, not speed), fp32")
    else:
        seq_lens, batch, heads, dtype = args.seq_lens or [2048, 4096, 8192, 16384, 32768], args.batch or 16, args.heads, jnp.bfloat16
        impls = ["pallas", "xla"]
        attention_impl = "cudnn" if backend in ("gpu", "cuda") else "xla"
        if backend in ("gpu", "cuda") and kernel_api.jax_triton_available():
            kernel_backends = ["gpu", "triton"]  # "pallas" is the Triton kernel here; time both GPU kernels
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, B={batch} H={heads} F=16 D=64 {jnp.dtype(dtype).name}")
    print(f"{'method':<40}{'T':>7}{'ms':>11}{'TFLOP/s':>10}{'GB/s':>10}")
    rows = run(seq_lens, batch=batch, heads=heads, dtype=dtype, repeats=args.repeats, impls=impls,
               attention_impl=attention_impl, kernel_backends=kernel_backends)
    summarise(rows)
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
