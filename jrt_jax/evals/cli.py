"""`jrt eval`: numbers from a model.

    jrt eval perplexity --model M --text FILE|shakespeare[:PLAY] … --context N [--stride S] [--rope-scaling JSON]
    jrt eval passkey --model M --lengths 1024,4096,8192 --trials K [--plot accuracy.png]
    jrt eval ruler --model M --lengths 1024,2048,4096,8192 [--tasks niah,vt,cwe,fwe] [--trials K] [--plot PNG]
    jrt eval qa --model M --data FILE.jsonl [--jrt-prompt] [--template qa|document] [--chat]
    jrt eval recall --model M --task mqar|set_disjointness [--seq-len N …] [--jrt-prompt]
    jrt eval lm-eval --model jrt-jax --model_args pretrained=M --tasks T …   (lm-eval's own arguments)

M is a converted folder, a .gguf file, a `jrt train` run directory or a preset (`jrt_jax.evals.loading`).
`--json` prints exactly one JSON object on stdout; a progress bar goes to stderr. Errors are one line on stderr
(`jrt_jax.cli.run_command`): exit status 2 for bad input (arguments, a missing file, a model that cannot be
loaded), 1 for a failure while running; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from jrt_jax import cli


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="converted folder, .gguf file, jrt train run directory, or preset")
    p.add_argument("--rope-scaling", default=None, metavar="JSON",
                   help='replace the model\'s RoPE scaling, e.g. \'{"rope_type": "linear", "factor": 2}\' ("none" '
                        "removes it)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="parameter/compute dtype")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="jrt eval", description="Evaluate a model.")
    sub = p.add_subparsers(dest="command", required=True)
    ppl = sub.add_parser("perplexity", help="sliding-window perplexity (each token scored once)")
    _common(ppl)
    ppl.add_argument("--text", nargs="+", required=True,
                     help="UTF-8 files, 'shakespeare' (the 42 plays) or 'shakespeare:PLAY' (e.g. shakespeare:hamlet)")
    ppl.add_argument("--context", type=int, required=True, help="tokens per window (N)")
    ppl.add_argument("--stride", type=int, default=None, help="window step S <= N (default N)")
    ppl.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    ppl.add_argument("--max-tokens", type=int, default=None, help="score only the first this many text tokens")
    pk = sub.add_parser("passkey", help="passkey retrieval accuracy per prompt length (landmark-attention test)")
    _common(pk)
    pk.add_argument("--lengths", required=True, help="comma-separated prompt lengths in tokens, e.g. 1024,4096")
    pk.add_argument("--trials", type=int, default=5, help="random (key, depth) trials per length")
    pk.add_argument("--seed", type=int, default=0)
    pk.add_argument("--plot", default=None, metavar="PNG", help="write accuracy vs length to this PNG")
    rl = sub.add_parser("ruler", help="RULER's synthetic long-context tasks per prompt length (needle in a haystack, "
                        "variable tracking, common / frequent words extraction)")
    _common(rl)
    rl.add_argument("--lengths", required=True, help="comma-separated prompt lengths in tokens, e.g. 1024,4096")
    rl.add_argument("--tasks", default="niah,vt,cwe,fwe", help="comma-separated tasks from niah, vt, cwe, fwe "
                    "(default: all)")
    rl.add_argument("--trials", type=int, default=5, help="random prompts per task and length")
    rl.add_argument("--seed", type=int, default=0)
    rl.add_argument("--max-new-tokens", type=int, default=None,
                    help="tokens generated per prompt (default: RULER's per task: niah 128, vt 30, cwe 120, fwe 50)")
    rl.add_argument("--plot", default=None, metavar="PNG", help="write score vs length, one line per task, to this PNG")

    qa = sub.add_parser("qa", help="QA / extraction accuracy from a JSONL file (JRT paper templates)")
    _common(qa)
    qa.add_argument("--data", required=True, help='JSONL rows {"context","question","answer"} or '
                    '{"document","key","answer"}')
    qa.add_argument("--template", choices=["qa", "document"], default=None, help="default: from the first row")
    qa.add_argument("--jrt-prompt", action="store_true", help="read the context twice (JRT-Prompt)")
    qa.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    qa.add_argument("--max-prompt-tokens", type=int, default=1024, help="budget; the context is cut around "
                    "the answer to fit")
    qa.add_argument("--max-new-tokens", type=int, default=48)
    qa.add_argument("--batch-size", type=int, default=8)

    rc = sub.add_parser("recall", help="accuracy on fresh synthetic recall examples (the trainer's tasks)")
    _common(rc)
    rc.add_argument("--task", required=True, help="mqar or set_disjointness")
    for flag in ("seq-len", "num-pairs", "num-queries", "num-keys", "num-values", "short-set", "long-set",
                 "universe"):
        rc.add_argument(f"--{flag}", type=int, default=None, help="task option (default: the trainer's)")
    rc.add_argument("--order", default=None, help="task order (default: the hard one)")
    rc.add_argument("--examples", type=int, default=256)
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--jrt-prompt", action="store_true", help="read each example's prefix twice")
    sub.add_parser("lm-eval", add_help=False, help="lm-evaluation-harness with --model jrt-jax (every argument "
                   "goes to lm-eval's CLI; see jrt_jax.evals.lm_eval_adapter)")
    return p


def _lengths(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--lengths must be comma-separated integers; got {text!r}") from None
    if not out or any(n < 1 for n in out):
        raise ValueError(f"--lengths must be positive integers; got {text!r}")
    return out


def _bar(args, total: int, desc: str):
    if args.no_progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


def _passkey(args) -> dict:
    from jrt_jax.evals import loading
    from jrt_jax.evals.passkey import passkey, plot
    from jrt_jax.evals.plotting import check_plot

    scaling = loading.parse_rope_scaling(args.rope_scaling)
    lengths = _lengths(args.lengths)
    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1; got {args.trials}")
    if args.plot:
        check_plot(args.plot)  # before minutes of scoring, not after
    model, tok, described = loading.load_model(args.model, rope_scaling=scaling, dtype=args.dtype)
    return _by_length(args, "passkey", model, described, len(lengths) * args.trials, plot,
                      lambda progress: passkey(model, tok, lengths, trials=args.trials, seed=args.seed,
                                               progress=progress))


def _by_length(args, task: str, model, described: str, total: int, plot, run) -> dict:
    """The part the by-length evaluations (passkey, ruler) share: `run(progress)` under a progress bar of `total`
    steps, its result with the model, RoPE scaling, time and memory, and the plot when --plot asks for one."""
    bar = _bar(args, total, task)
    t0 = time.perf_counter()
    try:
        result = run(None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    out = {"task": task, "model": described, **result.to_dict(),
           "rope_scaling": dict(model.config.rope_scaling) if getattr(model.config, "rope_scaling", None) else None,
           "seconds": round(time.perf_counter() - t0, 2), "peak_rss_gib": round(_peak_rss_gib(), 3)}
    if args.plot:
        plot(result, args.plot, title=f"{described}  rope_scaling={out['rope_scaling']}")
        out["plot"] = args.plot
    return out


def _ruler(args) -> dict:
    from jrt_jax.evals import loading
    from jrt_jax.evals.plotting import check_plot
    from jrt_jax.evals.ruler import build_prompts, parse_tasks, plot, ruler

    scaling = loading.parse_rope_scaling(args.rope_scaling)
    lengths = _lengths(args.lengths)
    tasks = parse_tasks(args.tasks)
    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1; got {args.trials}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1; got {args.max_new_tokens}")
    if args.plot:
        check_plot(args.plot)
    model, tok, described = loading.load_model(args.model, rope_scaling=scaling, dtype=args.dtype)
    prompts = build_prompts(tok, lengths, tasks=tasks, trials=args.trials, seed=args.seed)
    return _by_length(args, "ruler", model, described, len(tasks) * len(lengths) * args.trials, plot,
                      lambda progress: ruler(model, tok, lengths, tasks=tasks, trials=args.trials, seed=args.seed,
                                             max_new_tokens=args.max_new_tokens, progress=progress, prompts=prompts))


def _qa(args) -> dict:
    from jrt_jax.evals import loading, qa

    scaling = loading.parse_rope_scaling(args.rope_scaling)
    examples, template = qa.load_rows(args.data, args.template)
    model, tok, described = loading.load_model(args.model, rope_scaling=scaling, dtype=args.dtype)
    bar = _bar(args, len(examples), "qa")
    t0 = time.perf_counter()
    try:
        out = qa.run(model, tok, examples, jrt_prompt=args.jrt_prompt, chat=args.chat,
                     max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    if "warning" in out:
        print(f"jrt eval qa: warning: {out['warning']}", file=sys.stderr)
    return {"task": "qa", "model": described, "data": args.data, "template": template,
            "jrt_prompt": args.jrt_prompt, "chat": args.chat, **out, "seconds": round(time.perf_counter() - t0, 2)}


def _recall(args) -> dict:
    from jrt_jax.evals import loading, recall

    options = {k.replace("-", "_"): getattr(args, k.replace("-", "_")) for k in
               ("seq-len", "num-pairs", "num-queries", "num-keys", "num-values", "short-set", "long-set", "universe",
                "order")}
    task = recall.make_task(args.task, seed=args.seed, **options)
    scaling = loading.parse_rope_scaling(args.rope_scaling)
    model, _, described = loading.load_model(args.model, rope_scaling=scaling, dtype=args.dtype, text=False)
    if args.examples < 1:
        raise ValueError(f"--examples must be >= 1; got {args.examples}")
    bar = _bar(args, args.examples, "recall")
    t0 = time.perf_counter()
    try:
        out = recall.recall(model, task, examples=args.examples, jrt_prompt=args.jrt_prompt,
                            progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    return {"task": "recall", "recall_task": args.task, "model": described, **out,
            "seconds": round(time.perf_counter() - t0, 2)}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _perplexity(args) -> dict:
    from jrt_jax.evals import loading
    from jrt_jax.evals.perplexity import perplexity

    scaling = loading.parse_rope_scaling(args.rope_scaling)
    text, files = loading.read_texts(args.text)
    model, tok, described = loading.load_model(args.model, rope_scaling=scaling, dtype=args.dtype)
    ids = tok.encode(text)
    if args.max_tokens is not None:
        if args.max_tokens < 2:
            raise ValueError(f"--max-tokens must be >= 2; got {args.max_tokens}")
        ids = ids[: args.max_tokens]
    if args.context > len(ids):
        raise ValueError(f"--context {args.context} is longer than the text ({len(ids)} tokens); lower --context or "
                         "give more text")
    bar = _bar(args, len(ids) - 1, "perplexity")
    t0 = time.perf_counter()
    try:
        result = perplexity(model, ids, context=args.context, stride=args.stride, batch_size=args.batch_size,
                            progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    out = {"task": "perplexity", "model": described, "files": files, "text_tokens": len(ids), **result.to_dict(),
           "rope_scaling": dict(model.config.rope_scaling) if getattr(model.config, "rope_scaling", None) else None,
           "seconds": round(time.perf_counter() - t0, 2), "peak_rss_gib": round(_peak_rss_gib(), 3)}
    return out


def main(argv=None) -> int:
    """Run ``jrt eval`` with `argv` (default: sys.argv[1:]); returns the exit status."""
    return cli.run("eval", argv)


def command(argv) -> int:
    """`jrt eval` (under `jrt_jax.cli.run_command`: errors become one line and an exit status)."""
    if argv[:1] == ["lm-eval"]:  # the rest is lm-eval's own command line, not parsed here
        with cli.reported_as("jrt eval lm-eval"):
            try:
                from jrt_jax.evals.lm_eval_adapter import main as lm_eval_main
            except ImportError as e:
                raise cli.UsageError(f"{e} (pip install 'jrt-jax[eval]')") from None
        return lm_eval_main(argv[1:], prog="jrt eval lm-eval")
    args = build_parser().parse_args(argv)
    with cli.reported_as(f"jrt eval {args.command}"):
        out = {"perplexity": _perplexity, "passkey": _passkey, "ruler": _ruler, "qa": _qa,
               "recall": _recall}[args.command](args)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            if key != "rows":
                print(f"{key:>16}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
