"""Prefill speed of PLA (JRT-RNN), JRT-Prompt and Based against softmax attention, time vs sequence length T.

Claim (JRT paper, §5 / Table 5, H100, batch 16, T = 32,768, Based-style kernels against FlashAttention-2):
JRT-RNN's prefill (prefix linear attention) has 19.2× the throughput of FA2; JRT-Prompt — a causal Based prefill of
the prompt read twice, length 2N — 11.9× FA2's prefill of length N; JRT-RNN takes 1.24× Based's prefill time.
(At batch 64 the paper gives 9.7× and 6.1×.) The shape of the claim: linear-time prefill overtakes quadratic
attention as T grows, even when the recurrent model reads the prompt twice.

Setup: `jrt_jax.benchmarking.prefill_table` (the code of benchmarks/prefill.py) on this machine: one layer's
mixer, batch 1, H = 16 heads, F = 16 raw features (Taylor map), head size D = 64, fp32, the chunked XLA path
(chunk 64) against `jax.nn.dot_product_attention(is_causal=True)`; wall time is the median of repeats after a
warm-up. PLA uses an encoder of M = T/2 tokens. JRT-Prompt at N is causal linear attention at 2N; attention at N.
Attention is skipped where XLA's buffers would not fit in memory (its T×T scores), so the largest common T is
where the ratios are read; the linear rows continue to longer T. Nothing here runs on a GPU: the GPU column says
"not measured" unless a GPU backend is present (then run benchmarks/kernels.py for the kernel figures).

Quick variant: T ∈ {128, 256}, H = 4, D = 32, 2 repeats — the same code path, seconds instead of minutes; its
ratios at such short T are dominated by dispatch overhead and are not a test of the claim.
"""

from __future__ import annotations

import dataclasses

from train.reproduce import common

NAME = "prefill-speed"
TITLE = "Prefill speed: PLA / JRT-Prompt / Based vs softmax attention"

PLA, LA, ATT = "PLA (xla, M=T/2)", "causal LA (xla)", "dot_product_attention"
PAPER = {"pla": 19.2, "jrt_prompt": 11.9, "pla_over_based": 1.24, "T": 32768, "batch": 16}


@dataclasses.dataclass(frozen=True)
class Sizes:
    seq_lens: tuple[int, ...]  # attention and PLA / Based lengths N
    heads: int
    head_dim: int
    feature_dim: int
    repeats: int
    linear_extra: tuple[int, ...] = ()  # longer T for the linear rows only (attention does not fit)


FULL = Sizes(seq_lens=(1024, 2048, 4096, 8192), heads=16, head_dim=64, feature_dim=16, repeats=3,
             linear_extra=(16384, 32768))
QUICK = Sizes(seq_lens=(128, 256), heads=4, head_dim=32, feature_dim=16, repeats=2)


def run(ctx: common.Context) -> common.Outcome:
    import jax

    from jrt_jax import benchmarking as bm

    sizes = QUICK if ctx.quick else FULL
    n_list = list(sizes.seq_lens)
    linear_lens = sorted(set(n_list) | {2 * n for n in n_list} | set(sizes.linear_extra))
    kw = dict(heads=sizes.heads, feature_dim=sizes.feature_dim, head_dim=sizes.head_dim, repeats=sizes.repeats,
              log=lambda line: ctx.log(line))
    ctx.log(f"linear rows at T = {linear_lens}; attention at T = {n_list}")
    ctx.log(bm.TABLE_HEADER)
    rows = bm.prefill_table(linear_lens, methods=("pla", "linear"), **kw)
    rows += bm.prefill_table(n_list, methods=("attention",), attention_time_budget_s=300.0, **kw)

    t = {(r.method, r.seq_len): r.seconds for r in rows}
    per_n = []
    for n in n_list:
        att, pla, la, la2 = t.get((ATT, n)), t.get((PLA, n)), t.get((LA, n)), t.get((LA, 2 * n))
        ratio = lambda a, b: (a / b) if a and b else None
        per_n.append({
            "T": n, "attention_s": att, "pla_s": pla, "based_s": la, "jrt_prompt_s": la2,
            "pla_speedup": ratio(att, pla), "jrt_prompt_speedup": ratio(att, la2), "based_speedup": ratio(att, la),
            "pla_over_based": ratio(pla, la),
        })
    measured = [p for p in per_n if p["attention_s"]]
    if not measured:
        raise common.StudyError("attention could not run at any length (out of memory or time)")
    top = measured[-1]

    gpu = jax.default_backend() == "gpu"
    gpu_col = ("GPU present: run benchmarks/kernels.py for the kernel ratios" if gpu else "not measured (no GPU)")
    x_fmt = lambda v: "—" if v is None else f"{v:.1f}×"
    claims = [
        common.Claim("PLA (JRT-RNN) prefill vs attention at long T",
                     f"{PAPER['pla']}× faster than FA2 (H100, T={PAPER['T']}, batch {PAPER['batch']})",
                     f"{x_fmt(top['pla_speedup'])} at T={top['T']} (CPU, batch 1; GPU: {gpu_col})",
                     _verdict(top["pla_speedup"], ctx.quick)),
        common.Claim("JRT-Prompt (Based over 2N) vs attention over N",
                     f"{PAPER['jrt_prompt']}× faster than FA2 (H100, N={PAPER['T']}, batch {PAPER['batch']})",
                     f"{x_fmt(top['jrt_prompt_speedup'])} at N={top['T']} (CPU; GPU: {gpu_col})",
                     _verdict(top["jrt_prompt_speedup"], ctx.quick)),
        common.Claim("JRT-RNN prefill time / Based prefill time",
                     f"{PAPER['pla_over_based']}×",
                     f"{top['pla_over_based']:.2f}× at T={top['T']} (M = T/2)" if top["pla_over_based"] else "—",
                     "n/a (quick)" if ctx.quick else ("yes (≤ 1.5×)" if top["pla_over_based"] and
                                                      top["pla_over_based"] <= 1.5 else "no (> 1.5×)")),
    ]
    table = common.markdown_table(
        ["T", "attention", "PLA", "Based", "JRT-Prompt (Based at 2T)", "PLA speed-up", "JRT-Prompt speed-up",
         "Based speed-up", "paper (H100, FA2)", "GPU"],
        [(p["T"], _ms(p["attention_s"]), _ms(p["pla_s"]), _ms(p["based_s"]), _ms(p["jrt_prompt_s"]),
          x_fmt(p["pla_speedup"]), x_fmt(p["jrt_prompt_speedup"]), x_fmt(p["based_speedup"]),
          f"PLA {PAPER['pla']}×, JRT-Prompt {PAPER['jrt_prompt']}× at T=32768" if p is per_n[-1] else "",
          gpu_col)
         for p in per_n])
    linear_only = [r for r in rows if r.method != ATT and r.seq_len not in n_list]
    notes = [
        f"B=1, H={sizes.heads}, F={sizes.feature_dim}, D={sizes.head_dim}, fp32, chunk 64, median of "
        f"{sizes.repeats} after a warm-up; speed-up = attention time / method time at the same N "
        "(JRT-Prompt: linear attention over 2N).",
        "The paper's figures are H100 kernels (Based CUDA kernel vs FlashAttention-2) at T=32768, batch 16; ours "
        "are XLA on CPU at batch 1 and stop where attention's T×T scores no longer fit in memory, so only the "
        "direction and the growth with T are comparable, not the magnitudes.",
        *[f"attention at T={r.seq_len}: {r.note}" for r in rows if r.method == ATT and r.note],
    ]
    if ctx.quick:
        notes.append("quick variant: T ≤ 256 is dispatch-bound; the ratios are not a test of the claim.")
    series = [
        {"label": "softmax attention (causal)", "x": [p["T"] for p in measured],
         "y": [p["attention_s"] for p in measured]},
        {"label": "PLA / JRT-RNN (M=T/2)", "x": _xs(rows, PLA), "y": _ys(rows, PLA)},
        {"label": "Based (causal LA)", "x": _xs(rows, LA), "y": _ys(rows, LA)},
        {"label": "JRT-Prompt (Based at 2T)", "x": [p["T"] for p in per_n if p["jrt_prompt_s"]],
         "y": [p["jrt_prompt_s"] for p in per_n if p["jrt_prompt_s"]], "style": "s--"},
    ]
    plots = []
    name = common.line_plot(ctx.out_dir / "prefill_time.png", series, xlabel="sequence length T (tokens)",
                            ylabel="prefill time (s), one layer", logx=True, logy=True,
                            title=f"Prefill time vs T on {common.cpu_model()[:40]} "
                                  f"(H={sizes.heads}, D={sizes.head_dim})")
    if name:
        plots.append(name)
    results = {
        "sizes": dataclasses.asdict(sizes),
        "paper": PAPER,
        "per_length": per_n,
        "rows": [dataclasses.asdict(r) for r in rows],
        "linear_only_lengths": sorted({r.seq_len for r in linear_only}),
        "gpu": gpu_col,
    }
    return common.Outcome(results=results, claims=claims, plots=plots, notes=notes, tables=[table])


def _verdict(speedup, quick: bool) -> str:
    if quick:
        return "n/a (quick)"
    if speedup is None:
        return "not measured"
    return "yes (direction; CPU magnitude)" if speedup > 1.0 else "no"


def _ms(seconds) -> str:
    return "—" if seconds is None else f"{1e3 * seconds:.1f} ms"


def _xs(rows, method):
    return [r.seq_len for r in rows if r.method == method and r.seconds]


def _ys(rows, method):
    return [r.seconds for r in rows if r.method == method and r.seconds]
