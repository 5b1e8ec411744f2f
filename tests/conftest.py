"""Test configuration. Everything runs on the host CPU unless JAX_PLATFORMS says otherwise.

Memory maps: every executable XLA:CPU compiles keeps ~10–100 memory mappings, and interpret-mode Pallas kernels
compile many; one pytest process running the whole suite passed Linux's limit of 65530 mappings per process
(vm.max_map_count) after ~200–290 tests, and the next compile segfaulted inside LLVM (mmap failed). Measured
on tests/test_linear_attention_packed.py: ~800 mappings per test, back to ~600 in all after jax.clear_caches().
So after any test that leaves the process above half the limit, the compiled caches are dropped.
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

_MAPS_LIMIT = 65530


def _max_map_count() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return _MAPS_LIMIT


def _mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: nothing to watch
        return 0


_THRESHOLD = _max_map_count() // 2


def pytest_runtest_teardown(item, nextitem):
    if _mappings() > _THRESHOLD:
        import jax

        jax.clear_caches()
        gc.collect()
