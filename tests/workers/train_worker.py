"""Subprocess worker for the trainer tests: runs scenarios in a fresh process (simulated devices, multi-host).

    python -m tests.workers.train_worker SCENARIO OUT.json [key=value ...]

Scenarios:
  meshes      train 5 steps on one device and on meshes (8,1,1), (2,2,2), (1,4,2); report losses and the
              largest relative parameter difference to the one-device run (needs 8 devices)
  remesh      train 4 steps on (8,1,1) with checkpoints, restore onto (2,2,2) and (1,4,2), compare parameters
              and the next step's loss with continuing on the original mesh
  run         one training run with the overrides; writes the summary and final parameter checksums
  kill_in_save  save a checkpoint asynchronously and SIGKILL this process while it is being written
"""

from __future__ import annotations

import json
import os
import signal
import sys

import jax
import numpy as np


def _flat_params(trainer):
    leaves = jax.tree_util.tree_flatten_with_path(trainer.state["params"])[0]
    return {jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in leaves}


def _max_rel(a, b):
    worst = 0.0
    for k in a:
        scale = max(float(np.max(np.abs(b[k]))), 1e-30)
        worst = max(worst, float(np.max(np.abs(a[k] - b[k]))) / scale)
    return worst


def _trainer(overrides):
    from train.config import load_config
    from train.trainer import Trainer

    return Trainer(load_config(None, overrides), log=lambda *a, **k: None)


def _losses(trainer, steps):
    out = []
    for _ in range(steps):
        tokens, labels, segments = trainer._global_batch(trainer.step)
        trainer.state, metrics = trainer.train_step(trainer.state, trainer.rest, tokens, labels, segments,
                                                    np.int32(trainer.step))
        trainer.step += 1
        out.append(float(metrics["loss"]))
    return out


def main(argv):
    scenario, out_path, overrides = argv[0], argv[1], list(argv[2:])
    base = ["logging.dir=null", "checkpoint.dir=null"] + overrides
    result = {}
    if scenario == "meshes":
        ref = _trainer(base + ["mesh.num_devices=1", "mesh.data=1"])
        ref_losses, ref_params = _losses(ref, 5), None
        ref_params = _flat_params(ref)
        result["one_device"] = ref_losses
        for shape in ((8, 1, 1), (2, 2, 2), (1, 4, 2)):
            t = _trainer(base + [f"mesh.data={shape[0]}", f"mesh.fsdp={shape[1]}", f"mesh.tensor={shape[2]}"])
            losses = _losses(t, 5)
            key = "x".join(map(str, shape))
            # After 5 donated steps every parameter still lives in the sharding its logical axes map to.
            expected = jax.tree.leaves(t.param_shardings)
            actual = jax.tree.leaves(t.state["params"])
            follows = all(a.sharding.is_equivalent_to(e, a.ndim) for a, e in zip(actual, expected))
            sharded = sum(not e.is_fully_replicated for e in expected)
            result[key] = {"losses": losses, "max_param_rel": _max_rel(_flat_params(t), ref_params),
                           "max_loss_rel": max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)),
                           "shardings_follow_rules": follows and len(actual) == len(expected),
                           "sharded_params": sharded}
            if shape == (2, 2, 2):
                result["sharding_table"] = t.sharding_table
    elif scenario == "remesh":
        ckpt = [o for o in overrides if o.startswith("checkpoint.dir=")][0]
        src = _trainer(["logging.dir=null"] + overrides + ["mesh.data=8"])
        _losses(src, 4)
        src.save(force=True)
        src.checkpointer.wait()
        saved = _flat_params(src)
        next_loss = _losses(src, 1)[0]
        for shape in ((2, 2, 2), (1, 4, 2)):
            t = _trainer(["logging.dir=null", ckpt, "checkpoint.resume=true"]
                         + [o for o in overrides if not o.startswith("checkpoint.dir=")]
                         + [f"mesh.data={shape[0]}", f"mesh.fsdp={shape[1]}", f"mesh.tensor={shape[2]}"])
            key = "x".join(map(str, shape))
            result[key] = {"restored_step": t.step, "param_rel": _max_rel(_flat_params(t), saved),
                           "next_loss_rel": abs(_losses(t, 1)[0] - next_loss) / abs(next_loss),
                           "param_spec_example": str(next(iter(jax.tree.leaves(t.state["params"]))).sharding.spec)}
    elif scenario == "run":
        t = _trainer(base)
        summary = t.run()
        t.close()
        params = _flat_params(t)
        result = {"summary": summary, "checksum": float(sum(np.sum(np.abs(v), dtype=np.float64) for v in params.values())),
                  "process_index": jax.process_index(), "process_count": jax.process_count(),
                  "device_count": jax.device_count(), "rows": [int(r) for r in t.rows]}
        if hasattr(t.task, "spans_read"):  # which token spans this process's rows read, step by step
            result["spans"] = sorted({d for s in range(summary["step"]) for d in t.task.spans_read(s, t.rows)})
    elif scenario == "kill_in_save":
        t = _trainer(base)
        _losses(t, 2)
        t.save(force=True)
        t.checkpointer.wait()
        _losses(t, 2)
        t.save(force=True)  # asynchronous: the write is in flight when we die
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    if jax.process_index() == 0 or scenario == "run":
        with open(out_path if scenario != "run" else f"{out_path}.{jax.process_index()}", "w") as fh:
            json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
