"""How every `jrt` command ends: one line on stderr, one exit-status rule, one SIGTERM mechanism.

`run_command(fn, argv, prog=...)` runs ``fn(argv)`` and turns what it raises into a one-line message and an exit
status — never a raw traceback (``JRT_TRACEBACK=1`` adds it):

======  =============================================================================================================
status  when
======  =============================================================================================================
0       ``fn`` returned (``None`` or 0), or ``--help`` was printed
2       bad input: a usage error (`UsageError`, raised by `ArgumentParser`), a ``ValueError`` / ``TypeError`` from
        checking the input (the library's own errors — ConversionError, CheckpointError, … — are ValueErrors), or a
        path that cannot be used (missing, existing, not a folder, no permission)
1       a failure while running: `CommandFailed` (what `running()` makes of any error in its block), another
        ``OSError`` (a full disk), or an unexpected exception, reported as ``unexpected TYPE: …``
130     Ctrl-C (KeyboardInterrupt)
143     SIGTERM (128 + 15)
======  =============================================================================================================

SIGTERM: while ``fn`` runs, SIGTERM raises `Terminated` in the main thread, so ``finally`` blocks and all-or-nothing
writers remove their partial output on the way out. A command that must stop gracefully instead (the trainer saves
a checkpoint) installs its own handler for that stretch — `sigterm_raises` restores this one afterwards — and then
raises `Terminated` with its own message to exit 143.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from jrt_jax.errors import one_line

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM

#: OSErrors that say a path the user gave cannot be used: bad input, not a failure of the machine.
BAD_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


class UsageError(ValueError):
    """A bad command line; `prog` is the (sub)command whose usage it breaks."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class CommandFailed(Exception):
    """A failure while running (exit status 1); its message is the line printed.

    `exit_now`: end the process right after the report instead of waiting for non-daemon threads — after a failed
    orbax write its threads wait for signals that never come (orbax 0.12.8), which kept the process alive for
    minutes after the error was reported.
    """

    def __init__(self, message: str, *, exit_now: bool = False):
        super().__init__(message)
        self.exit_now = exit_now


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (see `sigterm_raises`); a message, if given, replaces the default line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise `UsageError` (one line, exit status 2 under `run_command`) instead of printing
    the usage block and exiting; sub-parsers made with ``add_subparsers`` inherit it."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)", prog=self.prog)


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises `Terminated` (in the main thread; elsewhere the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def running(*, exit_now_on: tuple[type[BaseException], ...] = ()):
    """A ValueError, TypeError or OSError raised in the block is a failure while running (exit status 1), not bad
    input: the input was checked before the block. Errors of the types in `exit_now_on` also end the process right
    after the report (`CommandFailed.exit_now`)."""
    try:
        yield
    except (ValueError, TypeError, OSError) as exc:
        raise CommandFailed(one_line(exc, None, with_type=False),
                            exit_now=isinstance(exc, exit_now_on)) from exc


@contextlib.contextmanager
def reported_as(prog: str):
    """Report what the block raises under `prog` (a sub-command's own name, e.g. ``jrt eval qa``)."""
    try:
        yield
    except BaseException as exc:
        if _prog_of(exc) is None:
            try:
                exc._jrt_prog = prog
            except AttributeError:  # an exception type with __slots__
                pass
        raise


def _prog_of(exc: BaseException) -> str | None:
    return (exc.prog if isinstance(exc, UsageError) else None) or getattr(exc, "_jrt_prog", None)


def exit_status(exc: BaseException) -> int:
    """The exit status of a command that raised `exc` (the table in this module's docstring)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED
    if isinstance(exc, (ValueError, TypeError, *BAD_PATH_ERRORS)):
        return EXIT_BAD_INPUT
    return EXIT_FAILURE


def _expected(exc: BaseException) -> bool:
    """Errors whose message is written for the user; anything else is reported as unexpected (a bug)."""
    return isinstance(exc, (ValueError, TypeError, OSError, CommandFailed))


def _is_loop_closed_echo(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def quiet_background_noise() -> None:
    """Silence what orbax's background machinery prints after a failure the command reports in one line.

    Orbax logs every failed background write through absl with its full traceback (~2000 lines), and a restore
    of a corrupt step leaves asyncio "exception was never retrieved" reports: those loggers are set to CRITICAL.
    After a failed write orbax closes its event loop while tensorstore still completes the other writes; each
    completion's callback raises "RuntimeError: Event loop is closed" in a tensorstore thread, which hands it to
    ``sys.unraisablehook`` (seen from a `jrt train` whose checkpoint directory vanished) or, through PyErr_Print,
    to ``sys.excepthook`` (tensorstore calls both): those hooks drop exactly this error and pass every other one on.
    """
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if not getattr(sys.unraisablehook, "drops_loop_closed_echoes", False):
        sys.unraisablehook = _dropping_echoes(sys.unraisablehook, lambda unraisable: unraisable.exc_value)
    if not getattr(sys.excepthook, "drops_loop_closed_echoes", False):
        sys.excepthook = _dropping_echoes(sys.excepthook, lambda *exc_info: exc_info[1])


def _dropping_echoes(previous, exception_of):
    def hook(*args):
        if not _is_loop_closed_echo(exception_of(*args)):
            previous(*args)

    hook.drops_loop_closed_echoes = True
    return hook


def _exit_now(code: int) -> int:
    """End the process with `code` if a non-daemon thread would keep it alive; else return `code`."""
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def run_command(fn: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *, prog: str,
                cleanup: str | None = None) -> int:
    """Run ``fn(argv)`` (default argv: ``sys.argv[1:]``) and return its exit status (module docstring).

    Errors are printed as ``PROG: error: MESSAGE`` on stderr; an interruption as ``PROG: interrupted`` /
    ``PROG: terminated by SIGTERM``, followed by ``; CLEANUP`` when `cleanup` says what the command left (e.g.
    "partial output removed").
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_background_noise()
    try:
        with sigterm_raises():
            code = fn(argv)
        return 0 if code is None else int(code)
    except SystemExit as exc:  # --help, or a library that exits
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(str(exc.code), file=sys.stderr)
        return EXIT_FAILURE
    except BaseException as exc:  # noqa: BLE001  every exception becomes one line and a status
        name = _prog_of(exc) or prog
        code = exit_status(exc)
        if os.environ.get("JRT_TRACEBACK") and not isinstance(exc, (KeyboardInterrupt, Terminated)):
            traceback.print_exception(exc)
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            said = str(exc).strip() if isinstance(exc, Terminated) else ""
            line = said or ("interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated by SIGTERM")
            print(f"{name}: {line}" + (f"; {cleanup}" if cleanup and not said else ""), file=sys.stderr)
        elif _expected(exc):
            print(f"{name}: error: {one_line(exc, None, with_type=False)}", file=sys.stderr)
        else:
            hint = "" if os.environ.get("JRT_TRACEBACK") else " (set JRT_TRACEBACK=1 for the traceback)"
            print(f"{name}: error: unexpected {one_line(exc)}{hint}", file=sys.stderr)
        if getattr(exc, "exit_now", False):
            return _exit_now(code)
        return code
