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


def _never(what):
    def fn(*args, **kwargs):
        raise AssertionError(f"{what} ran: the refusal came after the model was loaded or built")

    return fn


@pytest.mark.parametrize("new, old", [
    (["generate", "--model", "{missing}", "--prompt", "x"], ["generate", "--checkpoint", "{missing}", "--prompt", "x"]),
    (["eval-checkpoint", "--model", "{missing}"], ["eval-checkpoint", "--dir", "{missing}"]),
    (["export", "--model", "{missing}", "{dst}"], ["export", "{missing}", "{dst}"]),
])
def test_every_command_names_its_model_with_model(tmp_path, capsys, new, old):
    """`--model` names the model in every command; the older names are aliases with the same outcome."""
    paths = {"missing": str(tmp_path / "missing"), "dst": str(tmp_path / "dst")}
    results = []
    for argv in (new, old):
        code = cli.main([a.format(**paths) for a in argv])
        captured = capsys.readouterr()
        results.append((code, captured.out, captured.err))
    assert results[0] == results[1]
    code, out, err = results[0]
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and paths["missing"] in err, err
    assert not (tmp_path / "dst").exists()


def test_an_existing_target_is_bad_input_in_every_command(tmp_path, capsys, monkeypatch):
    """An output that exists (or a run directory holding another run's checkpoints) is bad input, exit status 2,
    refused in one line before any model is loaded or built."""
    from jrt_jax.convert import loader, run
    from train import trainer

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    text = tmp_path / "a.txt"
    text.write_text("hello\n")
    src = tmp_path / "missing"
    (tmp_path / "runs" / "old" / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "checkpoints" / "3" / "state").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loader, "from_pretrained", _never("from_pretrained"))
    monkeypatch.setattr(run, "open_run", _never("open_run"))
    monkeypatch.setattr(trainer, "Trainer", _never("Trainer"))
    for argv, message in [
        (["export", str(src), str(full)], "folder exists and is not empty (pass --overwrite"),
        (["convert", str(src), str(full)], "folder exists and is not empty (pass --overwrite"),
        (["convert", str(src), str(text)], "exists and is not a folder"),
        (["train", "name=old"], "already holds checkpoints (steps [3])"),
        (["sweep", "name=old"], "already holds checkpoints (steps [3])"),
        (["prepare-data", "--tokenizer", "bytes", "--output", str(full), str(text)], "not empty"),
    ]:
        code = cli.main(argv)
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, (argv, code, err)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_one_line_lives_in_a_leaf_module():
    """`one_line` is `jrt_jax.errors.one_line` (the leaf `jrt_jax.runs` imports it without the command line)."""
    import pathlib

    from jrt_jax import errors

    assert cli.one_line is errors.one_line
    assert errors.one_line(ValueError("\n  first line  \nsecond")) == "ValueError: first line"
    assert errors.one_line(ValueError("x" * 10), 5, with_type=False) == "xx..."
    assert errors.one_line(KeyError()) == "KeyError"
    runs = pathlib.Path(errors.__file__).parent / "runs"
    assert not [p.name for p in runs.glob("*.py") if "jrt_jax.cli" in p.read_text()]
