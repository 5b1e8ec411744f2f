"""`jrt_jax.cli`: the `jrt` entry point and its table, and the one rule every command ends by (one line on stderr;
exit status 2 bad input, 1 failure while running, 130 Ctrl-C, 143 SIGTERM)."""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

import pytest

from jrt_jax import cli


def _run(capsys, fn, argv=(), **kw) -> tuple[int, str, str]:
    code = cli.run_command(fn, list(argv), prog="jrt x", **kw)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _raise(exc):
    def fn(argv):
        raise exc

    return fn


def _failing_while_running(argv):
    with cli.running():
        raise ValueError("non-finite loss at step 3")


@pytest.mark.parametrize("fn, code, line", [
    (lambda argv: None, 0, None),
    (lambda argv: 0, 0, None),
    (_raise(ValueError("--steps must be > 0; got -1\nmore detail")), 2, "jrt x: error: --steps must be > 0; got -1"),
    (_raise(TypeError("config: expected a mapping, got list")), 2, "jrt x: error: config: expected a mapping, got list"),
    (_raise(FileNotFoundError(errno.ENOENT, "No such file or directory", "a.txt")), 2,
     "jrt x: error: [Errno 2] No such file or directory: 'a.txt'"),
    (_raise(OSError(errno.ENOSPC, "No space left on device")), 1, "jrt x: error: [Errno 28] No space left on device"),
    (_failing_while_running, 1, "jrt x: error: non-finite loss at step 3"),
    (_raise(cli.CommandFailed("the reference check failed")), 1, "jrt x: error: the reference check failed"),
    (_raise(KeyError("k")), 1, "jrt x: error: unexpected KeyError: 'k' (set JRT_TRACEBACK=1 for the traceback)"),
    (_raise(KeyboardInterrupt()), 130, "jrt x: interrupted; partial output removed"),
    (_raise(cli.Terminated("stopped by SIGTERM at step 7 after saving a checkpoint")), 143,
     "jrt x: stopped by SIGTERM at step 7 after saving a checkpoint"),
])
def test_one_rule_for_every_outcome(capsys, monkeypatch, fn, code, line):
    monkeypatch.delenv("JRT_TRACEBACK", raising=False)
    got, out, err = _run(capsys, fn, cleanup="partial output removed")
    assert got == code and out == ""
    assert err == ("" if line is None else line + "\n")


def test_sigterm_raises_in_the_command_and_the_handler_comes_back(capsys):
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []

    def fn(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        finally:
            cleaned.append(True)
        raise AssertionError("SIGTERM did not stop the command")

    code, _, err = _run(capsys, fn, cleanup="nothing written")
    assert code == 143 and err == "jrt x: terminated by SIGTERM; nothing written\n" and cleaned
    assert signal.getsignal(signal.SIGTERM) is before


def test_usage_errors_are_one_line_under_the_sub_command(capsys):
    def fn(argv):
        p = cli.ArgumentParser(prog="jrt x")
        sub = p.add_subparsers(dest="what", required=True)
        sub.add_parser("qa").add_argument("--batch-size", type=int)
        p.parse_args(argv)

    code, _, err = _run(capsys, fn, ["qa", "--batch-size", "many"])
    assert code == 2 and err == ("jrt x qa: error: argument --batch-size: invalid int value: 'many' "
                                 "(see jrt x qa --help)\n")
    code, out, err = _run(capsys, fn, ["--help"])
    assert code == 0 and out.startswith("usage: jrt x") and err == ""

    def sub_command(argv):
        with cli.reported_as("jrt x qa"):
            raise ValueError("--data rows.jsonl: no such file")

    assert _run(capsys, sub_command)[1:] == ("", "jrt x qa: error: --data rows.jsonl: no such file\n")


def test_the_event_loop_echo_of_a_failed_orbax_write_is_dropped(monkeypatch):
    """After a failed background write, tensorstore threads hand "Event loop is closed" to sys.unraisablehook
    (seen from a real `jrt train` whose checkpoint directory vanished) or sys.excepthook: the hooks drop exactly that
    error and pass every other one on."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    monkeypatch.setattr(sys, "excepthook", lambda kind, exc, tb: seen.append(exc))
    cli.quiet_background_noise()
    cli.quiet_background_noise()  # once: not wrapped twice

    class Raises:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    Raises(RuntimeError("Event loop is closed"))
    Raises(RuntimeError("a real problem"))
    for exc in (RuntimeError("Event loop is closed"), RuntimeError("another")):
        sys.excepthook(type(exc), exc, None)
    assert [str(e) for e in seen] == ["a real problem", "another"]


def test_version_help_and_the_train_alias(capsys):
    from train import cli as train_cli

    assert train_cli.main is cli.main and train_cli.COMMANDS is cli.COMMANDS  # `train.cli:main` still works
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("jrt-jax ") and "jax " in out
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert f"  {command} " in text
    assert "dispatcher" not in text and "import" not in text  # no notes about the code in the user's help
    assert cli.main([]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert capsys.readouterr().err == ("jrt: error: unknown command 'frobnicate'; choose from "
                                       + ", ".join(cli.COMMANDS) + "\n")
    for target in (c.target for c in cli.COMMANDS.values()):  # every name in the table resolves
        assert callable(cli.resolve(target))
