"""`jrt export RUN_DIR DST`: a training run's checkpoint → a folder `from_pretrained` loads (transformers too).

    jrt export runs/llama DST                        # the newest step that verifies, model.safetensors
    jrt export runs/llama DST --step 200 --format torch

The run directory is only read (`jrt_jax.convert.run`: the step's parameters, verified against their saved
digests; the optimizer state is not read). DST receives what `jrt_jax.save_pretrained` writes — the weights
(``model.safetensors`` with a tied embedding stored once, or ``pytorch_model.bin``) and ``config.json`` — and:

* the tokenizer, as a complete Hugging Face tokenizer when it has a file: ``tokenizer.json`` (GPT-2 BPE,
  tokenizer.json-based data, or the fine-tuned checkpoint's tokenizer files for a ``model.checkpoint`` run) with
  ``tokenizer_config.json`` and ``special_tokens_map.json`` (`jrt_jax.convert.hf_tokenizer`: bos / eos / pad /
  unk tokens, chat template when known, no added bos, model_max_length) — so ``AutoTokenizer.from_pretrained(DST)``
  and lm-eval's ``--model hf`` read it with our ids. The byte tokenizer has no file: it is recorded in
  ``jrt_export.json`` (and named in ``config.json``'s ``jrt_tokenizer``), from which
  `jrt_jax.convert.load_tokenizer` rebuilds it; transformers cannot load it. None for the synthetic tasks;
* ``config.json`` / ``generation_config.json``: bos / eos / pad token ids of the tokenizer the run used
  (GPT-2: 50256 / 50256 / none; bytes: 256 / 256 / 257 — documents are separated by end-of-text in the training
  data, so that is also the begin-of-text id);
* a JRT-RNN / Based run is written in the HazyResearch release format, which transformers does not know
  (``AutoModelForCausalLM`` fails with ``KeyError: 'swiglu'``): its ``config.json`` says
  ``"jrt_loader": "jrt_jax.from_pretrained"``;
* ``jrt_export.json``: the run, run id, step, tokenizer record (with a note when there is none) and the full
  training config.

Nothing is written unless everything succeeds (`jrt_jax.convert.atomic.AtomicFolder`); an existing non-empty DST
is refused unless --overwrite. Errors are one line on stderr; exit status 2 for bad input (arguments, an unusable
run directory or step, a non-empty DST), 1 for a failure while writing, 130 on Ctrl-C, 143 on SIGTERM (which also
removes the partial output) (`jrt_jax.cli.run_command`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

from jrt_jax import cli

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
BYTES_LOADER = ("bytes: UTF-8 bytes 0-255, 256 = end of text, 257 = pad; no tokenizer.json (transformers' "
                "AutoTokenizer cannot load it): jrt_jax.convert.load_tokenizer(folder) rebuilds it from "
                "jrt_export.json")


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="jrt export", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="RUN_DIR DST",
                   help="the run (its directory or checkpoint.dir) and the output folder (new or empty); with "
                        "--model RUN_DIR, only DST")
    p.add_argument("--model", default=None, metavar="RUN_DIR",
                   help="the run to export, as every jrt command names its model (instead of the first positional)")
    p.add_argument("--step", type=int, help="which step (default: the newest that verifies)")
    p.add_argument("--format", choices=("safetensors", "torch"), default="safetensors",
                   help="weights format (default: safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace the files in an existing non-empty DST")
    return p


def _tokenizer_files(record):
    """(object to save as tokenizer.json or None, files to copy) for a `TokenizerRecord`."""
    from jrt_jax.convert.sources import locate

    if record.kind in ("bytes", None):
        return None, []
    if record.kind == "file":
        return None, [pathlib.Path(record.file)]
    if record.kind == "checkpoint":
        folder, _ = locate(record.file)
        if (folder / "tokenizer.json").is_file():
            return None, [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    tok = record.load()  # gpt2, or a checkpoint's tokenizer without a file (GGUF, the releases' GPT-2)
    if not hasattr(tok, "save"):
        return None, []
    return tok, []


def export_run(run_dir, dst, *, step: int | None = None, format: str = "safetensors",
               overwrite: bool = False) -> dict:
    """Export step `step` (default: the newest that verifies) of a run to `dst`; returns a summary dict.

    Raises `jrt_jax.convert.ConversionError` (a ValueError; one-line message) on any failure, with nothing
    written to `dst`.
    """
    from jrt_jax.convert import save_pretrained
    from jrt_jax.convert.cli import check_destination
    from jrt_jax.convert.run import EXPORT_FILE, open_run
    from jrt_jax.models import count_params

    dst = check_destination(dst, overwrite=overwrite)
    opened = open_run(run_dir, step)
    record = opened.tokenizer
    tokenizer, files = _tokenizer_files(record)
    model = opened.model()
    ids = {} if record.kind is None else {"bos_token_id": record.bos, "eos_token_id": record.eos,
                                          "pad_token_id": record.pad}
    tokenizer_record = record.to_json()
    updates = dict(ids)
    if record.kind == "bytes":
        tokenizer_record["loader"] = BYTES_LOADER
        updates["jrt_tokenizer"] = BYTES_LOADER
    json_files = {EXPORT_FILE: {
        "format": 1,
        "run": str(opened.path),
        "run_id": opened.run_id,
        "step": opened.step,
        "skipped_steps": opened.skipped,
        "model": type(model).__name__,
        "tokenizer": tokenizer_record,
        "train_config": opened.meta["config"],
    }}
    if ids and tokenizer is None and not any(pathlib.Path(f).name == "tokenizer.json" for f in files):
        # no tokenizer.json (bytes): save_pretrained makes the tokenizer files and this one only beside a file
        json_files["generation_config.json"] = {k: v for k, v in ids.items() if v is not None}
    weights = save_pretrained(model, dst, format=format, overwrite=overwrite, tokenizer=tokenizer,
                              extra_files=files, tied_head="once", config_updates=updates, json_files=json_files)
    return {"run": str(opened.path), "step": opened.step, "model": type(model).__name__,
            "parameters": count_params(model), "dtype": model.config.param_dtype, "weights": str(weights),
            "tokenizer": record.kind, "bos_token_id": record.bos, "eos_token_id": record.eos,
            "pad_token_id": record.pad, "note": record.note}


def main(argv=None) -> int:
    """Run ``jrt export`` with `argv` (default: sys.argv[1:]); returns the exit status."""
    return cli.run("export", argv)


def command(argv) -> int:
    """`jrt export` (under `jrt_jax.cli.run_command`: errors become one line and an exit status)."""
    parser = _parser()
    args = parser.parse_args(argv)
    expected = 1 if args.model is not None else 2
    if len(args.paths) != expected:
        parser.error("give RUN_DIR DST, or --model RUN_DIR DST" + (f"; got {len(args.paths)} positional arguments "
                                                                     f"({' '.join(args.paths)})"))
    args.run_dir, args.dst = (args.model, args.paths[0]) if args.model is not None else args.paths
    prog = "jrt export"
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = export_run(args.run_dir, args.dst, step=args.step, format=args.format,
                                 overwrite=args.overwrite)
        finally:
            for w in caught:
                print(f"{prog}: warning: {str(w.message).splitlines()[0]}", file=sys.stderr)
    tok = summary["tokenizer"] or "none"
    ids = ("" if summary["tokenizer"] is None else f" (bos {summary['bos_token_id']}, eos {summary['eos_token_id']}, "
           f"pad {summary['pad_token_id']})")
    print(f"exported {args.run_dir} step {summary['step']} ({summary['model']}, {summary['parameters']:,} "
          f"parameters, {summary['dtype']}) → {summary['weights']} in {time.perf_counter() - t0:.1f} s; "
          f"tokenizer: {tok}{ids}")
    if summary["note"]:
        print(f"{prog}: note: {summary['note']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
