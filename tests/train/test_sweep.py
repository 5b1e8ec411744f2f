"""`jrt sweep` (`train.sweep`), the on-device generators (`train.data.device`) and the recall presets.

The sweep is held to `jrt train`: a replica trains as the trainer trains the same (seed, lr) on the same on-device
batches, whatever the number of replicas beside it and however many steps one scan runs; a resumed sweep ends as an
uninterrupted one. The models are tiny (d 16, 2 layers, T 16, 6 steps); the runs the tests compare are made once per
module (`runs`).
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import cli
from train.config import load_config, load_run_config
from train.data import make_task
from train.data.device import ANSWER_SEP, LIST_SEP, START, batch_key, device_task, make_batch
from train.sweep import Sweep, best_of

FIRST = 4  # first content id
TASK = ["data.kind=mqar", "data.num_pairs=4", "data.num_queries=2", "data.num_keys=16", "data.num_values=16",
        "data.seq_len=16", "data.batch_size=8", "data.eval_examples=16"]
# recall-jrt (BaseConv + PLA, JRT objective) with 15 % masking, so the per-replica masking RNG is exercised too.
BASE = ["model.preset=recall-jrt", "model.overrides={d_model: 16, feature_dim: 4, vocab_size: 40, "
        "implementation: reference}", *TASK, "steps=5", "optim.decay_steps=5", "optim.warmup_steps=2",
        "objective.mlm_prob=0.15", "logging.every=1", "logging.progress=false", "checkpoint.async_save=false"]
STEP_KEYS = ("loss", "ntp_loss", "mlm_loss", "grad_norm")
TOL = 1e-5


def _quiet(*args, **kwargs):
    pass


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _sweep(directory, extra, *, checkpoints=False, stop_after_first_scan=False):
    """(summary, runner) of a sweep of BASE + extra logged to `directory`."""
    cfg = load_config(None, BASE + [f"logging.dir={directory}"] + ([] if checkpoints else ["checkpoint.dir=null"])
                      + extra)
    runner = Sweep(cfg, log=_quiet)
    if stop_after_first_scan:  # what SIGTERM does: stop after the scan in flight, save, no final evaluation
        scan = runner._run_scan

        def once(*args):
            runner._stop_requested = True
            return scan(*args)

        runner._run_scan = once
    try:
        return runner.run(), runner
    finally:
        runner.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs the tests compare, each made once."""
    from train.trainer import Trainer

    root = tmp_path_factory.mktemp("sweep")
    out = {"root": root}
    cfg = load_config(None, BASE + [f"logging.dir={root}/train", "checkpoint.dir=null", "seed=3", "optim.lr=2e-3",
                                    "data.on_device=true"])
    trainer = Trainer(cfg, log=_quiet)
    try:
        out["train"] = trainer.run()
    finally:
        trainer.close()
    # 4 steps per scan: scans of 4 and 1 steps. Runs of the same replica count and scan lengths are one program
    # (the test session's persistent compilation cache compiles it once): the K = 1 run reuses the last scan's.
    out["one"] = _sweep(root / "one", ["sweep.seeds=[3]", "sweep.lr=[2e-3]", "sweep.steps_per_scan=4"])
    out["one_k1"] = _sweep(root / "one_k1", ["sweep.seeds=[3]", "sweep.lr=[2e-3]", "sweep.steps_per_scan=1"])
    out["single_0"] = _sweep(root / "single_0", ["sweep.seeds=[0]", "sweep.lr=[5e-3]", "sweep.steps_per_scan=4"])
    # lr 1e30 diverges by its second step: it must be frozen, reported and never block a checkpoint
    # batching=vmap: the single runs are "auto" (a loop over the replicas on CPU), the grid the batched program
    grid = ["sweep.seeds=[0, 3]", "sweep.lr=[2e-3, 5e-3, 1e30]", "sweep.steps_per_scan=4", "checkpoint.every=3",
            "sweep.batching=vmap"]
    out["grid"] = _sweep(root / "grid", grid, checkpoints=True)
    out["stopped"] = _sweep(root / "resumed", grid, checkpoints=True, stop_after_first_scan=True)
    return out


def _step_rows(directory, seed=None, lr=None) -> list[dict]:
    return [r for r in _rows(pathlib.Path(directory) / "metrics.jsonl")
            if "loss" in r and (seed is None or (r["seed"], r["lr"]) == (seed, lr))]


def _close(a: dict, b: dict, keys, tol=TOL, what=""):
    for k in keys:
        if a[k] is None or b[k] is None:  # a non-finite metric (a diverged replica) is null
            assert a[k] is b[k] is None, f"{what} {k}: {a[k]} vs {b[k]}"
        else:
            assert math.isclose(a[k], b[k], rel_tol=tol, abs_tol=tol), f"{what} {k}: {a[k]} vs {b[k]}"


# ------------------------------------------------------------------------------------------- held to jrt train


@pytest.mark.slow
def test_one_replica_sweep_equals_jrt_train(runs):
    root = runs["root"]
    trained = [r for r in _rows(root / "train" / "metrics.jsonl") if "loss" in r]
    swept = _step_rows(root / "one")
    assert [r["step"] for r in trained] == [r["step"] for r in swept] == [1, 2, 3, 4, 5]
    for t, s in zip(trained, swept):
        _close(t, s, STEP_KEYS, what=f"step {t['step']}")
        assert math.isclose(t["lr"], s["scheduled_lr"], rel_tol=1e-6)
        assert (s["seed"], s["lr"]) == (3, 2e-3)
    assert trained[0]["mlm_loss"] > 0  # the masking (per-replica RNG) took part
    assert trained[-1]["loss"] != trained[0]["loss"]
    row = runs["one"][0]["runs"][0]
    _close(runs["train"], row, ("eval_accuracy", "eval_loss"), what="evaluation")


@pytest.mark.slow
def test_k_step_scan_equals_single_steps(runs):
    root = runs["root"]
    for a, b in zip(_step_rows(root / "one"), _step_rows(root / "one_k1")):
        _close(a, b, STEP_KEYS, tol=1e-6, what=f"step {a['step']}")
    (_, four), (_, single) = runs["one"], runs["one_k1"]
    for x, y in zip(jax.tree.leaves(four.state["params"]), jax.tree.leaves(single.state["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_vmapped_replicas_equal_separate_sweeps(runs):
    root = runs["root"]
    grid = runs["grid"][0]["runs"]
    assert [(r["seed"], r["lr"]) for r in grid] == [(s, lr) for s in (0, 3) for lr in (2e-3, 5e-3, 1e30)]
    for seed, lr, alone in ((3, 2e-3, "one"), (0, 5e-3, "single_0")):
        for a, b in zip(_step_rows(root / "grid", seed, lr), _step_rows(root / alone), strict=True):
            _close(a, b, STEP_KEYS, what=f"replica ({seed}, {lr}) step {a['step']}")
        mine = next(r for r in grid if (r["seed"], r["lr"]) == (seed, lr))
        _close(mine, runs[alone][0]["runs"][0], ("loss", "eval_accuracy", "eval_loss"), what=f"({seed}, {lr})")
    healthy = [r for r in grid if r["lr"] < 1]
    assert len({r["loss"] for r in healthy}) == 4  # the replicas really differ (seed and lr both matter)
    assert all(r["diverged_at"] is None for r in healthy)
    for r in grid:
        if r["lr"] > 1:  # frozen at its last finite state, reported, never the best
            assert r["diverged_at"] in (1, 2, 3), r
    assert runs["grid"][0]["best"]["lr"] < 1


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_cli_outputs(runs, capsys):
    root = runs["root"]
    stopped = runs["stopped"][0]
    assert stopped["stopped"] == "SIGTERM" and stopped["steps"] == 4  # the checkpoint: first boundary after 3
    assert not (root / "resumed" / "results.jsonl").exists()
    code = cli.main(["sweep", "--resume", str(root / "resumed"), "--json", "logging.progress=true"])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = json.loads(out)
    assert set(printed) == {"runs", "best"}
    assert "restored checkpoint step 4" in err and "replica-step" in err  # the log and the bar go to stderr
    # the same results as the uninterrupted sweep
    for a, b in zip(printed["runs"], runs["grid"][0]["runs"], strict=True):
        assert (a["seed"], a["lr"], a["step"]) == (b["seed"], b["lr"], 5)
        _close(a, b, ("loss", "eval_accuracy", "eval_loss"), what=f"resumed ({a['seed']}, {a['lr']})")
    resumed, whole = _rows(root / "resumed" / "metrics.jsonl"), _rows(root / "grid" / "metrics.jsonl")
    key = lambda r: (r["step"], r["replica"], "loss" in r)
    assert sorted(map(key, resumed)) == sorted(map(key, whole))  # every step once, nothing left from life 1
    for a, b in zip(sorted(resumed, key=key), sorted(whole, key=key)):
        _close(a, b, [k for k in (*STEP_KEYS, "eval_accuracy", "eval_loss") if k in b])
    # results.jsonl: one row per replica, the rows printed; best = highest accuracy, ties to the lowest loss
    results = _rows(root / "resumed" / "results.jsonl")
    assert results == printed["runs"]
    assert all({"seed", "lr", "step", "eval_accuracy", "eval_loss", "loss"} <= set(r) for r in results)
    healthy = [r for r in results if r["diverged_at"] is None]
    top = max(r["eval_accuracy"] for r in healthy)
    assert printed["best"] == min((r for r in healthy if r["eval_accuracy"] == top), key=lambda r: r["eval_loss"])
    # metrics.jsonl: a row per replica and step with its seed and lr; the evaluation rows at the end
    steps = [r for r in resumed if "loss" in r]
    assert sorted((r["step"], r["seed"], r["lr"]) for r in steps) == sorted(
        (s, seed, lr) for s in range(1, 6) for seed in (0, 3) for lr in (2e-3, 5e-3, 1e30))
    evals = [r for r in resumed if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [5] * 6


@pytest.mark.slow
def test_resume_with_other_replicas_is_refused(runs):
    for lrs in ("[1e-3, 5e-3, 1e30]", "[2e-3, 5e-3]"):  # the same count of replicas, or another
        cfg = load_run_config(runs["root"] / "grid", [f"sweep.lr={lrs}", "steps=9"])
        with pytest.raises(ValueError, match=r"another sweep's replicas \(seed, lr\) \[\(0, 0.002\)"):
            Sweep(cfg, log=_quiet)


def test_best_of_ties_and_divergence():
    rows = [{"seed": 0, "lr": 1e-3, "eval_accuracy": 0.5, "eval_loss": 1.0, "diverged_at": None},
            {"seed": 1, "lr": 1e-3, "eval_accuracy": 0.5, "eval_loss": 0.8, "diverged_at": None},
            {"seed": 2, "lr": 1e-2, "eval_accuracy": 0.9, "eval_loss": 0.1, "diverged_at": 4}]
    assert best_of(rows)["seed"] == 1
    assert best_of(rows[2:]) is None


# ------------------------------------------------------------------------------------------ the generators


_make_batch = jax.jit(make_batch, static_argnums=1)


def _batch(overrides, split=0, step=0):
    cfg = load_config(None, overrides + ["data.on_device=true", "data.batch_size=32"])
    task = device_task(cfg.data)
    out = _make_batch(batch_key(task.seed, split, step), task)
    return task, np.asarray(out["tokens"]), np.asarray(out["labels"])


@pytest.mark.parametrize("order", ["kv_first", "queries_first"])
def test_device_mqar_format(order):
    task, tokens, labels = _batch(TASK + [f"data.order={order}"])
    p, q, m = 4, 2, task.enc_len
    assert m == 2 * p + q + 1 and tokens.shape == labels.shape == (32, 16) and tokens.dtype == np.int32
    for row, lab in zip(tokens, labels):
        context, asked = (row[:2 * p], row[2 * p + 1:m]) if order == "kv_first" else (row[q + 1:m], row[:q])
        assert row[2 * p if order == "kv_first" else q] == 1  # SEP
        keys, values = context[0::2], context[1::2]
        assert len(set(keys)) == p and all(FIRST <= k < FIRST + 16 for k in keys)
        assert all(FIRST + 16 <= v < FIRST + 32 for v in values)
        table = dict(zip(keys, values))
        assert list(row[m:m + 2 * q:2]) == list(asked) and len(set(asked)) == q
        assert list(row[m + 1:m + 2 * q:2]) == [table[k] for k in asked]  # the decoder answers in order
        want = np.full(16, -1)
        want[m:m + 2 * q:2] = [table[k] for k in asked]  # at q_i, predict a_i
        assert list(lab) == list(want)
        assert (row[m + 2 * q:] == 0).all()


@pytest.mark.parametrize("order", ["long_first", "short_first"])
def test_device_set_disjointness_format(order):
    sets = ["data.kind=set_disjointness", "data.short_set=3", "data.long_set=6", "data.universe=20", "data.seq_len=12",
            f"data.order={order}"]
    task, tokens, labels = _batch(sets)
    m = task.enc_len
    assert m == 10
    first_len = 6 if order == "long_first" else 3
    for row, lab in zip(tokens, labels):
        first, second = row[:first_len], row[first_len + 1:m]
        assert row[first_len] == 1 and row[m] == 1  # SEP between the sets, SEP before the answer
        shared = set(first) & set(second)
        assert len(shared) == 1 and len(set(first)) == len(first) and len(set(second)) == len(second)
        (x,) = shared
        assert lab[m] == x and row[m + 1] == x and (lab[np.arange(12) != m] == -1).all()


@pytest.mark.parametrize("halves", ["shuffled", "fixed"])
def test_device_set_disjointness_in_the_papers_format(halves):
    universe = 40
    sets = ["data.kind=set_disjointness", "data.set_format=paper", "data.size_pairs=[[2, 6], [6, 2], [3, 3]]",
            f"data.universe={universe}", "data.seq_len=18", f"data.set_halves={halves}"]
    task, tokens, labels = _batch(sets)
    m = task.enc_len
    assert m == 2 + 6 + 6
    seen = set()
    for row, lab in zip(tokens, labels):
        start = int(np.flatnonzero(row == START)[0])
        sep = int(np.flatnonzero(row == LIST_SEP)[0])
        assert (row[:start] == 0).all()  # left padding only
        a, b = row[start + 1:sep], row[sep + 1:m]
        seen.add((len(a), len(b)))
        assert row[m] == ANSWER_SEP and (row[m + 2:] == 0).all()
        assert (a >= FIRST).all() and (b >= FIRST).all() and len(set(a)) == len(a) and len(set(b)) == len(b)
        shared = set(a) & set(b)
        assert len(shared) == 1
        (x,) = shared
        assert lab[m] == x and row[m + 1] == x and (lab[np.arange(18) != m] == -1).all()
        if halves == "fixed":
            half = universe // 2
            assert (a < FIRST + half).all() and (np.delete(b, np.flatnonzero(b == x)) >= FIRST + half).all()
    assert seen == {(2, 6), (6, 2), (3, 3)}


def test_device_batches_are_a_function_of_seed_split_and_step():
    _, a, _ = _batch(TASK, split=0, step=5)
    _, b, _ = _batch(TASK, split=0, step=5)
    _, c, _ = _batch(TASK, split=1, step=5)
    _, d, _ = _batch(TASK, split=0, step=6)
    assert (a == b).all() and not (a == c).all() and not (a == d).all()
    # the trainer's view (`data.on_device=true`): the same rows from the host, any subset of them
    cfg = load_config(None, TASK + ["data.on_device=true", "data.batch_size=32"])
    host = make_task(cfg.data).batch(5, range(8, 16))
    assert (host.tokens == a[8:16]).all() and host.enc_len == 11


def test_device_read_twice():
    task, tokens, labels = _batch(TASK + ["data.read_twice=true", "data.seq_len=27"])
    m = 11
    assert task.enc_len == 2 * m and tokens.shape == (32, 27)
    assert (tokens[:, :m] == tokens[:, m:2 * m]).all() and (labels[:, :2 * m] == -1).all()
    assert ((labels >= 0).sum(1) == 2).all()


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("override, match", [
    ("sweep.seeds=[]", "sweep.seeds must list at least one value"),
    ("sweep.lr=[]", "sweep.lr must list at least one value"),
    ("sweep.lr=[0.0]", "sweep.lr must hold finite learning rates > 0; got 0.0"),
    ("sweep.lr=[-1e-3]", "sweep.lr must hold finite"),
    ("sweep.lr=[.nan]", "sweep.lr must hold finite"),
    ("sweep.lr=[.inf]", "sweep.lr must hold finite"),
    ("sweep.lr=[1e-3, 1e-3]", "sweep.lr has repeated values"),
    ("sweep.seeds=[1, x]", r"sweep.seeds\[1\] must be an integer"),
    ("sweep.steps_per_scan=0", "sweep.steps_per_scan must be > 0"),
    ("data.on_device=true", "data.kind='text' has no on-device generator"),
])
def test_config_errors(override, match):
    extra = ["data.kind=text", "data.text_files=[x]"] if override == "data.on_device=true" else []
    with pytest.raises(ValueError, match=match):
        load_config(None, extra + [override])


@pytest.mark.parametrize("overrides, match", [
    (["data.set_format=paper"], "is a set-disjointness format"),
    (["data.kind=set_disjointness", "data.size_pairs=[[4, 16]]"], "data.size_pairs applies to data.set_format=paper"),
    (["data.kind=set_disjointness", "data.set_format=paper", "data.size_pairs=[[4, 0]]"], "positive set sizes"),
    (["data.kind=set_disjointness", "data.set_format=paper", "objective.mlm_prob=0.15"], "answer separator"),
])
def test_set_format_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, ["data.kind=mqar"] + overrides)


def test_task_errors():
    paper = ["data.kind=set_disjointness", "data.set_format=paper", "data.universe=20"]
    with pytest.raises(ValueError, match="data.universe=20 is too small"):
        device_task(load_config(None, paper + ["data.size_pairs=[[11, 2]]", "data.seq_len=64"]).data)
    with pytest.raises(ValueError, match="needs the on-device generator|on-device generator only"):
        make_task(load_config(None, paper).data)
    with pytest.raises(ValueError, match="data.seq_len=12 is too short"):
        device_task(load_config(None, TASK + ["data.seq_len=12"]).data)


@pytest.mark.parametrize("args, match", [
    (["sweep.lr=[]"], "sweep.lr must list at least one value"),
    (["data.kind=text", "data.text_files=[x]", "logging.dir=null"], "data.kind='text' has no on-device generator"),
    (["mesh.sequence=2", "logging.dir=null"], "mesh.sequence=2: jrt sweep"),
])
def test_cli_errors_are_one_line_exit_2(args, match, capsys):
    code = cli.main(["sweep"] + args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("jrt sweep: error:"), err
    assert __import__("re").search(match, err), err


# ---------------------------------------------------------------------------------------- the recall presets


def test_recall_presets():
    from jrt_jax import models
    from jrt_jax.convert.errors import ConversionError
    from jrt_jax.convert.hazy import config_to_dict

    want = {"recall-based": ("base_conv", "causal_linear"), "recall-jrt": ("base_conv", "prefix_linear"),
            "recall-attention": ("base_conv", "attention")}
    for name, mixers in want.items():
        cfg = models.config_from_preset(name)
        assert cfg.mixers == mixers and cfg.num_heads == 1 and cfg.window_layers == () and not cfg.mlp
        shapes = models.param_shapes(cfg)
        assert not any(".mlp." in p or ".norm2." in p for p in shapes)
        with pytest.raises(ConversionError, match="release format"):
            config_to_dict(cfg)
    f8 = models.JRTConfig.preset("recall-based", feature_dim=8)
    assert models.param_shapes(f8)["layers.1.mixer.proj_q.kernel"][0] == (64, 8)
    with pytest.raises(ValueError, match=r"layers \[1\] are in both linear_layers and attention_layers"):
        models.JRTConfig.preset("recall-based", attention_layers=(1,))


def test_attention_without_positions_and_its_cache():
    from flax import nnx

    from jrt_jax import nn
    from jrt_jax.nn.context import SequenceContext

    layer = nn.Attention(8, 1, 1, 8, use_rope=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 8))
    q, k, v = (proj(x) for proj in (layer.q_proj, layer.k_proj, layer.v_proj))
    scores = jnp.einsum("btd,bsd->bts", q, k) / jnp.sqrt(8.0) + jnp.where(jnp.tril(jnp.ones((5, 5))), 0, -jnp.inf)
    want = layer.o_proj(jnp.einsum("bts,bsd->btd", jax.nn.softmax(scores, -1), v))
    np.testing.assert_allclose(layer(x)[0], want, rtol=1e-5, atol=1e-6)
    # the recall-attention model decodes with this layer's KV cache: a prefill of 4 tokens, then the fifth
    _, cache = layer(x[:, :4], SequenceContext(), layer.init_cache(2, 5))
    step, _ = layer(x[:, 4:], SequenceContext.for_step(jnp.full((2,), 4)), cache)
    np.testing.assert_allclose(step[:, 0], want[:, 4], rtol=1e-5, atol=1e-6)
