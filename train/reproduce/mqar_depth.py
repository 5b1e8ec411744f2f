"""MQAR with depth: JRT-RNN vs Based at equal state when a later layer reads the non-causal prefix's output.

Claim (JRT paper, JRT-RNN): a model that reads its prompt non-causally needs less recurrent memory than a causal
one to recall from it, so at the same state size JRT-RNN (prefix linear attention) recalls more than Based.

Why a second MQAR study. The `mqar` study's two-block layout (BaseConv, then ONE linear-attention layer) cannot
show the claim, whatever the recipe: the BaseConv before the prefix layer is causal with 3 taps, so a key-value
pair's encoder key and value cannot depend on the keys asked after it, and the one prefix layer stores the same
sum over all 8 pairs that Based's causal layer does; its non-causal outputs at the prefix positions feed no later
layer and carry no loss. There JRT-RNN measured below Based (21.7 against 36.7 % at F = 1), and neither twice the
steps (3,000) nor a higher lr (1e-2, where every replica of both families stayed below 9 %) changed that (module
docstring of `train.reproduce.mqar`, numbers in docs/reproduce/README.md). For the prefix to help, a layer has to
see what the non-causal layer read — here, to know at a pair which keys will be asked — and pass it on to the layer
that stores the pairs. This study gives the model that depth: four blocks, BaseConv / linear attention / BaseConv /
linear attention (`model.overrides={n_layers: 4, linear_layers: [1, 3]}` on the recall presets: 1 head, no
window, no MLP, d 64), the same for both families, so the state (two linear-attention layers plus the BaseConv
tails) is the same size.

Setup: the `mqar` study's task (keys and values first, 8 pairs, 4 asked, 64 + 64 symbols, 32-token rows, batch
64, on-device batches, one data stream) and its sweep, best-lr rule and spread (`mqar.summarize`, `mqar.compare`);
F = 2 (Φ = 6 state features per layer; 5,168 state bytes, close to the two-block F = 4's 4,924), 3,000 steps
(four blocks leave the plateau later than two: at 1,500 steps 2 of 3 JRT-RNN and 1 of 3 Based seeds had left it
at lr 3e-3, none at 1e-3, and at F = 1 none of either), 3 seeds x lr 1e-3 / 3e-3. Measured before the study was
written (2026-12-04, `jrt sweep` with the study's config, seeds 0-4, lr 3e-3): JRT-RNN 74.1-76.3 % on all five
seeds, Based 67.3 % on one and 16.9-18.9 % (the plateau) on four.

Verdicts: (1) JRT-RNN's mean minus Based's beyond the seeds' spread (`mqar.compare`: |Δ| > std(JRT) + std(Based));
(2) the stronger form: JRT-RNN's worst seed above Based's best at the best lrs. Neither is judged while both
families are on the plateau (best mean < `mqar.LEARNED`).

Full variant: 18 min wall with --jobs 2 on the idle 2-core CPU (2026-12-04): JRT-RNN 75.2 ± 0.6 % at lr 3e-3,
Based 45.0 ± 25.8 % at lr 1e-3 (docs/reproduce/README.md). With 6,000 steps (`jrt sweep`, same config) Based's
learned seeds reach 73.6-75.5 %, JRT-RNN's level: the verdicts hold at equal training, and the ceiling at F = 2 is
the same for both.

Quick variant: the same two configurations, 2 seeds x 2 lrs, 30 steps of batch 16, 64 evaluation examples — the
pipeline only; no claim is judged.
"""

from __future__ import annotations

import dataclasses
import time

from train.reproduce import common, mqar

NAME = "mqar-depth"
TITLE = "MQAR with four blocks: JRT-RNN vs Based at equal state"
PARALLEL = True  # one sweep per family through `common.run_jobs`

#: Four blocks: BaseConv, linear attention, BaseConv, linear attention (layers 1 and 3 mix through the state).
DEPTH = {"n_layers": 4, "linear_layers": [1, 3]}
FAMILIES = {family: mqar.FAMILIES[family] for family in ("Based", "JRT-RNN")}  # mqar's presets, attention aside

FULL = mqar.Sizes(feature_dims=(2,), lrs=(1e-3, 3e-3), steps=3000, eval_examples=1024)
QUICK = mqar.Sizes(feature_dims=(2,), lrs=(1e-3, 3e-3), steps=30, eval_examples=64, batch_size=16, warmup_steps=5)


def configs(sizes: mqar.Sizes) -> list[dict]:
    """One configuration per (family, F): the recall preset with four blocks."""
    return [{"family": family, "preset": preset, "knob": f"F={f}", "feature_dim": f,
             "overrides": {**DEPTH, "feature_dim": f, **mqar.LINEAR_FIXED}}
            for family, preset in FAMILIES.items() for f in sizes.feature_dims]


def judge(rows: list[dict], quick: bool) -> tuple[list[common.Claim], list[dict]]:
    """The two claims (verdicts from the numbers) and the per-F comparisons."""
    based = {r["feature_dim"]: r for r in rows if r["family"] == "Based"}
    jrt = {r["feature_dim"]: r for r in rows if r["family"] == "JRT-RNN"}
    fs = sorted(set(based) & set(jrt))
    comparisons = [mqar.compare(based[f], jrt[f]) for f in fs]
    pm = mqar.row_spread
    best = max(r["accuracy"] for r in rows)
    plateau = f"not measurable: no model learned the task (best {common.pct(best)} < {common.pct(mqar.LEARNED, 0)})"

    v1 = mqar.comparison_verdict(comparisons)
    c1 = common.Claim(
        "at equal state, JRT-RNN recalls more than Based (four blocks)",
        "JRT-RNN above Based at the same state size",
        "; ".join(f"F={c['F']} ({c['state_bytes']:,} B): JRT {pm(jrt[c['F']])} vs Based {pm(based[c['F']])}, "
                  f"Δ {100 * c['delta']:+.1f} pts (spread {100 * c['spread']:.1f})" for c in comparisons), v1)

    def worst_above_best(f):
        return jrt[f]["accuracy_min"] > based[f]["accuracy_max"]

    c2 = common.Claim(
        "not a seed artefact: JRT-RNN's worst seed above Based's best",
        "JRT-RNN above Based at the same state size",
        "; ".join(f"F={f}: JRT-RNN min {common.pct(jrt[f]['accuracy_min'])}, Based max "
                  f"{common.pct(based[f]['accuracy_max'])}" for f in fs),
        "; ".join(("yes" if worst_above_best(f) else "no") + ("" if len(fs) == 1 else f" (F={f})") for f in fs))
    claims = [c1, c2]
    for c in claims:
        if quick:
            c.reproduced = "n/a (quick)"
        elif best < mqar.LEARNED:
            c.reproduced = plateau
    return claims, comparisons


def run(ctx: common.Context) -> common.Outcome:
    """The study: one sweep (seeds x lrs) per family, the table, the comparison and a plot of accuracy vs lr."""
    start = time.perf_counter()
    sizes = QUICK if ctx.quick else FULL
    task = sizes.t
    seeds = ctx.seed_list(default_full=3, default_quick=2)
    cfgs = configs(sizes)
    label = lambda c: f"{c['family']} {c['knob']} 4 blocks"
    got = common.run_jobs(ctx, mqar.measure, [
        (f"{label(c):<24} {len(seeds)} seeds x lr {', '.join(f'{lr:g}' for lr in sizes.lrs)}",
         (mqar.sweep_overrides(c, sizes, seeds), task["seq_len"], label(c), not ctx.quick, NAME)) for c in cfgs])
    rows = [mqar.summarize(c, g, sizes, seeds) for c, g in zip(cfgs, got)]
    claims, comparisons = judge(rows, ctx.quick)
    wall = time.perf_counter() - start

    table = common.markdown_table(
        ["model", "state knob", "parameters", f"state bytes (T={task['seq_len']})",
         *(f"lr {lr:g}: per seed" for lr in sizes.lrs), "best lr", "accuracy at best lr (mean ± std)"],
        [(r["family"], r["knob"], f"{r['params']:,}", f"{r['state_bytes']:,}",
          *(common.per_seed(r["by_lr"][f"{lr:g}"]["accuracies"]) for lr in sizes.lrs),
          f"{r['best_lr']:g}", mqar.row_spread(r)) for r in rows])
    compare_table = mqar.comparison_table(comparisons)

    series = []
    for family, style in (("Based", "o-"), ("JRT-RNN", "s-")):
        for r in (r for r in rows if r["family"] == family):
            by_lr = [r["by_lr"][f"{lr:g}"] for lr in sizes.lrs]
            series.append({"label": f"{family} {r['knob']}", "x": list(sizes.lrs),
                           "y": [e["mean"] for e in by_lr], "yerr": [e["std"] for e in by_lr], "style": style,
                           "points": [(lr, a) for lr, e in zip(sizes.lrs, by_lr) for a in e["accuracies"]
                                      if a is not None]})
    plots = []
    name = common.line_plot(ctx.out_dir / "mqar_depth_accuracy_vs_lr.png", series,
                            xlabel="learning rate (log scale)", ylabel="MQAR accuracy (mean over seeds; dots: seeds)",
                            logx=True, hline=1 / task["num_values"], hline_label="chance",
                            title=f"MQAR, 4 blocks: {task['num_pairs']} pairs, T {task['seq_len']}, "
                                  f"{sizes.steps} steps, {len(seeds)} seeds")
    if name:
        plots.append(name)

    notes = [
        f"task: the `mqar` study's (MQAR {mqar.ORDER}, {task['num_pairs']} pairs, {task['num_queries']} queries, "
        f"{task['num_keys']} keys + {task['num_values']} values, rows of {task['seq_len']} tokens, one data stream).",
        f"models: the recall presets with model.overrides={DEPTH} (BaseConv, linear attention, BaseConv, linear "
        "attention; 1 head, no window, no MLP, d 64); Based causal, JRT-RNN prefix linear attention over the "
        "21-token prefix in both linear layers.",
        f"training: one `train.sweep` per family, seeds {seeds} × lr {list(sizes.lrs)}, {sizes.steps} steps of "
        f"batch {sizes.batch_size}, AdamW, {sizes.warmup_steps} warmup then cosine; {sizes.eval_examples} "
        "held-out examples per replica; best lr by the mean over seeds.",
        f"chance: {common.pct(1 / task['num_values'])}.",
        f"wall time of the training: {wall:.0f} s ({ctx.jobs} sweep{'s' if ctx.jobs > 1 else ''} at a time); per "
        "family: " + ", ".join(f"{r['family']} {r['wall_s']:.0f} s" for r in rows) + ".",
    ]
    if ctx.quick:
        notes.append(f"quick variant: {sizes.steps} steps; the pipeline only, no claim judged.")
    results = {"task": {**task, "order": mqar.ORDER}, "depth": DEPTH, "sizes": dataclasses.asdict(sizes),
               "seeds": seeds, "rows": rows, "comparisons": comparisons, "wall_s": round(wall, 1)}
    return common.Outcome(results=results, claims=claims, plots=plots, notes=notes, tables=[table, compare_table])
