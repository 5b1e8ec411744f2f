"""Test configuration. Everything runs on the host CPU unless JAX_PLATFORMS says otherwise.

Memory maps: every executable XLA:CPU compiles keeps ~10–100 memory mappings, and interpret-mode Pallas kernels
compile many; one pytest process running the whole suite passed Linux's limit of 65530 mappings per process
(vm.max_map_count) after ~200–290 tests, and the next compile segfaulted inside LLVM (mmap failed). Measured
on tests/ops/test_linear_attention_packed.py: ~800 mappings per test, back to ~600 in all after jax.clear_caches().
So after any test that leaves the process above half the limit, the compiled caches are dropped.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _shared_compilation_cache() -> None:
    """One persistent compilation cache for every process of a test run: the pytest-xdist workers and the
    subprocesses the tests start inherit the environment variable set here, in the first process (the xdist
    controller, which starts the workers afterwards; or the only process). A program that several processes
    compile — the trainer subprocesses of the kill -9 / resume and restore tests, the CLI tests' default models —
    is then compiled once and loaded by the others. jax stores only compiles that took at least a second (its
    default threshold). The directory is removed when the process that made it exits. A cache already named by
    the caller (JAX_COMPILATION_CACHE_DIR set) is used as it is."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    path = tempfile.mkdtemp(prefix="jrt-jax-test-jit-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


_shared_compilation_cache()


def _fast_compile() -> None:
    """XLA:CPU compiles the suite with LLVM optimisation level 0. Compilation is most of the suite's time, and level 0
    halves it (5 linear-attention tests: 64 s -> 33 s); the HLO and the numerics are the same at every level (XLA:CPU
    uses no fast-math), only the generated loops run slower, which the suite's small shapes do not feel. Set by the
    first process, inherited by the xdist workers and the subprocesses the tests start. JRT_TEST_XLA_OPT=default
    keeps XLA's own level (`.ci/run` runs its Python 3.12 stage so); an XLA_FLAGS that names a level is kept."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("JRT_TEST_XLA_OPT") == "default" or "xla_backend_optimization_level" in flags:
        return
    os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


_fast_compile()

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
