"""The `jrt` command: a table of sub-commands named by "module:function" strings, imported only when one runs.

The library's own commands (generate, eval, convert) and the trainer's (train, sweep, eval-checkpoint, export,
prepare-data, reproduce) sit in one table, so `jrt --help` lists them all while `jrt_jax` never imports `train`
(the layers are train → jrt_jax → pallas_kernels): a name is resolved when its command runs. Each function takes
the argument list and returns an exit status or None; `run_command` turns what it raises into one line and a
status.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Sequence

from jrt_jax.cli.command import run_command


@dataclasses.dataclass(frozen=True)
class Command:
    """One sub-command of `jrt`.

    target: "module:function", imported when the command runs.
    summary: its line(s) in `jrt --help`.
    choices: "module:NAME" of a sequence of names listed after the summary in parentheses (read at --help time,
        so that a new entry cannot be left out of the help).
    cleanup: what an interrupted run leaves, said after "interrupted" / "terminated by SIGTERM".
    """

    target: str
    summary: str
    choices: str | None = None
    cleanup: str | None = None


COMMANDS: dict[str, Command] = {
    "train": Command("train.cli:train", "train a model (default: a micro JRT-RNN on set disjointness); options are "
                     "key=value;\neach run gets runs/NAME, continued with jrt train --resume RUN_DIR"),
    "sweep": Command("train.cli:sweep", "train a grid of seeds x learning rates as one program (sweep.seeds=[...] "
                     "sweep.lr=[...])"),
    "eval-checkpoint": Command("train.cli:eval_checkpoint", "evaluate a training checkpoint with the config it was "
                               "saved with"),
    "export": Command("train.export:command", "turn a training run into a from_pretrained folder (weights, config, "
                      "tokenizer)", cleanup="partial output removed"),
    "prepare-data": Command("train.data.prepare:command", "tokenize text files once into shards for "
                            "data.kind=tokens"),
    "generate": Command("jrt_jax.generate.cli:command", "generate text from a checkpoint, a .gguf file or a preset"),
    "eval": Command("jrt_jax.evals.cli:command", "perplexity, passkey, ruler, qa, recall (and lm-eval) on a model"),
    "convert": Command("jrt_jax.convert.cli:command", "convert checkpoints (Hugging Face Llama, JRT/Based releases, "
                       "GGUF) to and from jrt-jax", cleanup="partial output removed"),
    "reproduce": Command("train.reproduce.cli:command", "re-measure a paper claim", choices="train.reproduce:STUDIES",
                         cleanup="nothing written"),
}


def resolve(target: str):
    """The object a "module:name" string names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    """The text of `jrt --help`, from `COMMANDS`."""
    lines = ["usage: jrt COMMAND [options]   (jrt COMMAND --help for each command's options)", "", "commands:"]
    for name, command in COMMANDS.items():
        summary = command.summary
        if command.choices is not None:
            summary += f" ({', '.join(resolve(command.choices))})"
        first, *rest = summary.split("\n")
        lines.append(f"  {name:<17}{first}")
        lines.extend(f"  {'':<17}{line}" for line in rest)
    lines += ["", "  jrt --version    print the version"]
    return "\n".join(lines)


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jrt-jax")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown (not installed)"


def run(name: str, argv: Sequence[str] | None = None) -> int:
    """Run the sub-command `name` of `jrt` with `argv` (default: ``sys.argv[1:]``); returns the exit status."""
    # Before any backend starts: simulated CPU devices wait minutes, not 40 s, for a late peer in a collective
    # (a loaded machine aborted multi-device runs; see jrt_jax.parallel.host).
    from jrt_jax.parallel.host import use_patient_collectives

    use_patient_collectives()
    command = COMMANDS[name]
    return run_command(lambda args: resolve(command.target)(args), argv, prog=f"jrt {name}",
                       cleanup=command.cleanup)


def main(argv: Sequence[str] | None = None) -> int:
    """The `jrt` entry point: ``jrt COMMAND [options]``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        import jax

        print(f"jrt-jax {version()} (jax {jax.__version__})")
        return 0
    if argv[0] not in COMMANDS:
        print(f"jrt: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run(argv[0], argv[1:])
