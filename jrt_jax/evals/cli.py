"""`jrt eval`: numbers from a model.

    jrt eval perplexity --model M --text FILE|shakespeare[:PLAY] … --context N [--stride S] [--rope-scaling JSON]
    jrt eval passkey --model M --lengths 1024,4096,8192 --trials K [--plot accuracy.png]

M is a converted folder, a .gguf file, a `jrt train` run directory or a preset (`jrt_jax.evals.loading`).
`--json` prints exactly one JSON object on stdout; a progress bar goes to stderr. Errors are one line on stderr
and exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="converted folder, .gguf file, jrt train run directory, or preset")
    p.add_argument("--rope-scaling", default=None, metavar="JSON",
                   help='replace the model\'s RoPE scaling, e.g. \'{"rope_type": "linear", "factor": 2}\' ("none" '
                        "removes it)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="parameter/compute dtype")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jrt eval", description="Evaluate a model.")
    sub = p.add_subparsers(dest="task", required=True)
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

    scaling = loading.parse_rope_scaling(args.rope_scaling)
    lengths = _lengths(args.lengths)
    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1; got {args.trials}")
    model, tok, described = loading.load_model(args.model, rope_scaling=scaling, dtype=args.dtype)
    bar = _bar(args, len(lengths) * args.trials, "passkey")
    t0 = time.perf_counter()
    try:
        result = passkey(model, tok, lengths, trials=args.trials, seed=args.seed,
                         progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    out = {"task": "passkey", "model": described, **result.to_dict(),
           "rope_scaling": dict(model.config.rope_scaling) if getattr(model.config, "rope_scaling", None) else None,
           "seconds": round(time.perf_counter() - t0, 2), "peak_rss_gib": round(_peak_rss_gib(), 3)}
    if args.plot:
        plot(result, args.plot, title=f"{described}  rope_scaling={out['rope_scaling']}")
        out["plot"] = args.plot
    return out


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
    args = build_parser().parse_args(argv)
    prog = f"jrt eval {args.task}"
    try:
        out = {"perplexity": _perplexity, "passkey": _passkey}[args.task](args)
    except (ValueError, OSError) as e:  # ConversionError is a ValueError
        text = str(e).strip().splitlines()
        print(f"{prog}: error: {text[0] if text else type(e).__name__}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            if key != "rows":
                print(f"{key:>16}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
