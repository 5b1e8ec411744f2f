"""Pallas kernels for jrt-jax. Depends only on jax; `jrt_jax.ops` dispatches to them (implementation="pallas").

Each kernel folder holds the entry point (`api.py`), one file per backend (`tpu.py` Mosaic TPU, `gpu.py`
Pallas-Triton, `triton.py` Triton through jax-triton) and shared pieces (`common.py`); tests compare them with the
`jrt_jax.ops` reference.
"""

from pallas_kernels.dispatch import platform_dispatch
from pallas_kernels.linear_attention.api import BACKENDS, linear_attention_prefill, unsupported_reason
from pallas_kernels.linear_attention.common import document_flags

__all__ = ["BACKENDS", "document_flags", "linear_attention_prefill", "platform_dispatch", "unsupported_reason"]
