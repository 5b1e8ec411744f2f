"""Training data: synthetic recall tasks generated per step (by numpy on the host, or by `jax.random` on the
device: `train.data.device`), tokenized text packed into sequences, and pre-tokenized `jrt prepare-data`
directories streamed with grain (`train.data.tokens`)."""

from __future__ import annotations

from train.config import DataConfig
from train.data.synthetic import MQAR, ReadTwice, SetDisjointness


def make_task(cfg: DataConfig, model_config=None, *, checkpoint: str | None = None):
    """The data source for a config; checks the model's vocabulary covers the task's tokens."""
    if cfg.read_twice and cfg.kind not in ("mqar", "set_disjointness"):
        raise ValueError(f"data.read_twice applies to the synthetic tasks (mqar, set_disjointness); got "
                         f"data.kind={cfg.kind!r}")
    if cfg.kind == "set_disjointness" and cfg.set_format == "paper" and not cfg.on_device:
        raise ValueError("data.set_format=paper is made by the on-device generator only; set data.on_device=true")
    if cfg.on_device:
        from train.data.device import device_task

        task = device_task(cfg)
    elif cfg.kind in ("mqar", "set_disjointness"):
        task = _synthetic(cfg, cfg.seq_len)
        if cfg.read_twice:
            inner_len = cfg.seq_len - task.enc_len
            try:
                task = ReadTwice(_synthetic(cfg, inner_len))
            except ValueError as exc:
                raise ValueError(f"data.seq_len={cfg.seq_len} is too short for data.read_twice: reading the "
                                 f"{task.enc_len}-token prefix twice leaves {inner_len} tokens for the example "
                                 f"({exc})") from None
    elif cfg.kind == "tokens":
        from train.data.tokens import TokenData

        task = TokenData(cfg, model_config)
    else:
        from train.data.text import TextData

        task = TextData(cfg, model_config, checkpoint=checkpoint)
    vocab = getattr(model_config, "vocab_size", None)
    needed = getattr(task, "vocab_needed", None)
    if vocab is not None and needed is not None and needed > vocab:
        raise ValueError(f"data.kind={cfg.kind!r} uses token ids up to {needed - 1} but the model's vocab_size is "
                         f"{vocab}; shrink the task or raise model.overrides.vocab_size")
    return task


def _synthetic(cfg: DataConfig, seq_len: int):
    if cfg.kind == "mqar":
        return MQAR(seq_len=seq_len, num_pairs=cfg.num_pairs, num_queries=cfg.num_queries, num_keys=cfg.num_keys,
                    num_values=cfg.num_values, order=cfg.order or "kv_first", seed=cfg.seed)
    return SetDisjointness(seq_len=seq_len, short_set=cfg.short_set, long_set=cfg.long_set, universe=cfg.universe,
                           order=cfg.order or "long_first", seed=cfg.seed)


__all__ = ["MQAR", "ReadTwice", "SetDisjointness", "make_task"]
