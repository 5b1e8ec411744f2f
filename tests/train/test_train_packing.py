"""Packed training rows: documents packed into one row with segment ids train exactly as the same documents in
rows of their own — state resets at each boundary, no loss across one, and the JRT prefix of a packed document
is its own first M tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import objectives
from train.config import load_config
from train.data.synthetic import Batch
from train.trainer import Trainer


def _docs(rng, lengths, vocab):
    return [rng.integers(4, vocab, size=n).astype(np.int32) for n in lengths]


def _packed(docs, seq_len, rows):
    """All documents packed in order into `rows` rows (labels within each document, -1 at its last token)."""
    tokens = np.zeros((rows, seq_len), np.int32)
    labels = np.full((rows, seq_len), -1, np.int32)
    segments = np.zeros((rows, seq_len), np.int32)
    row, col, seg = 0, 0, 0
    for d in docs:
        if col + len(d) > seq_len:
            row, col, seg = row + 1, 0, 0
        seg += 1
        tokens[row, col:col + len(d)] = d
        labels[row, col:col + len(d) - 1] = d[1:]
        segments[row, col:col + len(d)] = seg
        col += len(d)
    return Batch(tokens, labels, None, segments)


def _alone(docs, seq_len):
    """Each document in a row of its own, right-padded (no segment ids)."""
    tokens = np.zeros((len(docs), seq_len), np.int32)
    labels = np.full((len(docs), seq_len), -1, np.int32)
    for i, d in enumerate(docs):
        tokens[i, :len(d)] = d
        labels[i, :len(d) - 1] = d[1:]
    return Batch(tokens, labels, None, None)


@pytest.mark.slow  # the trainer's packed step; the models' and the ops' packing are tested in the fast tier
@pytest.mark.parametrize("preset,extra", [
    ("jrt-micro", ["model.overrides={enc_len: 8}", "objective.mlm_prob=0.0"]),  # JRT objective, PLA layers
    pytest.param("based-micro", [], marks=pytest.mark.slow),
    pytest.param("llama-tiny", ["model.overrides={num_hidden_layers: 1}"], marks=pytest.mark.slow),
])
def test_packed_step_equals_documents_alone(preset, extra):
    seq_len = 48
    cfg = load_config(None, [f"model.preset={preset}", f"data.seq_len={seq_len}", "data.batch_size=4", "steps=2",
                             "logging.dir=null", "checkpoint.dir=null", "optim.warmup_steps=1"] + extra)
    trainer = Trainer(cfg, log=lambda *a, **k: None)
    vocab = trainer.model_config.vocab_size
    docs = _docs(np.random.default_rng(0), [20, 27, 13, 30, 17], min(vocab, 500))
    packed = _packed(docs, seq_len, rows=4)
    assert packed.segment_ids[3].sum() == 0  # one all-padding row
    alone = _alone(docs, seq_len)
    # The unpacked batch has 5 rows; train_step needs batch_size rows, so compare a padded 8-row version.
    alone = Batch(np.concatenate([alone.tokens, np.zeros((3, seq_len), np.int32)]),
                  np.concatenate([alone.labels, np.full((3, seq_len), -1, np.int32)]), None, None)
    state0 = trainer.state
    out = {}
    for name, batch in (("packed", packed), ("alone", alone)):
        tokens, labels, segments = (None if x is None else jnp.asarray(x)
                                    for x in (batch.tokens, batch.labels, batch.segment_ids))
        state, metrics = trainer.train_step(jax.tree.map(jnp.copy, state0), trainer.rest, tokens, labels, segments,
                                            jnp.int32(0))
        out[name] = (metrics, state["params"])
    (mp, pp), (ma, pa) = out["packed"], out["alone"]
    np.testing.assert_allclose(float(mp["ntp_loss"]), float(ma["ntp_loss"]), rtol=2e-5)
    np.testing.assert_allclose(float(mp["grad_norm"]), float(ma["grad_norm"]), rtol=2e-4)
    for a, b in zip(jax.tree.leaves(pp), jax.tree.leaves(pa)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert np.isfinite(float(mp["loss"]))


def test_jrt_objective_positions_restart_in_each_document():
    segments = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]])
    labels = jnp.array([[5, 6, 7, -1, 8, 9, -1, -1]])
    decoder = objectives.decoder_positions(labels, 2, positions)
    np.testing.assert_array_equal(np.asarray(decoder), [[0, 0, 1, 1, 0, 0, 1, 0]])  # padding: position 0
    tokens = jnp.full((1, 8), 0, jnp.int32)  # id 0 is a real token here: `real` decides what may be masked
    masked, mlm = objectives.mlm_mask(jax.random.PRNGKey(0), tokens, 2, 1.0, 3, positions=positions,
                                      real=segments != 0)
    np.testing.assert_array_equal(np.asarray(mlm >= 0), [[1, 1, 0, 0, 1, 1, 0, 0]])  # each document's first 2
    np.testing.assert_array_equal(np.asarray(masked), [[3, 3, 0, 0, 3, 3, 0, 0]])
