"""Recall accuracy on freshly generated synthetic examples (`jrt_jax.tasks`: MQAR, set disjointness).

The examples come from a stream no trainer uses (split 2; training uses 0 and its evaluation 1), so a model
trained by `jrt train` on the same task is scored on examples it never saw. Accuracy is the fraction of labelled
positions whose greedy prediction is the label — the trainer's `eval_accuracy`. With `jrt_prompt` the prefix
(the context part of every example, the task's M tokens) is read twice: the input is prefix + example, and a
JRT-RNN's encoder reads both copies.
"""

from __future__ import annotations

from jrt_jax.evals.scoring import target_logprobs
from jrt_jax.tasks import read_twice

FRESH_SPLIT = 2


def make_task(name: str, **options):
    """A task of `jrt_jax.tasks` by name with the trainer's defaults for unspecified options."""
    from jrt_jax.tasks import MQAR, SetDisjointness

    defaults = {"mqar": dict(seq_len=64, num_pairs=8, num_queries=8, num_keys=16, num_values=16, order="kv_first"),
                "set_disjointness": dict(seq_len=32, short_set=4, long_set=16, universe=64, order="long_first")}
    if name not in defaults:
        raise ValueError(f"--task must be 'mqar' or 'set_disjointness'; got {name!r}")
    chosen = {**defaults[name], **{k: v for k, v in options.items() if v is not None and k in defaults[name]}}
    unused = sorted(k for k, v in options.items() if v is not None and k not in defaults[name] and k != "seed")
    if unused:
        raise ValueError(f"option(s) {unused} do not apply to --task {name}")
    cls = MQAR if name == "mqar" else SetDisjointness
    return cls(seed=options.get("seed") or 0, **chosen)


def recall(model, task, *, examples: int = 256, batch_size: int = 32, jrt_prompt: bool = False,
           progress=None) -> dict:
    """{"accuracy", "correct", "positions", "examples", "jrt_prompt", "enc_len"} of `model` on `task`."""
    vocab = model.config.vocab_size
    if task.vocab_needed > vocab:
        raise ValueError(f"the task uses token ids up to {task.vocab_needed - 1} but the model's vocabulary is "
                         f"{vocab}")
    is_jrt = getattr(model, "encoder_len", None) is not None
    correct = positions = 0
    for start in range(0, examples, batch_size):
        rows = range(start, min(start + batch_size, examples))
        batch = task.batch(0, rows, FRESH_SPLIT)
        tokens, labels = batch.tokens, batch.labels
        enc = task.enc_len
        if jrt_prompt:
            tokens, labels = read_twice(tokens, labels, enc)
            enc = 2 * enc
        _, greedy = target_logprobs(model, tokens, labels, enc_len=enc if is_jrt else None)
        correct += int(greedy.sum())
        positions += int((labels >= 0).sum())
        if progress is not None:
            progress(len(rows))
    return {"accuracy": correct / max(positions, 1), "correct": correct, "positions": positions,
            "examples": examples, "jrt_prompt": jrt_prompt, "enc_len": enc if is_jrt else None}
