"""The synthetic recall tasks live in `jrt_jax.tasks` (the evals use them too, and jrt_jax never imports train);
re-exported here for the trainer."""

from jrt_jax.tasks import FIRST_CONTENT, MASK, MQAR, PAD, SEP, Batch, ReadTwice, SetDisjointness

__all__ = ["FIRST_CONTENT", "MASK", "MQAR", "PAD", "SEP", "Batch", "ReadTwice", "SetDisjointness"]
