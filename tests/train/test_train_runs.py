"""Run hygiene: every `jrt train` run gets its own directory (config.yaml, metrics.jsonl, events with hparams,
checkpoints/), resuming is explicit (`--resume RUN_DIR` or checkpoint.resume=true), YAML 1.2 floats."""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from jrt_jax.convert.run import split_run_path
from train import cli
from train.config import load_config, load_run_config, parse_override, resolve_run

SMALL = ["model.preset=llama-tiny", "model.overrides={num_hidden_layers: 1}", "data.batch_size=8",
         "data.eval_examples=8", "optim.warmup_steps=2", "logging.every=1", "logging.progress=false",
         "checkpoint.async_save=false"]


def _train(args, capsys) -> tuple[int, str, str]:
    code = cli.main(["train"] + args)
    out, err = capsys.readouterr()
    return code, out, err


def test_yaml_floats_in_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  weight_decay: 2E-2\n  clip_norm: 1.5e+0\n")
    cfg = load_config(path, ["optim.min_lr_ratio=1e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.clip_norm, cfg.optim.min_lr_ratio) == (1e-3, 2e-2,
                                                                                                   1.5, 0.1)
    assert parse_override("optim.lr=3E-4") == ("optim.lr", 3e-4)
    assert parse_override("steps=12") == ("steps", 12)  # integers stay integers
    assert parse_override("name=e5") == ("name", "e5")  # and words stay words


def test_resolve_run_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stamp = 1_800_000_000.0
    first = resolve_run(load_config(None, []), timestamp=stamp)
    assert first.name.startswith("jrt-micro-") and first.logging.dir == f"runs/{first.name}"
    assert first.checkpoint.dir == f"runs/{first.name}/checkpoints"
    assert resolve_run(first) == first  # idempotent
    pathlib.Path(first.logging.dir).mkdir(parents=True)
    second = resolve_run(load_config(None, []), timestamp=stamp)  # the same second: a new directory
    assert second.name == f"{first.name}-2"
    named = resolve_run(load_config(None, ["name=exp1"]))
    assert (named.logging.dir, named.checkpoint.dir) == ("runs/exp1", "runs/exp1/checkpoints")
    explicit = resolve_run(load_config(None, ["logging.dir=/x/logs"]))
    assert explicit.checkpoint.dir == "/x/logs/checkpoints"
    kept = resolve_run(load_config(None, ["checkpoint.dir=/x/ck", "logging.dir=/x/logs"]))
    assert kept.checkpoint.dir == "/x/ck"  # checkpoint.dir=C keeps its meaning
    off = resolve_run(load_config(None, ["logging.dir=null"]))
    assert off.logging.dir is None and off.checkpoint.dir is None  # no run directory, no checkpoints
    preset = resolve_run(load_config(None, ["logging.dir=runs/{preset}", "model.preset=based-micro"]))
    assert preset.logging.dir == "runs/based-micro"
    for bad in ("a/b", "", ".."):
        with pytest.raises(ValueError, match="name must be a plain directory name"):
            load_config(None, [f"name={bad!s}" if bad else "name=''"])


def test_each_run_gets_a_directory_and_resuming_is_explicit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err1 = _train(SMALL + ["steps=2"], capsys)
    assert code == 0, err1
    code, out2, err = _train(SMALL + ["steps=2"], capsys)
    assert code == 0, err
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2, runs  # a second run never reuses the first one's directory
    run = runs[0]
    assert f"run {run.name}: runs/{run.name} (continue it: jrt train --resume runs/{run.name})" in err1
    assert json.loads(out)["step"] == 2  # logs on stderr: stdout is the JSON summary alone
    assert {"config.yaml", "metrics.jsonl", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert [p.name for p in run.glob("events.out.tfevents.*")]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["name"] == run.name and saved["checkpoint"]["dir"] == f"runs/{run.name}/checkpoints"
    events = b"".join(p.read_bytes() for p in run.glob("events.out.tfevents.*"))
    assert b"_hparams_/experiment" in events and b"optim.lr" in events and b"model.preset" in events
    assert split_run_path(run) == (run / "checkpoints", None)  # export / generate / eval take the run dir

    # --resume: the run's own config, its checkpoints, the overrides on top.
    code, out, err = _train(["--resume", str(run), "steps=4"], capsys)
    assert code == 0, err
    assert "restored checkpoint step 2" in err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 4
    assert json.loads(out[out.index("{"):])["step"] == 4

    # The same name again without resuming: refused in one line that says how to continue.
    code, out, err = _train(SMALL + ["steps=2", f"name={run.name}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "jrt train --resume RUN_DIR or checkpoint.resume=true" in err
    # With checkpoint.resume=true it continues (a requeued job's command).
    code, out, err = _train(SMALL + ["steps=5", f"name={run.name}", "checkpoint.resume=true"], capsys)
    assert code == 0 and "restored checkpoint step 4" in err, err

    # eval-checkpoint takes the run directory as well.
    code = cli.main(["eval-checkpoint", "--model", str(run)])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["step"] == 5, err  # the result alone on stdout
    assert "restored checkpoint step 5" in err


def test_resume_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _train(["--resume", str(tmp_path / "missing")], capsys)
    assert code == 2 and "no such run directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _train(["--resume", str(tmp_path / "empty")], capsys)
    assert code == 2 and "not a jrt train run directory (no config.yaml)" in err
    code, _, err = _train(["--resume", str(tmp_path / "empty"), "--config", "x.yaml"], capsys)
    assert code == 2 and "give changes as key=value overrides" in err


def test_load_run_config_reroots_checkpoints_inside_the_run(tmp_path):
    old = tmp_path / "old" / "r"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text(yaml.safe_dump({"name": "r", "logging": {"dir": "elsewhere/r"},
                                                     "checkpoint": {"dir": "elsewhere/r/checkpoints"}}))
    cfg = load_run_config(old, ["steps=9"])
    assert cfg.logging.dir == str(old) and cfg.checkpoint.dir == str(old / "checkpoints")
    assert cfg.checkpoint.resume and cfg.steps == 9


def test_a_run_directory_without_a_checkpoint_says_so(tmp_path):
    from jrt_jax.convert import ConversionError, from_pretrained
    from train.export import export_run

    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: r\n")
    for call in (lambda: from_pretrained(run), lambda: export_run(run, tmp_path / "out")):
        with pytest.raises(ConversionError, match="is a jrt train run directory with no checkpoint"):
            call()
    assert not (tmp_path / "out").exists()


def _lrs(run) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "lr" in r}


@pytest.mark.slow
def test_resume_keeps_the_saved_schedule_unless_asked_to_reschedule(tmp_path, capsys):
    """`--resume RUN steps=6` after steps=4 continues on the 4-step schedule (it used to stretch the cosine over the
    new steps: the lr jumped back up); optim.reschedule=true applies the 6-step schedule. Each says so in one line."""
    import shutil

    import jax.numpy as jnp

    from train.optim import make_optimizer

    first = tmp_path / "first"
    code, _, err = _train(SMALL + ["steps=4", f"logging.dir={first}"], capsys)
    assert code == 0, err
    kept, stretched = tmp_path / "kept", tmp_path / "stretched"
    shutil.copytree(first, kept)
    shutil.copytree(first, stretched)
    optim = load_run_config(first).optim
    saved = make_optimizer(optim, 4)[1]
    longer = make_optimizer(optim, 6)[1]
    lr = lambda schedule, s: float(schedule(jnp.int32(s)))  # the row of step s trained with schedule(s - 1)

    code, _, err = _train(["--resume", str(kept), "steps=6"], capsys)
    assert code == 0, err
    note = ("resuming with the saved schedule (peak lr 0.003, warmup 2 steps, cosine decay over 4 steps to 0.0003, "
            "then constant to step 6); pass optim.reschedule=true to use decay over 6 steps instead")
    assert note in err.splitlines(), err
    rows = _lrs(kept)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert rows[5] == pytest.approx(lr(saved, 4), rel=1e-6) and rows[6] == pytest.approx(lr(saved, 5), rel=1e-6)
    assert rows[5] == pytest.approx(0.1 * optim.lr, rel=1e-6)  # the floor of the 4-step cosine, not back up
    config = yaml.safe_load((kept / "config.yaml").read_text())
    assert config["steps"] == 6 and config["optim"]["decay_steps"] == 4 and config["optim"]["reschedule"] is False

    code, _, err = _train(["--resume", str(stretched), "steps=6", "optim.reschedule=true"], capsys)
    assert code == 0, err
    assert ("resuming with a new schedule (optim.reschedule=true): decay over 6 steps; the saved one was peak lr "
            "0.003, warmup 2 steps, cosine decay over 4 steps to 0.0003") in err.splitlines(), err
    rows = _lrs(stretched)
    assert rows[5] == pytest.approx(lr(longer, 4), rel=1e-6) and rows[5] != pytest.approx(lr(saved, 4), rel=1e-3)
    config = yaml.safe_load((stretched / "config.yaml").read_text())
    assert config["optim"]["decay_steps"] is None and config["optim"]["reschedule"] is False


def test_checkpoint_every_zero_writes_only_the_final_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _train(SMALL + ["steps=3", "checkpoint.every=0", "name=zero"], capsys)
    assert code == 0, err
    steps = sorted(p.name for p in (tmp_path / "runs" / "zero" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == ["3"]
    code, out, err = _train(SMALL + ["steps=3", "checkpoint.every=-1", "name=neg"], capsys)
    assert code == 2 and "checkpoint.every must be >= 0; got -1" in err


def test_a_single_value_is_a_one_element_list():
    assert load_config(None, ["data.kind=tokens", "data.path=/data/tokens"]).data.path == ("/data/tokens",)
    assert load_config(None, ["sweep.seeds=3", "sweep.lr=1e-3"]).sweep.seeds == (3,)
    assert load_config(None, ["data.path=[a, b]"]).data.path == ("a", "b")
    with pytest.raises(ValueError, match="data.path must be a list"):
        load_config(None, ["data.path={a: 1}"])


def test_print_config_is_yaml_that_config_reads_back(tmp_path, capsys):
    assert cli.main(["train", "--print-config", "steps=7", "optim.lr=1e-3"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(text)
    assert yaml.safe_load(text)["steps"] == 7
    cfg = load_config(tmp_path / "c.yaml", [])
    assert cfg.steps == 7 and cfg.optim.lr == 1e-3
