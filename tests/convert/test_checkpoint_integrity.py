"""Checkpoint integrity: 17 kinds of damage to the latest step (truncated / deleted / flipped data, metadata,
manifests, commit markers, a leftover temporary folder, ...) are detected — the newest good step is restored
exactly and the damaged one is set aside, not deleted — or are harmless (the damaged step still restores
bit-exactly). Also: the digest is mesh-independent and catches any single-element change, directory ownership
(resume=false on another run's directory refuses, --overwrite sets it aside), checkpoint.step, keep-N pruning,
and a checkpoint.dir that is a file.

Runs on a 0.2 M-parameter trainer state with random values; nothing is compiled but the digests."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from tests.helpers import simulated_devices_env

from train.checkpoint import (
    SET_ASIDE,
    Checkpointer,
    CheckpointError,
    array_digests,
    flatten,
)
from train.config import load_config, to_dict


def _random_like(state, seed):
    rng = np.random.default_rng(seed)

    def fill(x):
        if np.issubdtype(x.dtype, np.floating):
            value = rng.standard_normal(x.shape).astype(x.dtype)
        else:
            value = np.full(x.shape, seed, x.dtype)
        return jax.device_put(value, x.sharding)

    return jax.tree.map(fill, state)


def _host(state) -> dict:
    return {k: np.asarray(v) for k, v in flatten(state).items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trainer state saved at steps 2 and 4 (different random values) by a run that owns the directory."""
    from train.trainer import Trainer

    root = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(None, ["data.batch_size=8", "data.eval_examples=8", "logging.dir=null",
                             f"checkpoint.dir={root / 'base'}", "checkpoint.async_save=false"])
    trainer = Trainer(cfg, log=lambda *a, **k: None)
    saved = {}
    for step in (2, 4):
        trainer.state = _random_like(trainer.state, step)
        trainer.step = step
        trainer.save()
        saved[step] = _host(trainer.state)
    trainer.checkpointer.wait()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trainer.state)
    meta = trainer._meta()
    trainer.close()
    return {"dir": root / "base", "cfg": to_dict(cfg), "abstract": abstract, "saved": saved, "meta": meta,
            "trainer_state": trainer.state}


# ------------------------------------------------------------------------------------------- corruptions


def _files(step_dir: pathlib.Path, sub: str) -> list[pathlib.Path]:
    return sorted((f for f in (step_dir / sub).iterdir() if f.is_file()), key=lambda f: (-f.stat().st_size, f.name))


def _flip(f: pathlib.Path, at: float = 0.5, n: int = 64) -> None:
    data = bytearray(f.read_bytes())
    i = min(int(len(data) * at), max(0, len(data) - n))
    for j in range(i, min(i + n, len(data))):
        data[j] ^= 0xFF
    f.write_bytes(bytes(data))


def _truncate(f: pathlib.Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _edit_meta(s: pathlib.Path) -> None:  # valid JSON, a plausible value: the data position of step 5
    f = s / "meta" / "metadata"
    meta = json.loads(f.read_text())
    meta["data_position"] = 5
    f.write_text(json.dumps(meta))


def _leftover_tmp(s: pathlib.Path) -> None:  # what a save killed half-way leaves (orbax names it this way)
    tmp = s.parent / "6.orbax-checkpoint-tmp"
    shutil.copytree(s, tmp)
    for f in _files(tmp, "state/ocdbt.process_0/d")[:2]:
        f.unlink()


def _empty(s: pathlib.Path) -> None:
    for child in s.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


DATA = "state/ocdbt.process_0/d"
#: kind → (damage done to step 4's folder, expected outcome: "fallback" (detected, step 2 restored) or
#: "harmless" (step 4 restores bit-exactly)).
CORRUPTIONS = {
    "flip 64 bytes in the largest array data file": (lambda s: _flip(_files(s, DATA)[0]), "fallback"),
    "flip 1 byte in every array data file": (lambda s: [_flip(f, 0.5, 1) for f in _files(s, DATA)], "fallback"),
    "flip the last 64 bytes of a data file": (lambda s: _flip(_files(s, DATA)[0], 1.0), "harmless"),
    "zero-fill an array data file (same size)": (
        lambda s: _files(s, DATA)[0].write_bytes(bytes(_files(s, DATA)[0].stat().st_size)), "fallback"),
    "truncate an array data file to half": (lambda s: _truncate(_files(s, DATA)[0]), "fallback"),
    "delete an array data file": (lambda s: _files(s, DATA)[0].unlink(), "fallback"),
    "flip bytes in the per-process OCDBT manifest": (
        lambda s: _flip(s / "state/ocdbt.process_0/manifest.ocdbt"), "harmless"),
    "delete the OCDBT root manifest": (lambda s: (s / "state/manifest.ocdbt").unlink(), "fallback"),
    "flip bytes in the OCDBT b-tree node": (lambda s: _flip(_files(s, "state/d")[0]), "fallback"),
    "flip bytes in the pytree metadata (_METADATA)": (lambda s: _flip(s / "state/_METADATA"), "fallback"),
    "delete the sharding file (_sharding)": (lambda s: (s / "state/_sharding").unlink(), "harmless"),
    "flip bytes in array_metadatas": (lambda s: _flip(s / "state/array_metadatas/process_0"), "fallback"),
    "edit the step metadata (valid JSON)": (_edit_meta, "fallback"),
    "truncate the step metadata": (lambda s: _truncate(s / "meta/metadata"), "fallback"),
    "garble _CHECKPOINT_METADATA": (lambda s: _flip(s / "_CHECKPOINT_METADATA", 0.3), "harmless"),
    "delete the commit markers (commit_success.txt)": (
        lambda s: [f.unlink() for f in s.rglob("commit_success.txt")], "harmless"),
    "leftover temporary folder of a killed save": (_leftover_tmp, "harmless"),
    "empty step folder": (_empty, "fallback"),
}

RESULTS: dict[str, str] = {}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corruption_is_detected_or_harmless(run, tmp_path, kind):
    damage, expected = CORRUPTIONS[kind]
    d = tmp_path / "ckpt"
    shutil.copytree(run["dir"], d)
    damage(d / "4")
    logs = []
    ck = Checkpointer(str(d), keep=3, async_save=False, log=logs.append)
    try:
        assert ck.open_run(run["cfg"], resume=True)
        state, meta = ck.restore_newest_good(run["abstract"])
        got = meta["step"]
        assert _equal(_host(state), run["saved"][got]), "restored values differ from what was saved"
        assert meta["data_position"] == got
        warnings = [line for line in logs if line.startswith("warning:")]
        if got == 2:
            outcome = "fallback"
            assert len(warnings) == 1 and "\n" not in warnings[0] and "step 4" in warnings[0], logs
            aside = list((d / SET_ASIDE).glob("corrupt-*/4"))
            assert len(aside) == 1 and not (d / "4").exists()  # nothing lost: moved, not deleted
            # The run continues: step 4 can be written again and restores exactly.
            ck.save(4, state, dict(run["meta"], step=4, data_position=4))
            ck.wait()
            again, meta4 = ck.restore(run["abstract"], 4)
            assert meta4["step"] == 4 and _equal(_host(again), run["saved"][2])
        else:
            outcome = "harmless"
            assert got == 4 and not warnings and not (d / SET_ASIDE).exists(), logs
        detail = warnings[0].split("cannot be restored: ", 1)[1] if warnings else "step 4 restored bit-exactly"
        RESULTS[kind] = f"{outcome}: {detail}"
        assert outcome == expected, RESULTS[kind]
    finally:
        ck.close()


def test_print_corruption_table():
    """Runs last in this file: prints what each corruption did (for the record)."""
    print()
    for kind, result in RESULTS.items():
        print(f"{kind:50s} -> {result[:160]}")


# ------------------------------------------------------------------------------------------------- digest


def test_digest_catches_any_single_element_change_and_ignores_sharding(run):
    state = run["trainer_state"]
    flat = flatten(state)
    digests, nonfinite = array_digests(flat)
    floats = [k for k, v in flat.items() if np.issubdtype(v.dtype, np.floating)]
    assert not nonfinite and len({digests[k] for k in floats}) == len(floats)  # distinct arrays, distinct digests
    key = max(flat, key=lambda k: flat[k].size)
    x = np.asarray(flat[key])
    rng = np.random.default_rng(0)
    for _ in range(20):  # one bit of one element, anywhere
        y = x.copy().reshape(-1)
        i, bit = rng.integers(y.size), rng.integers(32)
        y.view(np.uint32)[i] ^= np.uint32(1 << bit)
        changed, _ = array_digests({key: jax.numpy.asarray(y.reshape(x.shape))})
        assert changed[key] != digests[key]
    # Two elements swapped (same multiset of values): caught too.
    y = x.copy().reshape(-1)
    y[[0, 1]] = y[[1, 0]]
    if y[0] != y[1]:
        assert array_digests({key: jax.numpy.asarray(y.reshape(x.shape))})[0][key] != digests[key]
    # bfloat16 / int / bool arrays digest; a NaN is reported.
    extra = {"bf16": jax.numpy.ones((3, 5), jax.numpy.bfloat16), "i": jax.numpy.arange(7), "b": jax.numpy.ones(4, bool),
             "nan": jax.numpy.array([1.0, float("nan")])}
    d2, bad = array_digests(extra)
    assert set(d2) == set(extra) and bad == ["nan"]


def test_digests_are_one_program_per_device_set(run, monkeypatch):
    """A save digests the whole state in one program (per set of devices), never one per array: dozens of small
    multi-device programs in flight deadlocked simulated CPU devices (jrt_jax.runs.array_digests)."""
    from jrt_jax.runs import digests as run_format

    calls = []
    real = run_format._digests_jit
    monkeypatch.setattr(run_format, "_digests_jit", lambda group: calls.append(sorted(group)) or real(group))
    flat = flatten(run["trainer_state"])
    assert len(flat) > 10
    digests, _ = array_digests(flat)
    assert len(calls) == 1 and calls[0] == sorted(flat)
    calls.clear()
    mixed = {"host": np.arange(6, dtype=np.float32), "device": jax.numpy.arange(6, dtype=jax.numpy.float32)}
    mixed_digests, _ = array_digests(mixed)
    assert len(calls) == 2 and mixed_digests["host"] == mixed_digests["device"]
    assert list(array_digests(flat)[0]) == list(flat)  # keys in the caller's order


def test_digest_is_the_same_on_any_mesh(tmp_path):
    """The same values digest identically whether replicated or sharded over 4 devices (subprocess)."""
    import subprocess
    import sys

    code = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from train.checkpoint import array_digests
x = np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))
one = array_digests({"x": jnp.asarray(x)})[0]["x"]
for spec in (P("a", "b"), P("b", None), P(None, ("a", "b"))):
    assert array_digests({"x": jax.device_put(x, NamedSharding(mesh, spec))})[0]["x"] == one, spec
print("ok", one)
"""
    env = simulated_devices_env(4)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- ownership


def test_resume_false_on_another_runs_directory_refuses(run, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(run["dir"], d)
    before = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    ck = Checkpointer(str(d), keep=3, async_save=False)
    try:
        with pytest.raises(CheckpointError) as e:
            ck.open_run(run["cfg"], resume=False)
    finally:
        ck.close()
    msg = str(e.value)
    assert "\n" not in msg and "already holds checkpoints (steps [2, 4])" in msg and "overwrite" in msg
    owner = json.loads((d / "jrt_run.json").read_text())["run_id"]
    assert f"run {owner}" in msg
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == before  # untouched


def test_overwrite_sets_the_old_run_aside(run, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(run["dir"], d)
    old_owner = json.loads((d / "jrt_run.json").read_text())["run_id"]
    logs = []
    ck = Checkpointer(str(d), keep=3, async_save=False, log=logs.append)
    try:
        assert ck.open_run(run["cfg"], resume=False, overwrite=True) is False
        assert ck.all_steps() == []
        (moved,) = (d / SET_ASIDE).glob("overwritten-*")
        assert sorted(p.name for p in moved.iterdir()) == ["2", "4", "jrt_run.json"]
        assert json.loads((moved / "jrt_run.json").read_text())["run_id"] == old_owner
        assert json.loads((d / "jrt_run.json").read_text())["run_id"] not in (old_owner, None)
        assert len(logs) == 1 and "moved steps [2, 4]" in logs[0]
    finally:
        ck.close()


def test_resume_adopts_a_legacy_directory_and_notes_config_changes(run, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(run["dir"], d)
    logs = []
    changed = dict(run["cfg"], optim=dict(run["cfg"]["optim"], lr=0.5))
    ck = Checkpointer(str(d), keep=3, async_save=False, log=logs.append)
    try:
        assert ck.open_run(changed, resume=True)
        assert logs and "differs from its start in: optim.lr" in logs[-1]
    finally:
        ck.close()
    (d / "jrt_run.json").unlink()  # checkpoints written before owner files existed
    logs.clear()
    ck = Checkpointer(str(d), keep=3, async_save=False, log=logs.append)
    try:
        assert ck.open_run(run["cfg"], resume=True) and "adopting" in logs[0]
        assert (d / "jrt_run.json").is_file()
    finally:
        ck.close()


def test_explicit_step_and_layout_mismatch(run, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(run["dir"], d)
    logs = []
    ck = Checkpointer(str(d), keep=3, async_save=False, log=logs.append)
    try:
        state, meta = ck.restore(run["abstract"], 2)
        assert meta["step"] == 2 and _equal(_host(state), run["saved"][2])
        ck.set_aside_newer(2)
        assert ck.all_steps() == [2] and list((d / SET_ASIDE).glob("after-step-2-*/4"))
        with pytest.raises(CheckpointError, match=r"step 7 does not exist .*steps: \[2\]"):
            ck.restore(run["abstract"], 7)
        wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] + 1,) + x.shape[1:], x.dtype)
                             if x.ndim else x, run["abstract"])
        with pytest.raises(CheckpointError, match="another model / optimizer layout") as e:
            ck.restore(wrong, 2)
        assert "\n" not in str(e.value)
    finally:
        ck.close()


def test_every_step_corrupt_is_an_error_and_changes_nothing(run, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(run["dir"], d)
    for step in (2, 4):
        _truncate(d / str(step) / "meta" / "metadata")
    ck = Checkpointer(str(d), keep=3, async_save=False)
    try:
        with pytest.raises(CheckpointError, match=r"no restorable checkpoint .*step 4: .*step 2: ") as e:
            ck.restore_newest_good(run["abstract"])
        assert "\n" not in str(e.value) and "nothing was changed" in str(e.value)
        assert ck.all_steps() == [2, 4] and not (d / SET_ASIDE).exists()
    finally:
        ck.close()


def test_keep_prunes_only_after_a_finished_save_and_refuses_nonfinite(run, tmp_path):
    d = tmp_path / "ckpt"
    state = run["trainer_state"]
    ck = Checkpointer(str(d), keep=2, async_save=True)
    try:
        assert ck.open_run(run["cfg"], resume=False) is False
        for step in (1, 2, 3):
            ck.save(step, state, dict(run["meta"], step=step, data_position=step))
        ck.wait()
        assert ck.all_steps() == [2, 3]
        bad = jax.tree.map(lambda x: x * np.nan if np.issubdtype(x.dtype, np.floating) else x, state)
        with pytest.raises(CheckpointError, match="refusing to save checkpoint step 4 .*non-finite"):
            ck.save(4, bad, dict(run["meta"], step=4, data_position=4))
        assert ck.all_steps() == [2, 3]
    finally:
        ck.close()


def test_directory_that_is_a_file_or_missing(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match=r"checkpoint.dir '.*file' is a file, not a directory"):
        Checkpointer(str(f), keep=1, async_save=False)
    with pytest.raises(CheckpointError, match="its parent .* is a file"):
        Checkpointer(str(f / "sub"), keep=1, async_save=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpointer(str(tmp_path / "none"), keep=1, async_save=False, create=False)
