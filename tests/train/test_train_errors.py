"""`jrt train` failure paths: each is one line on stderr, a non-zero exit and no traceback, and loses nothing.

Config syntax errors (YAML / JSON, naming file, line and column), non-finite hyper-parameters, a checkpoint.dir that
is a file (before any step), resume=false on another run's directory (refused; --overwrite sets it aside), a run
directory another live run holds (refused, untouched; a dead owner's lock is taken over), the JRT objective without
decoder positions, a non-finite loss, a checkpoint write failure in the middle of training (no hang), SIGTERM
(saves, exits 143, resumes exactly), a corrupt latest checkpoint (falls back and continues exactly) and
metrics.jsonl after a resume (every step once).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import inherited_xla_flags

from train import cli
from train.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
# One Llama layer: the cheapest model to compile (~6 s on two CPU cores).
SMALL = ["model.preset=llama-tiny", "model.overrides={num_hidden_layers: 1}", "data.batch_size=8",
         "data.eval_examples=8", "optim.warmup_steps=2"]


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = inherited_xla_flags()  # one device, the suite's compile settings
    return env


def _cli(args, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "train.cli", "train"] + args, env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kw)


def _one_line(stderr: str) -> str:
    """The one line that reports how the command ended. `jrt train` / `jrt sweep` log on stderr too (stdout is
    their JSON summary), so the log lines of the steps before come first; the report is one line, the last, and
    there is no traceback."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    reports = [line for line in lines if line.startswith(("jrt train: ", "jrt sweep: "))]
    assert len(reports) == 1 and lines[-1] == reports[0] and "Traceback" not in stderr, stderr[-3000:]
    return reports[0]


def _main(args, capsys) -> tuple[int, str]:
    code = cli.main(["train"] + args)
    err = capsys.readouterr().err
    return code, err


def _summary(stdout: str) -> dict:
    """The summary JSON `jrt train` prints last (indented; log lines before it may hold dict reprs)."""
    return json.loads(stdout[stdout.rindex("{\n"):])


def _metrics(path) -> list[dict]:
    return [json.loads(x) for x in pathlib.Path(path).read_text().splitlines() if '"loss"' in x]


# ------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("name,text,match", [
    ("bad.yaml", "steps: 4\noptim:\n  lr: [0.1\n  b1: 0.9\n", r"bad.yaml': YAML syntax error at line \d+, column \d+"),
    ("tabs.yaml", "steps: 4\n\toptim: 1\n", r"tabs.yaml': YAML syntax error at line 2, column 1"),
    ("bad.json", '{"steps": 4,\n "optim": {"lr": 0.1,}}\n', r"bad.json': JSON syntax error at line 2, column \d+"),
    ("list.yaml", "- 1\n- 2\n", r"list.yaml' must hold a mapping at the top level; got list"),
])
def test_config_syntax_errors_name_the_file_and_line(tmp_path, capsys, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(path)
    code, err = _main(["--config", str(path)], capsys)
    assert code == 2 and "Traceback" not in err
    assert _one_line(err).startswith("jrt train: error: config file ")


@pytest.mark.parametrize("override,expect", [
    ("optim.lr=.nan", "optim.lr must be a finite number > 0; got nan"),
    ("optim.lr=.inf", "optim.lr must be a finite number > 0; got inf"),
    ("optim.weight_decay=.nan", "optim.weight_decay must be a finite number >= 0; got nan"),
    ("optim.clip_norm=.inf", "optim.clip_norm must be a finite number >= 0; got inf"),
    ("optim.b2=.nan", "optim.b2 must be in [0, 1); got nan"),
    ("optim.eps=-.inf", "optim.eps must be a finite number > 0; got -inf"),
])
def test_non_finite_hyper_parameters_are_refused_before_training(override, expect, capsys):
    """They used to pass the config check and fail at step 2, after compiling, as a non-finite loss."""
    code, err = _main(SMALL + [override, "logging.dir=null"], capsys)
    assert code == 2 and _one_line(err) == f"jrt train: error: {expect}"


def test_checkpoint_step_needs_resume(capsys):
    code, err = _main(["checkpoint.dir=/tmp/x", "checkpoint.step=3", "checkpoint.resume=false"], capsys)
    assert code == 2 and "checkpoint.step=3 needs checkpoint.dir, checkpoint.resume=true" in _one_line(err)


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path, capsys):
    f = tmp_path / "not_a_dir"
    f.write_text("x")
    t0 = time.perf_counter()
    code, err = _main(SMALL + [f"checkpoint.dir={f}", "steps=1000", "logging.dir=null"], capsys)
    assert code == 2
    assert f"checkpoint.dir '{f}' is a file, not a directory" in _one_line(err)
    assert time.perf_counter() - t0 < 120  # failed at start, not after 1000 steps
    assert f.read_text() == "x"


def test_jrt_objective_refuses_seq_len_without_decoder_positions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JRT_JAX_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text("Just read twice. " * 200)
    args = ["model.preset=jrt-micro", "data.kind=text", f"data.text_files=[{text}]", "data.tokenizer=bytes",
            "data.batch_size=8", "data.eval_examples=8", "logging.dir=null"]
    code, err = _main(args + ["data.seq_len=64"], capsys)  # jrt-micro reads its first 64 tokens as the prefix
    line = _one_line(err)
    assert code == 2 and "data.seq_len=64 leaves no decoder positions for the JRT objective" in line
    assert "Raise data.seq_len above 64" in line
    from train.trainer import Trainer

    trainer = Trainer(load_config(None, args + ["data.seq_len=65"]), log=lambda *a, **k: None)  # one position
    assert trainer.objective == "jrt"
    trainer.close()


# ------------------------------------------------------------------------------------------- ownership


def _used_dir(tmp_path) -> pathlib.Path:
    """A checkpoint directory holding another run's steps 50, 55 and 60."""
    from train.trainer import Trainer

    d = tmp_path / "used"
    trainer = Trainer(load_config(None, SMALL + [f"checkpoint.dir={d}", "checkpoint.async_save=false",
                                                 "logging.dir=null", "seed=1"]), log=lambda *a, **k: None)
    for step in (50, 55, 60):
        trainer.step = step
        trainer.save()
    trainer.close()
    return d


def _listing(d: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_resume_false_on_a_used_directory_refuses(tmp_path, capsys):
    d = _used_dir(tmp_path)
    before = _listing(d)
    code, err = _main(SMALL + [f"checkpoint.dir={d}", "checkpoint.resume=false", "steps=12", "checkpoint.every=5",
                               "logging.dir=null"], capsys)
    line = _one_line(err)
    assert code == 2 and "already holds checkpoints (steps [50, 55, 60])" in line
    assert "checkpoint.resume=true" in line and "--overwrite" in line
    assert _listing(d) == before  # nothing reused, pruned or written


@pytest.mark.slow
def test_overwrite_flag_starts_a_new_run_and_keeps_the_old_one(tmp_path, capsys):
    d = _used_dir(tmp_path)
    code = cli.main(["train", "--overwrite"] + SMALL + [f"checkpoint.dir={d}", "checkpoint.resume=false", "steps=10",
                                                        "checkpoint.every=5", "logging.dir=null"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir() if p.name.isdigit()) == ["10", "5"]
    (old,) = (d / "set-aside").glob("overwritten-*")
    assert sorted(p.name for p in old.iterdir()) == ["50", "55", "60", "jrt_run.json"]


def _tree(d: pathlib.Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None for p in sorted(d.rglob("*"))}


def _lock_record(pid: int, **extra) -> str:
    import datetime
    import socket

    return json.dumps({"pid": pid, "host": socket.gethostname(), "started": datetime.datetime.now().isoformat(
        timespec="seconds"), "time": time.time(), **extra})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_a_run_directory_held_by_a_live_run_is_refused_and_left_untouched(tmp_path, capsys):
    """Two runs on one directory: the second (train, --resume, sweep) is refused in one line naming the owner, before
    anything is written; every file of the directory, the lock included, is unchanged."""
    import socket

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: run\nlogging:\n  dir: {run}\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    (run / ".lock").write_text(_lock_record(os.getpid()))  # this test's process: alive
    before = _tree(run)
    owner = f"is in use by another run: pid {os.getpid()} on host {socket.gethostname()}"
    for argv in (["train"] + SMALL + [f"logging.dir={run}", "checkpoint.resume=true", "steps=2"],
                 ["train", "--resume", str(run)],
                 ["sweep"] + SMALL + [f"logging.dir={run}", "steps=2"]):
        code = cli.main(argv)
        line = _one_line(capsys.readouterr().err)
        assert code == 2 and line.startswith(f"jrt {argv[0]}: error: run directory '{run}' {owner}"), line
        assert _tree(run) == before
    # A lock written on another host cannot be checked from here: refused, and the message says what to delete.
    (run / ".lock").write_text(_lock_record(os.getpid(), host="elsewhere"))
    code = cli.main(["train", "--resume", str(run)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "pid" in line and "on host elsewhere" in line and f"'{run / '.lock'}'" in line
    assert "if that run is gone, delete the file" in line


def test_lock_records_of_dead_and_reused_pids_are_stale(tmp_path):
    """The claim itself: a dead pid's lock and a lock older than the process now holding its pid are taken over
    (one warning each); one process may claim a directory it holds again; release removes the lock file."""
    from train.lock import LOCK_FILE, RunDirLocked, claim_run

    cfg = load_config(None, [f"logging.dir={tmp_path / 'run'}"])
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / LOCK_FILE
    for record in (_lock_record(_dead_pid()),
                   _lock_record(os.getpid(), time=1.0)):  # written long before this process (which has its pid) started
        lock.write_text(record)
        warnings = []
        resolved, held = claim_run(cfg, warn=warnings.append)
        assert len(warnings) == 1 and "taking over the lock of pid" in warnings[0]
        assert "no longer running" in warnings[0]
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        again, held2 = claim_run(cfg, warn=warnings.append)  # the same process: a second holder
        held.release()
        assert lock.exists()  # still held by the second holder
        held2.release()
        assert not lock.exists()
    lock.write_text(_lock_record(os.getpid()))  # a live holder that is not this claim's: refused
    with pytest.raises(RunDirLocked, match="is in use by another run"):
        claim_run(cfg, warn=print)
    lock.write_text("")  # unreadable (a writer that died mid-write, or a stranger's file): refused, not guessed
    with pytest.raises(RunDirLocked, match="cannot be read"):
        claim_run(cfg, warn=print)


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_and_a_long_warmup_warns(tmp_path, capsys):
    """A run killed with kill -9 leaves its lock: the next run on the directory takes it over with a one-line warning
    and trains; at the end the lock is gone. The same run's warmup (2 steps) does not fit in its 1 step: a warning."""
    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    (run / ".lock").write_text(_lock_record(dead))
    code = cli.main(["train"] + SMALL + [f"logging.dir={run}", "checkpoint.resume=true", "steps=1"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err.strip().splitlines()
    assert f"warning: run directory '{run}': taking over the lock of pid {dead} on host " in err, err
    assert ("warning: optim.warmup_steps=2 is not shorter than the schedule (steps=1): the warmup is cut to 0 steps "
            "and the lr only peaks at the last step; set optim.warmup_steps below 1") in lines, err
    assert not (run / ".lock").exists() and (run / "config.yaml").is_file()


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_nonfinite_loss_is_one_line_and_not_saved(tmp_path):
    ckpt = tmp_path / "ckpt"
    out = _cli(SMALL + ["optim.lr=1e30", "optim.warmup_steps=0", "steps=20", "logging.every=1", "checkpoint.every=1",
                        f"checkpoint.dir={ckpt}", "logging.dir=null"])
    line = _one_line(out.stderr)
    assert out.returncode == 1 and "jrt train: error: non-finite loss at step" in line, out.stderr
    step = int(line.split("non-finite loss at step ")[1].split()[0])
    saved = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert saved and max(saved) < step and f"the latest checkpoint is step {max(saved)}" in line


def _start(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train.cli", "train"] + args, env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_resumes_exactly(tmp_path):
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    common = SMALL + [f"checkpoint.dir={ckpt}", "checkpoint.every=1000", "logging.every=1", "optim.decay_steps=100"]
    proc = _start(common + ["steps=100000", f"logging.dir={logs}"])
    _wait_for(lambda: (logs / "metrics.jsonl").exists() and len(_metrics(logs / "metrics.jsonl")) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    line = _one_line(err)
    step = int(line.split("at step ")[1].split()[0])
    assert "stopped by SIGTERM" in line and "after saving a checkpoint" in line
    assert f"jrt train --resume {logs}" in line
    assert _summary(out)["stopped"] == "SIGTERM"
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [step]
    # Resume (the run's own config.yaml; its checkpoints live outside the run directory) to step + 2 and compare
    # with an uninterrupted run of step + 2 steps.
    again = _cli(["--resume", str(logs), f"steps={step + 2}"])
    assert again.returncode == 0, again.stderr[-3000:]
    ref = _cli(SMALL + ["checkpoint.every=1000", "logging.every=1", "optim.decay_steps=100", f"steps={step + 2}",
                        f"logging.dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    rows = _metrics(logs / "metrics.jsonl")
    reference = {r["step"]: r["loss"] for r in _metrics(tmp_path / "ref" / "metrics.jsonl")}
    assert [r["step"] for r in rows] == list(range(1, step + 3))  # every step once
    assert all(r["loss"] == reference[r["step"]] for r in rows)
    assert _summary(again.stdout)["eval_loss"] == _summary(ref.stdout)["eval_loss"]


@pytest.mark.slow
def test_checkpoint_write_failure_mid_run_is_one_line_and_does_not_hang(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = _start(SMALL + [f"checkpoint.dir={ckpt}", "checkpoint.every=2", "steps=100000", "logging.dir=null"])
    _wait_for(lambda: (ckpt / "2").is_dir(), proc)
    ckpt.rename(tmp_path / "moved")  # the directory disappears under the run: the next save fails
    ckpt.write_text("now a file")
    t0 = time.time()
    out, err = proc.communicate(timeout=240)
    line = _one_line(err)
    # The save of step 4 fails ("could not be written"), or, when the move lands before the run has checked that
    # step 2 was finished, that check fails ("was not written"): both name the directory in one line.
    failed = "could not be written" in line or "was not written" in line
    assert proc.returncode == 1 and failed and str(ckpt) in line, err[-2000:]
    assert time.time() - t0 < 200
    assert (tmp_path / "moved" / "2").is_dir()  # the earlier checkpoint is intact


@pytest.mark.slow
def test_corrupt_latest_step_falls_back_and_training_continues_exactly(tmp_path):
    ckpt = tmp_path / "ckpt"
    common = SMALL + ["optim.decay_steps=6", "checkpoint.every=2", "logging.dir=null"]
    first = _cli(common + ["steps=4", f"checkpoint.dir={ckpt}"])
    assert first.returncode == 0, first.stderr[-3000:]
    for f in (ckpt / "4" / "state" / "ocdbt.process_0" / "d").iterdir():  # one byte of every data file
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    resumed = _cli(common + ["steps=6", f"checkpoint.dir={ckpt}", "checkpoint.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warnings = [x for x in resumed.stderr.splitlines() if x.startswith("warning:") and "checkpoint" in x]
    assert len(warnings) == 1 and "checkpoint step 4" in warnings[0]
    assert "do not match their saved digest" in warnings[0]
    assert "restored checkpoint step 2" in resumed.stderr
    assert list((ckpt / "set-aside").glob("corrupt-*/4"))  # kept for inspection
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [2, 4, 6]
    ref = _cli(common + ["steps=6"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    got, want = _summary(resumed.stdout), _summary(ref.stdout)
    assert got["eval_loss"] == want["eval_loss"] and got["loss"] == want["loss"]


@pytest.mark.slow
def test_metrics_hold_each_step_once_after_a_resume(tmp_path):
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    common = SMALL + [f"checkpoint.dir={ckpt}", f"logging.dir={logs}", "checkpoint.every=4", "logging.every=1",
                      "optim.decay_steps=8"]
    assert _cli(common + ["steps=6"]).returncode == 0
    first = {r["step"]: r["loss"] for r in _metrics(logs / "metrics.jsonl")}
    shutil.rmtree(ckpt / "6")  # as if killed after logging steps 5 and 6 but before saving step 6
    with open(logs / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 7, "loss": 1.')  # and a torn last line
    assert _cli(common + ["steps=8", "checkpoint.resume=true"]).returncode == 0
    rows = _metrics(logs / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(r["loss"] == first[r["step"]] for r in rows if r["step"] in first)  # replayed exactly
    text = (logs / "metrics.jsonl").read_text()
    assert all(json.loads(line) for line in text.splitlines())  # no torn line left
