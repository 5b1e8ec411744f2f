"""Numerical helpers shared by the tests."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.linear_attention import api as kernel_api


def simulated_devices_env(devices: int, *, fast_compile: bool = False, pythonpath: str | None = None) -> dict:
    """Environment for a subprocess on `devices` simulated CPU devices: the device count, XLA:CPU's patient
    collective timeouts (`jrt_jax.parallel.host`: a loaded machine must not abort a correct run), JAX on the CPU,
    the repository on PYTHONPATH. fast_compile: LLVM optimisation level 0 (a third less compile time; the HLO,
    the numerics and the memory analysis are unchanged)."""
    import os
    import pathlib

    from jrt_jax.parallel.host import patient_collective_flags

    flags = f"{inherited_xla_flags()} --xla_force_host_platform_device_count={devices}".strip()
    if fast_compile and "xla_backend_optimization_level" not in flags:
        flags += " --xla_backend_optimization_level=0"
    env = dict(os.environ)
    env["XLA_FLAGS"] = patient_collective_flags(flags)
    env["JAX_PLATFORMS"] = "cpu"
    root = pythonpath or str(pathlib.Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def inherited_xla_flags() -> str:
    """This process's XLA_FLAGS without a simulated device count: what a test's subprocess keeps (the suite's
    compile settings from tests/conftest.py) when it chooses its own devices."""
    import os

    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                    if not f.startswith("--xla_force_host_platform_device_count"))


def rel_err(x, ref) -> float:
    """max |x - ref| / max |ref| in float64."""
    x = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    ref = np.asarray(jnp.asarray(ref, jnp.float32), np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    scale = np.max(np.abs(ref))
    return float(np.max(np.abs(x - ref)) / (scale if scale > 0 else 1.0))


def assert_rel(x, ref, tol: float, what: str = "") -> None:
    err = rel_err(x, ref)
    assert err <= tol, f"{what} relative error {err:.3e} > {tol:.1e}"


def random_qkv(seed, b, t, h, f, d, m=None, dtype=jnp.float32):
    """q, k [b,t,h,f], v [b,t,h,d] (and k_enc, v_enc [b,m,h,*] when m is given) with N(0,1) entries."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(ks[0], (b, t, h, f), dtype)
    k = jax.random.normal(ks[1], (b, t, h, f), dtype)
    v = jax.random.normal(ks[2], (b, t, h, d), dtype)
    if m is None:
        return q, k, v
    return q, k, v, jax.random.normal(ks[3], (b, m, h, f), dtype), jax.random.normal(ks[4], (b, m, h, d), dtype)


# ------------------------------------------------------------------------------------ exporting for hardware

# The GPU this CPU-only machine exports Triton kernels for. jax 0.10 picked compute capability 9.0 by itself
# when it saw no GPU ("the minimum CC supported by Triton"); from jax 0.12 the Triton lowering asks
# `jax._src.pallas.triton.gpu_info.get_gpu_info()`, which reads the device kind of the abstract mesh in context
# and otherwise raises "No supported GPU devices found, please specify an abstract GPU device using
# AbstractDevice". An H100 (compute capability 9.0) keeps both versions lowering for the same target.
CUDA_EXPORT_DEVICE = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="gpu")

# The GPU kernels' custom calls (Pallas-Triton, jax-triton) are not on jax.export's list of stable targets.
TRITON_CHECKS = tuple(jax.export.DisabledSafetyCheck.custom_call(t) for t in kernel_api.gpu_custom_call_targets())


@contextlib.contextmanager
def gpu_export_target(device=CUDA_EXPORT_DEVICE):
    """Lower GPU kernels for `device` (an abstract device) inside the block, whatever the local devices."""
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=device)):
        yield


def export_for(fn, platforms, *args):
    """`jax.export.export(fn, platforms=platforms)(*args)` from this machine: with "cuda" among the platforms, an
    abstract H100 as the target of the GPU lowerings and the Triton custom call allowed (it is not one of jax's
    stable custom calls)."""
    platforms = list(platforms)
    cuda = "cuda" in platforms
    checks = TRITON_CHECKS if cuda else ()
    with gpu_export_target() if cuda else contextlib.nullcontext():
        return jax.export.export(fn, platforms=platforms, disabled_checks=checks)(*args)


def max_abs(a, b) -> float:
    """The largest absolute difference of two arrays (numpy or jax, any float dtype), in float64."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
