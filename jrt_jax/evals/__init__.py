"""Evaluations (`jrt eval` on the command line): sliding-window perplexity, with per-token scoring that never
materialises the full logits (`target_logprobs`)."""

from jrt_jax.evals.perplexity import PerplexityResult, Window, perplexity, windows
from jrt_jax.evals.scoring import target_logprobs

__all__ = ["PerplexityResult", "Window", "perplexity", "target_logprobs", "windows"]
