"""Position Interpolation with fine-tuning, small: a tiny Llama pretrained at context L, extended to 4L four ways.

Claims (PI paper, Chen et al. 2023, §3): extending a RoPE model by interpolating positions (linear PI, s = 4) and
fine-tuning briefly at the new length reaches the whole extended window — passkey retrieval at every length up to
4L within ~200 steps; fine-tuning at 4L without interpolation ("direct fine-tuning") extends the effective window
only slowly; a model used past its trained window without either (extrapolation) fails there.

Setup. A Llama (byte tokenizer, tied embeddings) is pretrained by the trainer at L = 256 on Shakespeare, with a
quarter of the rows replaced by passkey examples (`data.passkey_fraction`: the filler "The grass is green. …", the
line "The pass key is KEY. Remember it. KEY is the pass key." at a random depth, then "What is the pass key? The
pass key is KEY."), so it learns the retrieval it is tested on. Then, at 4L = 1024:

- (a) extrapolation — the pretrained model as it is;
- (b) PI zero-shot — the same weights with RoPE linear scaling s = 4;
- (c) PI + fine-tuning — (b) trained at 4L (same data mix) for each budget of steps;
- (d) direct fine-tuning — (a) trained at 4L for the same budgets, no scaling.

Each method fine-tunes in one run at a constant learning rate after a short warmup, checkpointed at every budget
of steps; the model after N steps is that run's checkpoint N (`jrt_jax.from_pretrained` reads a run's step). Measured on every model:
perplexity by position (bins of 128 bytes) on held-out Shakespeare (rows of 4L + 1 bytes), and passkey accuracy
(`jrt_jax.evals.passkey`, greedy, the same header-less prompts as in training) at lengths L, 2L, 3L, 4L.

The quick variant trains a 1-layer model for a few steps: the pipeline only, no claim.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import tempfile
import warnings

from train.reproduce import common

NAME = "pi-finetune"
TITLE = "PI fine-tuning: extrapolation, PI zero-shot, PI + fine-tuning and direct fine-tuning at 4L"

L = 256  # pretraining context (bytes)
FACTOR = 4
EXTENDED = L * FACTOR
BIN = 128


@dataclasses.dataclass(frozen=True)
class Sizes:
    model: dict
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    finetune_steps: tuple[int, ...]  # budgets, increasing; the last is the longest run
    finetune_batch: int
    finetune_lr: float
    passkey_fraction: float
    trials: int  # passkey prompts per length
    eval_rows: int  # held-out rows of EXTENDED + 1 bytes for perplexity


FULL = Sizes(model=dict(vocab_size=258, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
             pretrain_steps=1500, pretrain_batch=8, pretrain_lr=3e-3, finetune_steps=(50, 100, 200),
             finetune_batch=4, finetune_lr=1e-3, passkey_fraction=0.25, trials=10, eval_rows=8)
QUICK = Sizes(model=dict(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True),
              pretrain_steps=4, pretrain_batch=4, pretrain_lr=3e-3, finetune_steps=(1, 2), finetune_batch=2,
              finetune_lr=1e-3, passkey_fraction=0.25, trials=1, eval_rows=1)

LINEAR = {"rope_type": "linear", "factor": float(FACTOR)}


def data_overrides(sizes: Sizes, seq_len: int, batch: int) -> list[str]:
    return ["data.kind=text", "data.text_files=[shakespeare]", "data.tokenizer=bytes", f"data.seq_len={seq_len}",
            f"data.batch_size={batch}", f"data.passkey_fraction={sizes.passkey_fraction}", "data.eval_examples=8"]


def pretrain_overrides(sizes: Sizes) -> list[str]:
    return ["model.preset=llama-tiny", common.overrides_arg({**sizes.model, "max_position_embeddings": L}),
            *data_overrides(sizes, L, sizes.pretrain_batch), f"steps={sizes.pretrain_steps}",
            f"optim.lr={sizes.pretrain_lr}", f"optim.warmup_steps={max(2, sizes.pretrain_steps // 20)}", "seed=0"]


def finetune_overrides(sizes: Sizes, checkpoint: pathlib.Path, interpolate: bool) -> list[str]:
    """Fine-tuning at EXTENDED from the pretrained `checkpoint`, saved at every budget of `sizes.finetune_steps`."""
    rope = ["model.rope_scaling={rope_type: linear, factor: %.1f}" % FACTOR] if interpolate else []
    steps = sizes.finetune_steps
    every = math.gcd(*steps)
    return [f"model.checkpoint={checkpoint}", *rope, *data_overrides(sizes, EXTENDED, sizes.finetune_batch),
            f"steps={steps[-1]}", f"optim.lr={sizes.finetune_lr}", f"optim.warmup_steps={min(10, steps[0])}",
            "optim.min_lr_ratio=1.0", "seed=1", "data.seed=1", f"checkpoint.every={every}",
            f"checkpoint.keep={steps[-1] // every + 1}"]


def held_out(trained, rows: int) -> list[list[int]]:
    """`rows` disjoint rows of EXTENDED + 1 bytes from the held-out end of the pretraining text."""
    task = trained.task
    ids = task.windows[task.num_train * task.seq_len:]
    need = rows * (EXTENDED + 1)
    if len(ids) < need:
        raise common.StudyError(f"the held-out text has {len(ids)} tokens; the study needs {need}")
    return [list(map(int, ids[i * (EXTENDED + 1):(i + 1) * (EXTENDED + 1)])) for i in range(rows)]


def evaluate(model, rows: list[list[int]], trials: int) -> dict:
    """Perplexity per position bin and at each context, and passkey accuracy per length."""
    from jrt_jax.evals.passkey import passkey
    from jrt_jax.tokenizer import ByteTokenizer
    from train.reproduce.pi_zero_shot import position_nll

    nll = [position_nll(model, r)[0] for r in rows]
    mean = [sum(col) / len(col) for col in zip(*nll)]
    ppl = lambda xs: math.exp(sum(xs) / len(xs))
    bins = {f"{b}-{b + BIN}": ppl(mean[b:b + BIN]) for b in range(0, EXTENDED, BIN)}
    at = {str(c): ppl(mean[:c]) for c in range(L, EXTENDED + 1, L)}
    lengths = list(range(L, EXTENDED + 1, L))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LlamaLM: sequences longer than")
        pk = passkey(model, ByteTokenizer(), lengths, trials=trials, seed=1234, header="")
    return {"ppl_by_bin": bins, "ppl_at": at, "passkey": dict(zip(map(str, lengths), pk.accuracy)),
            "passkey_rows": pk.rows}


def with_rope(checkpoint: pathlib.Path, rope: dict | None):
    """The pretrained weights with RoPE scaling `rope` (None: none), usable at EXTENDED positions."""
    from jrt_jax import from_pretrained
    from jrt_jax.convert.loader import load_config

    config = dataclasses.replace(load_config(checkpoint), rope_scaling=rope)
    return from_pretrained(checkpoint, config=config)


def run(ctx: common.Context) -> common.Outcome:
    from jrt_jax import from_pretrained, save_pretrained

    sizes = QUICK if ctx.quick else FULL
    if ctx.seeds not in (None, 1):
        raise common.StudyError("pi-finetune runs one seed (its claims are about one trajectory per method)")
    pre = common.train_model(pretrain_overrides(sizes))
    ctx.log(f"pretrained at {L}: {pre.seconds:.0f} s, loss {pre.summary.get('loss', float('nan')):.3f}")
    rows = held_out(pre, sizes.eval_rows)
    results: dict[str, dict] = {}
    train_s: dict[str, float] = {"pretrain": round(pre.seconds, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = pathlib.Path(tmp) / "pretrained"
        save_pretrained(pre.model, ckpt, format="safetensors")
        for label, rope in (("extrapolation", None), ("PI zero-shot", LINEAR)):
            results[label] = {"0": evaluate(with_rope(ckpt, rope), rows, sizes.trials)}
            ctx.log(f"{label}: passkey {results[label]['0']['passkey']}")
        for label, interpolate in (("PI + fine-tuning", True), ("direct fine-tuning", False)):
            # One run per method, checkpointed at every budget: the model after N steps is the run's step N.
            runs = pathlib.Path(tmp) / label.replace(" ", "-")
            with warnings.catch_warnings():  # direct fine-tuning trains past the trained window on purpose
                warnings.filterwarnings("ignore", message="LlamaLM: sequences longer than")
                ft = common.train_model(finetune_overrides(sizes, ckpt, interpolate), checkpoint_dir=runs)
            train_s[label] = round(ft.seconds, 1)
            results[label] = {}
            for steps in sizes.finetune_steps:
                model = ft.model if steps == sizes.finetune_steps[-1] else from_pretrained(runs / str(steps))
                results[label][str(steps)] = evaluate(model, rows, sizes.trials)
                ctx.log(f"{label} {steps} steps: passkey {results[label][str(steps)]['passkey']}")
    return outcome(ctx, sizes, results, train_s)


def effective_window(passkey: dict, threshold: float = 0.8) -> int:
    """The longest length up to which every tested length retrieves with accuracy ≥ threshold (0: none)."""
    window = 0
    for length in sorted(passkey, key=int):
        if passkey[length] < threshold:
            break
        window = int(length)
    return window


PPL_SLACK = 1.25  # a position bin is "inside the window" while its perplexity is ≤ this × the in-window level


def perplexity_window(ppl_by_bin: dict, reference: float, slack: float = PPL_SLACK) -> int:
    """The end of the longest run of position bins from 0 whose perplexity stays ≤ slack × reference (the
    pretrained model's perplexity over its trained window): the effective window read off perplexity."""
    window = 0
    for key, value in ppl_by_bin.items():
        if value > slack * reference:
            break
        window = int(key.split("-")[1])
    return window


def outcome(ctx: common.Context, sizes: Sizes, results: dict, train_s: dict) -> common.Outcome:
    last = str(sizes.finetune_steps[-1])
    ext, pi0 = results["extrapolation"]["0"], results["PI zero-shot"]["0"]
    pift, direct = results["PI + fine-tuning"], results["direct fine-tuning"]
    inside = ext["ppl_at"][str(L)]
    past = lambda r: math.exp(sum(math.log(v) for k, v in r["ppl_by_bin"].items() if int(k.split("-")[0]) >= L)
                              / sum(1 for k in r["ppl_by_bin"] if int(k.split("-")[0]) >= L))
    pk = lambda r, n: r["passkey"][str(n)]
    pw = lambda r: perplexity_window(r["ppl_by_bin"], inside)
    quick = ctx.quick
    verdict = lambda ok: "n/a (quick)" if quick else ("yes" if ok else "no")
    # Passkey is the PI paper's measure of the effective window. When the pretrained model does not retrieve
    # even inside its own window, passkey cannot show a window, and the verdicts fall back to the window read
    # off perplexity (stated in the verdict).
    retrieves = pk(ext, L) >= 0.5
    by = "" if retrieves else " by perplexity (no passkey retrieval at L after pretraining)"
    window = (lambda r: effective_window(r["passkey"])) if retrieves else pw
    ppl_fails = past(ext) > 1.5 * inside
    if retrieves:
        extrapolation_ok = ppl_fails and max(pk(ext, n) for n in range(2 * L, EXTENDED + 1, L)) < 0.5
    else:
        extrapolation_ok = ppl_fails
    windows = lambda runs: "; ".join(
        f"{s} steps: passkey window {effective_window(r['passkey'])}, perplexity window {pw(r)}, passkey at 4L "
        f"{common.pct(pk(r, EXTENDED))}, ppl past L {past(r):.2f}" for s, r in runs.items())
    claims = [
        common.Claim("extrapolation fails past the trained window L",
                     "ppl explodes and passkey fails beyond L without interpolation",
                     f"passkey at L {common.pct(pk(ext, L))}, at 2L–4L "
                     f"{' / '.join(common.pct(pk(ext, n)) for n in range(2 * L, EXTENDED + 1, L))}; "
                     f"ppl inside L {inside:.2f}, past L {past(ext):.2f} (perplexity window {pw(ext)})",
                     verdict(extrapolation_ok) + ("" if quick else by)),
        common.Claim("PI + fine-tuning reaches the whole 4L window within ~200 steps",
                     "passkey at every length up to 4L after ≤ 200 steps (PI paper: < 1000 steps at 7B–65B; "
                     "effective window 4L after 200)", windows(pift),
                     verdict(window(pift[last]) == EXTENDED) + ("" if quick else by)),
        common.Claim("direct fine-tuning extends the window slowly",
                     "effective window grows slowly without interpolation (PI paper: 2048 → 2560 after 10,000 steps)",
                     windows(direct),
                     verdict(window(direct[last]) < window(pift[last])) + ("" if quick else by)),
        common.Claim("PI zero-shot (no fine-tuning)",
                     "interpolated positions work without training, at some cost (PI paper: ppl moderately higher "
                     "at the extended window, far better than extrapolation)",
                     f"ppl inside L {pi0['ppl_at'][str(L)]:.2f} (extrapolation {inside:.2f}), past L "
                     f"{past(pi0):.2f} (extrapolation {past(ext):.2f}); passkey "
                     f"{' / '.join(common.pct(pk(pi0, n)) for n in range(L, EXTENDED + 1, L))} at L–4L",
                     verdict(past(pi0) < past(ext))),
    ]
    lengths = list(range(L, EXTENDED + 1, L))
    rows = [("(a) extrapolation", "0", ext), ("(b) PI zero-shot", "0", pi0)]
    rows += [("(c) PI + fine-tuning", s, r) for s, r in pift.items()]
    rows += [("(d) direct fine-tuning", s, r) for s, r in direct.items()]
    table = common.markdown_table(
        ["method", "fine-tuning steps", *(f"ppl@{c}" for c in lengths), *(f"passkey@{n}" for n in lengths),
         "passkey window", "perplexity window"],
        [(m, s, *(f"{r['ppl_at'][str(c)]:.2f}" for c in lengths), *(common.pct(pk(r, n), 0) for n in lengths),
          effective_window(r["passkey"]), pw(r)) for m, s, r in rows])
    plots = []
    styles = {"(a) extrapolation": "o-", "(b) PI zero-shot": "s-", "(c) PI + fine-tuning": "^-",
              "(d) direct fine-tuning": "v--"}
    final = [(m, r) for m, s, r in rows if s in ("0", last)]
    centers = [int(k.split("-")[0]) + BIN // 2 for k in ext["ppl_by_bin"]]
    name = common.line_plot(ctx.out_dir / "pi_finetune_ppl_by_position.png",
                            [{"label": m, "x": centers, "y": list(r["ppl_by_bin"].values()), "style": styles[m]}
                             for m, r in final],
                            xlabel="position (bytes)", ylabel=f"perplexity per {BIN}-byte bin", logy=True, vline=L,
                            title=f"Held-out Shakespeare, trained at {L}, evaluated at {EXTENDED} "
                                  f"(fine-tuned {last} steps)")
    if name:
        plots.append(name)
    name = common.line_plot(ctx.out_dir / "pi_finetune_passkey.png",
                            [{"label": m, "x": lengths, "y": [pk(r, n) for n in lengths], "style": styles[m]}
                             for m, r in final],
                            xlabel="prompt length (bytes)", ylabel=f"passkey accuracy ({sizes.trials} trials)",
                            vline=L, title=f"Passkey retrieval, trained at {L} (fine-tuned {last} steps)")
    if name:
        plots.append(name)
    series = []
    for m, runs, start in (("(c) PI + fine-tuning", pift, pi0), ("(d) direct fine-tuning", direct, ext)):
        x = [0, *map(int, runs)]
        series.append({"label": f"{m}, passkey", "x": x, "style": styles[m],
                       "y": [effective_window(r["passkey"]) for r in (start, *runs.values())]})
        series.append({"label": f"{m}, perplexity", "x": x, "style": styles[m][0] + ":",
                       "y": [pw(r) for r in (start, *runs.values())]})
    name = common.line_plot(ctx.out_dir / "pi_finetune_window_vs_steps.png", series,
                            xlabel="fine-tuning steps at 4L", ylabel="effective window (bytes)",
                            title=f"Effective window vs fine-tuning steps (passkey ≥ 80 %; perplexity ≤ "
                                  f"{PPL_SLACK}× in-window)")
    if name:
        plots.append(name)
    notes = [
        f"model: llama-tiny with {sizes.model}, byte tokenizer; pretrained {sizes.pretrain_steps} steps of "
        f"{sizes.pretrain_batch} × {L} at lr {sizes.pretrain_lr:g} (warmup + cosine), "
        f"{sizes.passkey_fraction:.0%} passkey rows.",
        f"fine-tuning: {sizes.finetune_batch} × {EXTENDED} per step, lr {sizes.finetune_lr:g} constant after a "
        f"10-step warmup, one run per method checkpointed at {list(sizes.finetune_steps)} steps.",
        f"perplexity: {sizes.eval_rows} held-out rows of {EXTENDED} bytes (the last 5 % of the text, never "
        f"trained on), per-position NLL averaged over rows; ppl@C is over positions < C.",
        f"passkey: {sizes.trials} prompts per length (random key and depth, seed 1234), greedy; effective "
        f"window = the longest length up to which every tested length has accuracy ≥ 80 %.",
        f"perplexity window: the end of the longest run of {BIN}-byte position bins from 0 whose perplexity stays "
        f"≤ {PPL_SLACK} × the pretrained model's perplexity over its trained window ({inside:.2f}).",
        f"training seconds: {train_s}.",
    ]
    if quick:
        notes.append("quick variant: a 1-layer model and a few steps; the pipeline only.")
    slim = {m: {s: {k: v for k, v in r.items() if k != "passkey_rows"} for s, r in runs.items()}
            for m, runs in results.items()}
    return common.Outcome(results={"sizes": dataclasses.asdict(sizes), "L": L, "factor": FACTOR, "methods": slim,
                                   "passkey_rows": {m: {s: r.get("passkey_rows", []) for s, r in runs.items()}
                                                    for m, runs in results.items()},
                                   "train_seconds": train_s},
                          claims=claims, plots=plots, notes=notes, tables=[table])
