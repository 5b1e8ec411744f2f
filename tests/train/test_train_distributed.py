"""The trainer across devices and processes: simulated 8-device meshes, two processes (gloo), kill -9, restore."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import simulated_devices_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
# A small JRT-RNN whose dimensions divide every mesh axis used below.
SMALL = ["model.preset=jrt-micro", "data.kind=mqar", "data.seq_len=48", "data.num_pairs=8", "data.num_queries=4",
         "data.num_keys=16", "data.num_values=16", "data.batch_size=16", "optim.warmup_steps=2"]


def _env(devices: int) -> dict:
    return simulated_devices_env(devices, pythonpath=str(ROOT))


def _worker(scenario, out, overrides, devices=8, timeout=600, check=True):
    cmd = [sys.executable, "-m", "tests.workers.train_worker", scenario, str(out)] + overrides
    proc = subprocess.run(cmd, env=_env(devices), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"worker {scenario} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.mark.slow
def test_meshes_match_one_device(tmp_path):
    out = tmp_path / "meshes.json"
    _worker("meshes", out, SMALL)
    result = json.loads(out.read_text())
    print(result.pop("sharding_table"))
    for mesh in ("8x1x1", "2x2x2", "1x4x2"):
        r = result[mesh]
        print(mesh, r)
        assert r["max_loss_rel"] <= 1e-5, (mesh, r)
        assert r["max_param_rel"] <= 1e-5, (mesh, r)
        assert r["shardings_follow_rules"], (mesh, r)
    # (2,2,2) and (1,4,2) shard parameters over fsdp / tensor; (8,1,1) replicates them.
    assert result["8x1x1"]["sharded_params"] == 0
    assert result["2x2x2"]["sharded_params"] > 0 and result["1x4x2"]["sharded_params"] > 0
    # The run did train: the loss moved.
    assert result["one_device"][-1] < result["one_device"][0]


@pytest.mark.slow
def test_restore_onto_other_meshes(tmp_path):
    out = tmp_path / "remesh.json"
    _worker("remesh", out, SMALL + [f"checkpoint.dir={tmp_path / 'ckpt'}", "checkpoint.async_save=false"])
    result = json.loads(out.read_text())
    for mesh in ("2x2x2", "1x4x2"):
        r = result[mesh]
        print(mesh, r)
        assert r["restored_step"] == 4
        assert r["param_rel"] == 0.0  # the same numbers, resharded
        assert r["next_loss_rel"] <= 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, overrides, tag):
    port = _free_port()
    procs = []
    for pid in range(2):
        dist = ["distributed.enabled=true", f"distributed.coordinator_address=127.0.0.1:{port}",
                "distributed.num_processes=2", f"distributed.process_id={pid}"]
        cmd = [sys.executable, "-m", "tests.workers.train_worker", "run", str(tmp_path / tag)] + overrides + dist
        procs.append(subprocess.Popen(cmd, env=_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outputs):
        assert p.returncode == 0, f"process failed:\n{o[-2000:]}\n{e[-4000:]}"
    return [json.loads((tmp_path / f"{tag}.{i}").read_text()) for i in range(2)]


@pytest.mark.slow
def test_two_processes_train_save_and_restore_one_job(tmp_path):
    ckpt = tmp_path / "ckpt"
    common = SMALL + ["mesh.data=4", f"checkpoint.dir={ckpt}", "checkpoint.every=2", "checkpoint.async_save=false",
                     "optim.decay_steps=6",  # one schedule for both lives of the job
                     "checkpoint.resume=true"]  # a requeued job's command: starts the run, then continues it
    first = _two_processes(tmp_path, common + ["steps=4"], "first")
    assert [r["process_count"] for r in first] == [2, 2] and first[0]["device_count"] == 4
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [2, 4]
    resumed = _two_processes(tmp_path, common + ["steps=6"], "resumed")
    # One process with the same 4 devices and no interruption: the same job.
    _worker("run", tmp_path / "single", SMALL + ["mesh.data=4", "steps=6", "optim.decay_steps=6"], devices=4)
    single = json.loads((tmp_path / "single.0").read_text())
    for r in resumed:
        assert r["summary"]["step"] == 6
        assert r["checksum"] == pytest.approx(single["checksum"], rel=1e-6)
        assert r["summary"]["eval_loss"] == pytest.approx(single["summary"]["eval_loss"], rel=1e-5)


def _token_data(tmp_path) -> pathlib.Path:
    """A prepare-data directory of 40 short documents (bytes tokenizer: no network)."""
    from train.data.prepare import prepare

    src = tmp_path / "src"
    src.mkdir()
    words = "to be or not that is the question whether tis nobler in the mind suffer slings".split()
    rng = __import__("random").Random(0)
    for i in range(40):
        (src / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))))
    prepare([str(src / "*.txt")], tmp_path / "tokens", tokenizer="bytes", workers=1, eval_fraction=0.1)
    return tmp_path / "tokens"


def _tokens_config(data: pathlib.Path, workers: int = 0) -> list[str]:
    return ["model.preset=jrt-micro", "data.kind=tokens", f"data.path=[{data}]", "data.packing=true",
            "data.seq_len=96", "data.batch_size=8", "model.overrides={enc_len: 16}", f"data.workers={workers}",
            "optim.warmup_steps=2", "data.eval_examples=8"]


@pytest.mark.slow
def test_two_processes_read_disjoint_packed_documents_and_match_one_process(tmp_path):
    data = _token_data(tmp_path)
    common = _tokens_config(data) + ["mesh.data=4", "steps=4", "logging.dir=null", "checkpoint.dir=null"]
    two = _two_processes(tmp_path, common, "tokens")
    _worker("run", tmp_path / "single", common, devices=4)
    single = json.loads((tmp_path / "single.0").read_text())
    mine = [set(map(tuple, r["spans"])) for r in two]
    docs = [{s[:2] for s in m} for m in mine]
    print(f"\nrows {two[0]['rows']} | {two[1]['rows']}; token spans read {len(mine[0])} | {len(mine[1])} "
          f"(one process: {len(single['spans'])}); documents {len(docs[0])} | {len(docs[1])}, "
          f"{len(docs[0] & docs[1])} split across both")
    assert two[0]["rows"] == [0, 1, 2, 3] and two[1]["rows"] == [4, 5, 6, 7]
    assert not mine[0] & mine[1] and mine[0] | mine[1] == set(map(tuple, single["spans"]))
    for r in two:
        assert r["checksum"] == pytest.approx(single["checksum"], rel=1e-6)
        assert r["summary"]["eval_loss"] == pytest.approx(single["summary"]["eval_loss"], rel=1e-5)


def _metrics(path):
    rows = {}
    for line in pathlib.Path(path).read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            rows[r["step"]] = r["loss"]
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("data", ["mqar", "tokens-workers"])
def test_kill_minus_9_then_resume_follows_the_same_trajectory(tmp_path, data):
    config = SMALL if data == "mqar" else _tokens_config(_token_data(tmp_path), workers=1)
    train = [sys.executable, "-m", "train.cli", "train"] + config + ["steps=16", "logging.every=1",
                                                                     "checkpoint.every=4"]
    ref_dir = tmp_path / "ref"
    subprocess.run(train + [f"logging.dir={ref_dir}", f"checkpoint.dir={tmp_path / 'ref_ckpt'}"], env=_env(1),
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    reference = _metrics(ref_dir / "metrics.jsonl")

    run_dir, ckpt = tmp_path / "run", tmp_path / "ckpt"
    cmd = train + [f"logging.dir={run_dir}", f"checkpoint.dir={ckpt}", "checkpoint.resume=true"]  # as requeued
    proc = subprocess.Popen(cmd, env=_env(1), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = 10  # between the checkpoints of steps 8 and 12
    deadline = time.time() + 600
    while time.time() < deadline:
        log = run_dir / "metrics.jsonl"
        if log.exists() and max(_metrics(log), default=0) >= kill_after:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_metrics(run_dir / "metrics.jsonl"))
    assert killed_at < 16, "the run finished before it could be killed"
    subprocess.run(cmd, env=_env(1), cwd=ROOT, check=True, capture_output=True, timeout=600)
    # metrics.jsonl holds both lives of the run, each step once: the resumed run dropped the rows the first life
    # wrote after its last complete checkpoint and wrote them again, identical.
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in lines] == list(range(1, 17))
    for r in lines:
        assert r["loss"] == reference[r["step"]], (r["step"], r["loss"], reference[r["step"]])


@pytest.mark.slow
def test_kill_during_async_save_keeps_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = _worker("kill_in_save", tmp_path / "unused", SMALL + [f"checkpoint.dir={ckpt}", "mesh.data=1",
                                                                 "mesh.num_devices=1"], devices=1, check=False)
    assert proc.returncode == -signal.SIGKILL
    from train.checkpoint import Checkpointer

    manager = Checkpointer(str(ckpt), keep=3, async_save=False, create=False)
    # Whatever the kill left of step 4, the latest complete checkpoint restores.
    latest = manager.latest_step()
    assert latest in (2, 4)
    out = subprocess.run([sys.executable, "-m", "train.cli", "eval-checkpoint", "--dir", str(ckpt),
                          "--step", str(latest)], env=_env(1), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout[out.stdout.index("{"):])["step"] == latest


def test_bad_inputs_fail_clearly(tmp_path):
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from train.config import load_config
from train.trainer import Trainer
base = {SMALL + ['logging.dir=null']!r}
for extra, expect in [(["mesh.data=3"], "has 3 devices but 8 are available"),
                      (["mesh.data=-1", "mesh.tensor=3"], "do not divide the 8 devices"),
                      (["data.batch_size=12", "mesh.data=8"], "not divisible by the data-parallel size"),
                      (["mesh.data=1", "mesh.tensor=8", "model.overrides.n_inner=100"], "is not divisible by mesh axis 'tensor'")]:
    try:
        Trainer(load_config(None, base + extra))
    except ValueError as exc:
        assert expect in str(exc), (extra, str(exc))
        print("ok", extra, "->", exc)
    else:
        raise AssertionError(extra)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=_env(8), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    # eval-checkpoint on a folder that does not exist: clear error, non-zero exit.
    missing = subprocess.run([sys.executable, "-m", "train.cli", "eval-checkpoint", "--dir", str(tmp_path / "none")],
                             env=_env(1), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


@pytest.mark.slow
def test_corrupt_checkpoint_is_reported_and_nothing_is_deleted(tmp_path):
    ckpt = tmp_path / "ckpt"
    _worker("run", tmp_path / "r", SMALL + ["steps=4", f"checkpoint.dir={ckpt}", "checkpoint.every=2",
                                            "checkpoint.async_save=false", "logging.dir=null"], devices=1)
    # Truncate every array file of the latest step.
    damaged = 0
    for f in (ckpt / "4").rglob("*"):
        if f.is_file() and f.stat().st_size > 64 and "meta" not in f.parts:
            f.write_bytes(f.read_bytes()[:16])
            damaged += 1
    assert damaged
    before = sorted(p.name for p in ckpt.iterdir())
    out = subprocess.run([sys.executable, "-m", "train.cli", "eval-checkpoint", "--dir", str(ckpt)], env=_env(1),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "cannot be restored" in out.stderr, out.stderr[-2000:]
    assert sorted(p.name for p in ckpt.iterdir()) == before  # nothing deleted
    ok = subprocess.run([sys.executable, "-m", "train.cli", "eval-checkpoint", "--dir", str(ckpt), "--step", "2"],
                        env=_env(1), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
