"""Pallas kernels for jrt-jax. Depends only on jax; `jrt_jax.ops` dispatches to them (implementation="pallas").

Each kernel folder holds the entry point (`api.py`), one file per backend (`tpu.py` Mosaic TPU, `gpu.py`
Triton) and shared pieces (`common.py`); tests compare them with the `jrt_jax.ops` reference.
"""

from pallas_kernels.linear_attention.api import (
    BACKENDS,
    default_backend,
    default_interpret,
    linear_attention_prefill,
    lowering_target,
    unsupported_reason,
)

__all__ = ["BACKENDS", "default_backend", "default_interpret", "linear_attention_prefill", "lowering_target",
           "unsupported_reason"]
