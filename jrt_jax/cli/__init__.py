"""The `jrt` command line: the entry point, its table of sub-commands, and how every command ends.

    jrt COMMAND [options]          (`main`; `python -m jrt_jax.cli` is the same)

`registry` holds the table (`COMMANDS`: "module:function" strings, imported when a command runs, so the library
names the trainer's commands without importing `train`); `command` holds `run_command`, the one place that turns
an outcome into a line on stderr and an exit status (2 bad input, 1 failure while running, 130 Ctrl-C,
143 SIGTERM), the `ArgumentParser` whose errors are one line, and the SIGTERM mechanism.

Every command follows the same conventions, so one habit works everywhere:

* the model a command reads is named with ``--model`` (the older names stay as aliases: ``--checkpoint`` of
  ``jrt generate``, ``--dir`` of ``jrt eval-checkpoint``, and the first positional of ``jrt export``);
* the same error gets the same status in every command: bad input — including an output that already exists
  without ``--overwrite`` or a run directory that already holds another run — is 2, a failure while running is 1;
* results go to stdout and everything else (progress, logs, notes, warnings) to stderr, so ``jrt train ... | jq``
  reads the summary alone;
* input that can be checked without a model is checked before one is loaded or built.
"""

from jrt_jax.cli.command import (
    BAD_PATH_ERRORS,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ArgumentParser,
    CommandFailed,
    Terminated,
    UsageError,
    exit_status,
    one_line,
    quiet_background_noise,
    reported_as,
    run_command,
    running,
    sigterm_raises,
)
from jrt_jax.cli.registry import COMMANDS, Command, main, resolve, run, usage, version

__all__ = [
    "BAD_PATH_ERRORS", "COMMANDS", "EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_TERMINATED",
    "ArgumentParser", "Command", "CommandFailed", "Terminated", "UsageError", "exit_status", "main", "one_line",
    "quiet_background_noise", "reported_as", "resolve", "run", "run_command", "running", "sigterm_raises", "usage",
    "version",
]
