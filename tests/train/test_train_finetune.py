"""Position Interpolation fine-tuning: the trainer starts from a converted Llama checkpoint with a rope scaling."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from jrt_jax import models, ops, save_pretrained
from train.config import load_config
from train.trainer import Trainer


def test_pi_finetune_starts_from_the_converted_weights(tmp_path):
    base = dataclasses.replace(models.config_from_preset("llama-tiny"), max_position_embeddings=32)
    source = models.build(base, seed=7)
    save_pretrained(source, tmp_path / "llama", format="safetensors")

    cfg = load_config(None, [f"model.checkpoint={tmp_path / 'llama'}", "model.preset=llama-tiny",
                             "model.rope_scaling={rope_type: linear, factor: 2.0}", "data.kind=mqar",
                             "data.seq_len=64", "data.batch_size=4", "steps=3", "logging.dir=null",
                             "data.eval_examples=4"])
    trainer = Trainer(cfg, log=lambda *a, **k: None)
    mc = trainer.model_config
    # Trained at twice the original context, with the scaling; the file's length is the reference of the scaling.
    assert mc.max_position_embeddings == 64 and mc.rope_scaling["factor"] == 2.0
    assert mc.hidden_size == base.hidden_size

    # The starting parameters are exactly the checkpoint's.
    want = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(nnx.state(source, nnx.Param))[0]}
    got = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
           jax.tree_util.tree_flatten_with_path(trainer.state["params"])[0]}
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)

    # The rope the model now uses is PI: frequencies of the original, divided by the factor.
    inv, _ = ops.rope_frequencies(base.head_dim, base=base.rope_theta, scaling=mc.rope_scaling)
    plain, _ = ops.rope_frequencies(base.head_dim, base=base.rope_theta)
    np.testing.assert_allclose(np.asarray(inv), np.asarray(plain) / 2.0, rtol=1e-6)

    summary = trainer.run()
    trainer.close()
    assert summary["step"] == 3 and np.isfinite(summary["loss"])
    moved = [float(np.max(np.abs(np.asarray(v) - want[k]))) for k, v in
             ((jax.tree_util.keystr(p), v) for p, v in
              jax.tree_util.tree_flatten_with_path(trainer.state["params"])[0])]
    assert max(moved) > 0  # it trained from there
