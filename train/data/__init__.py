"""Training data: synthetic recall tasks generated per step, tokenized text packed into sequences, and
pre-tokenized `jrt prepare-data` directories streamed with grain (`train.data.tokens`)."""

from __future__ import annotations

from train.config import DataConfig
from train.data.synthetic import MQAR, SetDisjointness


def make_task(cfg: DataConfig, model_config=None, *, checkpoint: str | None = None):
    """The data source for a config; checks the model's vocabulary covers the task's tokens."""
    if cfg.kind == "mqar":
        task = MQAR(seq_len=cfg.seq_len, num_pairs=cfg.num_pairs, num_queries=cfg.num_queries,
                    num_keys=cfg.num_keys, num_values=cfg.num_values, order=cfg.order or "kv_first", seed=cfg.seed)
    elif cfg.kind == "set_disjointness":
        task = SetDisjointness(seq_len=cfg.seq_len, short_set=cfg.short_set, long_set=cfg.long_set,
                               universe=cfg.universe, order=cfg.order or "long_first", seed=cfg.seed)
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


__all__ = ["MQAR", "SetDisjointness", "make_task"]
