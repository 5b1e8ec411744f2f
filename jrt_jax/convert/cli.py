"""``jrt convert SRC DST``: convert a checkpoint into a PyTorch-loadable folder.

    jrt convert ~/ckpt/JRT-360M-30B out/jrt360m                       # release folder → safetensors
    jrt convert model.gguf out/smollm2 --format torch                  # GGUF → HF Llama pytorch_model.bin
    jrt convert weights/ out/ --preset jrt-1.3b --dtype bfloat16       # no config.json: name the shape

SRC is anything `jrt_jax.from_pretrained` reads (HF Llama folder, HazyResearch JRT / Based release folder, GGUF
file); DST a folder that receives ``model.safetensors`` or ``pytorch_model.bin`` plus ``config.json``, and the
tokenizer as a complete Hugging Face tokenizer: for GGUF sources the file's own, written as ``tokenizer.json``,
``tokenizer_config.json`` (bos / eos / pad / unk tokens and the file's chat template), ``special_tokens_map.json``
and ``generation_config.json``, with the ids in ``config.json`` too; for folders their tokenizer files, copied,
plus those companion files when the folder lacks them (`jrt_jax.convert.hf_tokenizer`). A JRT / Based output is
the release format, read by `jrt_jax.from_pretrained` (its config.json says so in ``jrt_loader``), not by
transformers. Nothing is written unless the whole
conversion succeeds: a SIGTERM or Ctrl-C removes the partial files before exiting, and the temporary files of a
conversion killed outright are removed by the next conversion into that folder. Errors are one line on stderr;
exit status 0 on success, 2 for bad input (arguments, an unreadable or mismatched checkpoint, a non-empty DST
without --overwrite), 1 for a failure while writing, 130 on Ctrl-C, 143 on SIGTERM (`jrt_jax.cli.run_command`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from jrt_jax import cli

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="jrt convert", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint folder, weights file or .gguf file")
    p.add_argument("dst", help="output folder")
    p.add_argument("--preset", help="model preset to use instead of SRC/config.json (e.g. jrt-360m, jrt-1.3b)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="parameter dtype of the output (default: the checkpoint's; float32 for GGUF)")
    p.add_argument("--format", choices=("safetensors", "torch"), default="safetensors",
                   help="output weights format (default: safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace the files in an existing non-empty DST")
    return p


def main(argv=None) -> int:
    """Run ``jrt convert`` with `argv` (default: sys.argv[1:]); returns the exit status."""
    return cli.run("convert", argv)


def command(argv) -> int:
    """`jrt convert` (under `jrt_jax.cli.run_command`: errors become one line and an exit status)."""
    from jrt_jax.convert.errors import ConversionError, KeyMismatchError

    args = _parser().parse_args(argv)
    try:
        return _convert(args)
    except KeyMismatchError as e:
        raise ConversionError(_mismatch_line(e)) from e


def _mismatch_line(e, shown: int = 8) -> str:
    """A `KeyMismatchError` in one line: its first line, then the offending keys (the first `shown` of each kind;
    JRT_TRACEBACK=1 prints the full message)."""
    def some(keys):
        more = f", … {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    parts = [f"missing {some(e.missing)}" if e.missing else "",
             f"unexpected {some(e.unexpected)}" if e.unexpected else "",
             f"mis-shaped {some([f'{k} {tuple(got)} vs {tuple(want)}' for k, got, want in e.mismatched])}"
             if e.mismatched else ""]
    return str(e).splitlines()[0] + ": " + "; ".join(p for p in parts if p)


def check_destination(dst, *, overwrite: bool) -> pathlib.Path:
    """Refuse an output folder that cannot be written before any checkpoint is read: a path that is not a folder,
    or a non-empty folder without `overwrite` (temporary files of dead writers do not count: they are removed).
    `jrt_jax.convert.atomic.AtomicFolder` checks the same again when it writes."""
    from jrt_jax.convert.atomic import remove_stale_temp_files
    from jrt_jax.convert.errors import ConversionError

    dst = pathlib.Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"{dst}: exists and is not a folder")
    if dst.is_dir() and not overwrite:
        remove_stale_temp_files(dst)
        if any(dst.iterdir()):
            raise ConversionError(f"{dst}: folder exists and is not empty (pass --overwrite to replace the files it "
                                  "writes)")
    return dst


def _convert(args) -> int:
    from jrt_jax.convert.errors import ConversionError
    from jrt_jax.convert.export import save_pretrained
    from jrt_jax.convert.hf_tokenizer import folder_token_ids
    from jrt_jax.convert.loader import from_pretrained, open_checkpoint
    from jrt_jax.models import count_params

    t0 = time.perf_counter()
    check_destination(args.dst, overwrite=args.overwrite)
    src = pathlib.Path(args.src)
    model = from_pretrained(src, dtype=args.dtype, preset=args.preset)
    tokenizer, extra, ids = None, [], {}
    with open_checkpoint(src, preset=args.preset) as ckpt:
        kind, folder, own_tokenizer = ckpt.kind, ckpt.folder, ckpt.architecture.tokenizer_in_weights
        if own_tokenizer:  # written as tokenizer.json
            try:
                tokenizer = ckpt.architecture.tokenizer(ckpt.source, folder)
            except ConversionError as e:
                print(f"jrt convert: note: tokenizer not written ({e})", file=sys.stderr)
    if not own_tokenizer:  # the folder's tokenizer files are copied, with the ids its configs name
        extra = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
        ids = folder_token_ids(folder)
    out = save_pretrained(model, args.dst, format=args.format, overwrite=args.overwrite, tokenizer=tokenizer,
                          extra_files=extra, config_updates=ids)
    config = model.config
    dtype = config.param_dtype
    print(f"converted {src} ({kind}, {type(model).__name__}, {count_params(model):,} parameters, {dtype}) → {out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
