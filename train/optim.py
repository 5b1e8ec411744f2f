"""AdamW with warmup + cosine decay, global-norm clipping and a weight-decay mask; the schedule of a resumed run."""

from __future__ import annotations

import dataclasses

import jax
import optax

from train.config import OptimConfig

SCHEDULE_FIELDS = ("lr", "warmup_steps", "decay", "min_lr_ratio")


def decay_mask(params):
    """Weight decay on matrices only: no decay on norm scales, biases or other 1-D parameters."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig, total_steps: int):
    """(optax transformation, learning-rate schedule)."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * cfg.min_lr_ratio,
    )
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule


def warmup_note(cfg: OptimConfig, steps: int) -> str | None:
    """A one-line warning when optim.warmup_steps does not fit in the schedule (optim.decay_steps, else `steps`):
    `make_optimizer` then cuts the warmup to the schedule's length - 1, so the lr peaks at its last step. None when
    it fits. (A warning, not an error: the default warmup of 50 steps with a short run such as steps=3 is what
    quick tries and the test suite run.)"""
    total = cfg.decay_steps or steps
    if cfg.warmup_steps < total:
        return None
    source = f"optim.decay_steps={cfg.decay_steps}" if cfg.decay_steps else f"steps={steps}"
    return (f"warning: optim.warmup_steps={cfg.warmup_steps} is not shorter than the schedule ({source}): the warmup "
            f"is cut to {max(total - 1, 0)} steps and the lr only peaks at the last step; set optim.warmup_steps "
            f"below {total}")


def _schedule_of(optim: dict, steps) -> dict:
    """The schedule fields of a config dict's optim section (None for what an older config lacks)."""
    return {"lr": optim.get("lr"), "warmup_steps": optim.get("warmup_steps"),
            "decay": optim.get("decay_steps") or steps, "min_lr_ratio": optim.get("min_lr_ratio")}


def _describe(s: dict, with_lr: bool = True) -> str:
    if not with_lr:
        return (f"warmup {s['warmup_steps']} steps, cosine decay over {s['decay']} steps to {s['min_lr_ratio']:g} x "
                "the peak lr")
    return (f"peak lr {s['lr']:g}, warmup {s['warmup_steps']} steps, cosine decay over {s['decay']} steps to "
            f"{s['lr'] * s['min_lr_ratio']:g}")


def resume_schedule(cfg, saved: dict, *, compare_lr: bool = True):
    """(config, note or None) for a run resumed from a checkpoint saved with config dict `saved`.

    The learning-rate schedule (peak optim.lr, optim.warmup_steps, the decay length optim.decay_steps or `steps`,
    optim.min_lr_ratio) is the run's: a resume with another `steps` (or schedule field) keeps the saved one, and the
    returned config pins it (optim.decay_steps = the saved decay length, the other fields as saved), so training
    continues to the new step count on the saved schedule's formula (at its final lr after its end), and later
    resumes keep it too. With optim.reschedule=true the config's own schedule applies instead; the returned config
    has reschedule=false again (the new schedule is then the run's). The note says in one line which schedule is used
    when they differ. compare_lr=False leaves optim.lr out (a sweep's replicas carry their own peak lr)."""
    o = cfg.optim
    old = _schedule_of(dict(saved.get("optim") or {}), saved.get("steps"))
    new = _schedule_of(dataclasses.asdict(o), cfg.steps)
    fields = [f for f in SCHEDULE_FIELDS if (f != "lr" or compare_lr) and old[f] is not None and old[f] != new[f]]
    if not fields:
        return (dataclasses.replace(cfg, optim=dataclasses.replace(o, reschedule=False)) if o.reschedule else cfg,
                None)
    for f in SCHEDULE_FIELDS:  # what an older config lacks stays as configured
        if old[f] is None or (f == "lr" and not compare_lr):
            old[f] = new[f]
    change = ", ".join({"lr": f"peak lr {new['lr']:g}", "warmup_steps": f"warmup {new['warmup_steps']} steps",
                        "decay": f"decay over {new['decay']} steps",
                        "min_lr_ratio": f"min_lr_ratio {new['min_lr_ratio']:g}"}[f] for f in fields)
    if o.reschedule:
        optim = dataclasses.replace(o, reschedule=False)
        note = (f"resuming with a new schedule (optim.reschedule=true): {change}; the saved one was "
                f"{_describe(old, compare_lr)}")
        return dataclasses.replace(cfg, optim=optim), note
    optim = dataclasses.replace(o, lr=old["lr"], warmup_steps=old["warmup_steps"], decay_steps=old["decay"],
                                min_lr_ratio=old["min_lr_ratio"])
    after = (f", then constant to step {cfg.steps}" if cfg.steps > old["decay"] else "")
    note = (f"resuming with the saved schedule ({_describe(old, compare_lr)}{after}); pass optim.reschedule=true "
            f"to use {change} instead")
    return dataclasses.replace(cfg, optim=optim), note
