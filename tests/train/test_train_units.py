"""Trainer pieces without a training run: config, synthetic data, objectives, mesh arithmetic, optimizer."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import mesh as meshlib
from train import objectives
from train.config import TrainConfig, load_config, parse_override, to_dict
from train.data import make_task
from train.data.synthetic import MQAR, PAD, SEP, SetDisjointness
from train.optim import decay_mask, make_optimizer

# ----------------------------------------------------------------------------------------------- config


def test_default_config_is_valid_and_round_trips(tmp_path):
    cfg = TrainConfig()
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(path) == cfg


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\noptim:\n  lr: 0.01\nmodel:\n  preset: based-micro\n")
    cfg = load_config(path, ["optim.lr=3e-4", "mesh.rules=[[embed, fsdp]]", "data.order=short_first",
                             "data.kind=set_disjointness", "model.overrides.d_model=32"])
    assert cfg.steps == 7 and cfg.optim.lr == pytest.approx(3e-4) and cfg.model.preset == "based-micro"
    assert cfg.mesh.rules == (("embed", "fsdp"),) and cfg.model.overrides == {"d_model": 32}
    assert parse_override("logging.dir=null") == ("logging.dir", None)


@pytest.mark.parametrize("override,match", [
    ("optim.learning_rate=1", r"unknown config key\(s\) \['optim.learning_rate'\]"),
    ("bogus=1", r"unknown config key\(s\) \['bogus'\]"),
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("steps=1.5", "steps must be an integer"),
    ("data.kind=images", "data.kind must be one of"),
    ("data.order=sideways", "data.order must be one of"),
    ("mesh.data=0", "mesh.data must be a positive size or -1"),
    ("mesh.fsdp=-1", "at most one of data, fsdp, tensor may be -1"),
    ("optim.grad_accum=3", "data.batch_size=32 must be divisible by optim.grad_accum=3"),
    ("objective.mlm_prob=1.5", "objective.mlm_prob must be in"),
    ("steps", "must look like key=value"),
    ("model.overrides={d_model: [}", r"the value is not valid YAML \(expected the node content, but found '}' at "
                                     r"column 12 of the value\)"),
])
def test_config_errors_name_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="is a directory; give a YAML or JSON file"):
        load_config(tmp_path)


# ------------------------------------------------------------------------------------------------- data


def test_mqar_examples_are_correct_and_deterministic():
    task = MQAR(seq_len=64, num_pairs=6, num_queries=4, num_keys=10, num_values=10, order="kv_first", seed=3)
    b = task.batch(5, range(8))
    again = task.batch(5, range(4, 8))
    np.testing.assert_array_equal(b.tokens[4:], again.tokens)  # a row depends on (seed, step, row) only
    assert not np.array_equal(task.batch(6, range(8)).tokens, b.tokens)
    assert task.enc_len == 12 + 1 + 4
    for tokens, labels in zip(b.tokens, b.labels):
        assert tokens[12] == SEP
        np.testing.assert_array_equal(tokens[13:17], tokens[task.enc_len : task.enc_len + 8 : 2])
        pairs = dict(zip(tokens[:12:2], tokens[1:12:2]))
        pos = np.nonzero(labels >= 0)[0]
        assert len(pos) == 4 and pos[0] == task.enc_len
        for p in pos:  # at a queried key, predict its value
            assert labels[p] == pairs[tokens[p]] and tokens[p + 1] == labels[p]
        assert (tokens[task.enc_len + 8 :] == PAD).all()


def test_mqar_queries_first_announces_the_keys():
    task = MQAR(seq_len=64, num_pairs=6, num_queries=4, num_keys=10, num_values=10, order="queries_first")
    t = task.batch(0, range(1)).tokens[0]
    assert task.enc_len == 4 + 1 + 12 and t[4] == SEP
    np.testing.assert_array_equal(t[:4], t[task.enc_len : task.enc_len + 8 : 2])


@pytest.mark.parametrize("order", ["long_first", "short_first"])
def test_set_disjointness(order):
    task = SetDisjointness(seq_len=32, short_set=3, long_set=9, universe=40, order=order)
    for tokens, labels in zip(*(lambda bb: (bb.tokens, bb.labels))(task.batch(1, range(16)))):
        first_len = 9 if order == "long_first" else 3
        first, second = set(tokens[:first_len]), set(tokens[first_len + 1 : task.enc_len])
        assert tokens[first_len] == SEP and len(first) == first_len and len(second) == 12 - first_len
        (common,) = first & second
        assert labels[task.enc_len] == common and (labels >= 0).sum() == 1


def test_task_errors_and_vocab_check():
    with pytest.raises(ValueError, match="num_queries=5 must be <= num_pairs=4"):
        MQAR(seq_len=64, num_pairs=4, num_queries=5, num_keys=10, num_values=10)
    with pytest.raises(ValueError, match="too short"):
        MQAR(seq_len=10, num_pairs=4, num_queries=4, num_keys=10, num_values=10)
    cfg = load_config(None, ["data.kind=mqar", "data.seq_len=64", "data.num_keys=4000"])
    from jrt_jax.models import config_from_preset

    with pytest.raises(ValueError, match="vocab_size"):
        make_task(cfg.data, config_from_preset("jrt-micro"))


def test_text_readers_refuse_binary_files(tmp_path):
    """data.kind=text and `jrt eval --text` read text by one rule (`jrt_jax.datasets.read_utf8_text`): a binary
    file given by mistake is named with the byte offset, not tokenized as replacement characters."""
    from jrt_jax.evals.loading import read_texts
    from jrt_jax.models import config_from_preset

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\xff\xfe text")
    cfg = load_config(None, ["data.kind=text", f"data.text_files=[{bad}]", "data.tokenizer=bytes"])
    with pytest.raises(ValueError, match=r"bad.txt: not UTF-8 text \(invalid start byte at byte offset 2\); "
                                         "expected data.text_files"):
        make_task(cfg.data, config_from_preset("jrt-micro"))
    with pytest.raises(ValueError, match="bad.txt: not UTF-8 text .*expected --text"):
        read_texts([str(bad)])


# ------------------------------------------------------------------------------------------- objectives


def test_mlm_masking_rate_positions_and_labels():
    tokens = jax.random.randint(jax.random.PRNGKey(0), (64, 256), 4, 100)
    tokens = tokens.at[:, :10].set(PAD)  # left padding is never masked
    masked, labels = objectives.mlm_mask(jax.random.PRNGKey(1), tokens, 200, 0.15, 3)
    chosen = np.asarray(labels >= 0)
    assert not chosen[:, 200:].any() and not chosen[:, :10].any()
    rate = chosen[:, 10:200].mean()
    assert abs(rate - 0.15) < 0.01, rate  # 12160 Bernoulli draws: 5 sigma ≈ 0.016
    np.testing.assert_array_equal(np.asarray(labels)[chosen], np.asarray(tokens)[chosen])
    assert (np.asarray(masked)[chosen] == 3).all()
    np.testing.assert_array_equal(np.asarray(masked)[~chosen], np.asarray(tokens)[~chosen])


def test_jrt_loss_splits_and_weights():
    v = 5
    logits = jax.random.normal(jax.random.PRNGKey(2), (2, 6, v))
    labels = jnp.array([[1, 2, 3, 4, 0, -1], [0, 1, 2, 3, 4, 0]])
    mlm = jnp.array([[4, -1, 2, -1, -1, -1], [-1, 3, -1, -1, -1, -1]])
    ce = -jax.nn.log_softmax(logits)
    (ns, nc), (ms, mc) = objectives.jrt_loss(logits, labels, mlm, 3)
    want_ntp = sum(float(ce[b, t, labels[b, t]]) for b in range(2) for t in range(3, 6) if labels[b, t] >= 0)
    want_mlm = float(ce[0, 0, 4] + ce[0, 2, 2] + ce[1, 1, 3])
    assert nc == 5 and mc == 3
    np.testing.assert_allclose(ns, want_ntp, rtol=1e-5)
    np.testing.assert_allclose(ms, want_mlm, rtol=1e-5)
    np.testing.assert_allclose(objectives.combine((ns, nc), (ms, mc), 0.25), want_ntp / 5 + 0.25 * want_mlm / 3,
                               rtol=1e-5)


# ------------------------------------------------------------------------------------------ mesh, optim


def test_mesh_shape_resolution_and_errors():
    assert meshlib.mesh_shape(-1, 2, 2, 8) == (2, 2, 2)
    assert meshlib.mesh_shape(1, -1, 2, 8) == (1, 4, 2)
    with pytest.raises(ValueError, match="has 6 devices but 8 are available"):
        meshlib.mesh_shape(3, 2, 1, 8)
    with pytest.raises(ValueError, match="do not divide the 8 devices"):
        meshlib.mesh_shape(-1, 3, 1, 8)


def test_optimizer_schedule_and_decay_mask():
    cfg = load_config(None, ["optim.warmup_steps=10", "optim.lr=1.0", "optim.min_lr_ratio=0.1"]).optim
    _, schedule = make_optimizer(cfg, 100)
    assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1)
    mask = decay_mask({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})
    assert mask == {"w": True, "b": False}


def test_mlm_prob_defaults_by_data_kind():
    from train.config import resolved_mlm_prob

    assert resolved_mlm_prob(load_config(None, [])) == 0.0  # synthetic recall: the prefix is what must be recalled
    text = load_config(None, ["data.kind=text", "data.text_files=[shakespeare]"])
    assert resolved_mlm_prob(text) == 0.15  # the release's rate on text
    assert resolved_mlm_prob(load_config(None, ["objective.mlm_prob=0.3"])) == 0.3


def _events(directory):
    """Every Event record of the TensorBoard files in `directory` (TFRecord framing, CRCs not checked)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted(directory.glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + n])
            out.append((f.name, event))
            pos += 12 + n + 4
    return out


def test_resumed_metrics_purge_the_replayed_tensorboard_steps(tmp_path):
    from train.metrics import MetricsWriter

    first = MetricsWriter(str(tmp_path), start_step=0)
    for step in range(1, 11):
        first.write(step, {"loss": float(step)})
    first.close()
    import time

    time.sleep(1.1)  # tensorboardX names event files by the second: a real resume is never this quick
    resumed = MetricsWriter(str(tmp_path), start_step=6)  # the checkpoint was at step 6; steps 7.. are replayed
    for step in range(7, 9):
        resumed.write(step, {"loss": 100.0 + step})
    resumed.close()
    events = _events(tmp_path)
    files = sorted({name for name, _ in events})
    assert len(files) == 2
    purges = [e for name, e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert [e.step for e in purges] == [7]  # TensorBoard hides the first life's events from step 7 on
    first_life = [e.step for name, e in events if name == files[0] and e.summary.value]
    assert first_life == list(range(1, 11)) and not any(e.session_log.status for n, e in events if n == files[0])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6, 7, 8] and lines[-1]["loss"] == 108.0


def test_text_data_tokenizer_auto_is_the_checkpoints_own(tmp_path):
    """data.tokenizer=auto (the default) reads text with model.checkpoint's tokenizer; without one, GPT-2's."""
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers

    import jrt_jax
    from jrt_jax.tokenizer import TokenizerFile

    base = tmp_path / "base"
    jrt_jax.save_pretrained(jrt_jax.models.build(jrt_jax.models.config_from_preset("llama-tiny")), base)
    tok = Tokenizer(tk_models.WordLevel({"</s>": 0, "to": 1, "be": 2, "or": 3, "not": 4, "[UNK]": 5},
                                        unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(base / "tokenizer.json"))
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be " * 40)
    cfg = load_config(None, ["data.kind=text", f"data.text_files=[{text}]", "data.seq_len=8", "data.batch_size=2"])
    assert cfg.data.tokenizer == "auto"
    task = make_task(cfg.data, None, checkpoint=str(base))
    assert isinstance(task.tokenizer, TokenizerFile) and task.vocab_needed == 6
    batch = task.batch(0, range(2))
    assert set(np.unique(batch.tokens)) <= {0, 1, 2, 3, 4}
    assert make_task(cfg.data, None).tokenizer.vocab_size == 50257  # no checkpoint: GPT-2
    with pytest.raises(ValueError, match="data.tokenizer=auto: model.checkpoint .* has no tokenizer"):
        make_task(cfg.data, None, checkpoint=str(tmp_path / "nothing-here"))


def test_text_data_mixes_passkey_examples(tmp_path):
    """data.passkey_fraction: that share of the training rows are whole passkey examples (prompt + answer) of
    seq_len + 1 tokens, chosen by (seed, step, row); the held-out rows stay text."""
    import re

    text = tmp_path / "t.txt"
    text.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 400)
    cfg = load_config(None, ["data.kind=text", f"data.text_files=[{text}]", "data.tokenizer=bytes",
                             "data.seq_len=256", "data.batch_size=16", "data.passkey_fraction=0.5"])
    task = make_task(cfg.data, None)
    rows = [bytes(np.concatenate([b.tokens, b.labels[:, -1:]], axis=1)[i].tolist()).decode()
            for b in (task.batch(s, range(16)) for s in range(4)) for i in range(16)]
    passkey_rows = [r for r in rows if "pass key" in r]
    assert 20 <= len(passkey_rows) <= 44  # 64 rows at 1/2: a binomial far inside these bounds
    for row in passkey_rows:
        assert len(row) == 257 and "winter" not in row
        key = re.search(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.", row).group(1)
        assert row.endswith(f"What is the pass key? The pass key is {key}.")  # the answer is the key shown
    again = make_task(cfg.data, None).batch(3, range(16))
    np.testing.assert_array_equal(again.tokens, task.batch(3, range(16)).tokens)  # a function of (seed, step, row)
    held_out = task.batch(0, range(16), split=1)
    assert not any(b"pass key" in bytes(r.tolist()) for r in held_out.tokens)
    plain = make_task(load_config(None, ["data.kind=text", f"data.text_files=[{text}]", "data.tokenizer=bytes",
                                         "data.seq_len=256", "data.batch_size=16"]).data, None)
    assert not any(b"pass key" in bytes(r.tolist()) for r in plain.batch(0, range(16)).tokens)


@pytest.mark.parametrize("overrides, message", [
    (["data.passkey_fraction=1.5"], r"data.passkey_fraction must be in \[0, 1\]; got 1.5"),
    (["data.kind=mqar", "data.passkey_fraction=0.2"], "mixes passkey examples into data.kind='text'; got data.kind='mqar'"),
])
def test_passkey_fraction_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, ["data.kind=text", "data.text_files=[shakespeare]", *overrides])


def test_passkey_fraction_needs_room_for_the_example(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be " * 200)
    cfg = load_config(None, ["data.kind=text", f"data.text_files=[{text}]", "data.tokenizer=bytes",
                             "data.seq_len=64", "data.passkey_fraction=0.5"])
    with pytest.raises(ValueError, match="data.passkey_fraction: data.seq_len=64 is too short for a passkey example"):
        make_task(cfg.data, None)


def test_a_warmup_longer_than_the_schedule_is_warned_about():
    """A warning, not a config error: the default warmup (50 steps) with a short run (steps=3) is what quick tries and
    the test suite run; make_optimizer cuts the warmup to the schedule's length - 1."""
    from train.config import OptimConfig
    from train.optim import warmup_note

    assert warmup_note(OptimConfig(warmup_steps=50), 3) == (
        "warning: optim.warmup_steps=50 is not shorter than the schedule (steps=3): the warmup is cut to 2 steps and "
        "the lr only peaks at the last step; set optim.warmup_steps below 3")
    assert "(optim.decay_steps=20)" in warmup_note(OptimConfig(warmup_steps=50, decay_steps=20), 100)
    assert warmup_note(OptimConfig(warmup_steps=50, decay_steps=100), 3) is None  # the first 3 of 100 steps
    assert warmup_note(OptimConfig(warmup_steps=2), 3) is None
