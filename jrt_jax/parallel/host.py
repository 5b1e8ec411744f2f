"""XLA:CPU settings that keep simulated multi-device runs alive on a loaded machine.

On the host platform (`--xla_force_host_platform_device_count=N`) every device is a thread pool of the same
process, and a collective (all-reduce, all-gather, ...) is a rendezvous of those threads. XLA aborts the whole
process when one participant has not arrived within `--xla_cpu_collective_call_terminate_timeout_seconds`
(default 40 s; a warning after 20 s). On a 2-core machine with other processes competing, a device thread can
legitimately be that late: `jrt train` on 8 simulated devices, mesh (2, 2, 2), aborted (exit 134, "Expected 2
threads to join the rendezvous, but only 1 of them arrived on time") in 3 of 5 tries beside two busy processes.
Those aborts were not all a slow clock: with a 1200 s timeout, the same run once stayed in the rendezvous for more
than 13 minutes after its last step. That hang had a cause in this project, now removed: the checkpoint digests
(`jrt_jax.runs.array_digests`) were one small multi-device program per array, dozens in flight at once,
and a device's part of one program waited for one of the device's in-flight-computation slots while its peers
waited for it in an all-reduce (gdb: six device threads in AllReduce, two in `Semaphore::Acquire`; measured
2026-12-04). They are one program per save now. The rendezvous is still given five minutes: a peer that is late
on a loaded machine arrives, and a hang from another cause fails in five minutes rather than twenty.

`patient_collective_flags(flags)` returns an XLA_FLAGS string with these timeouts added (values the caller set
are kept). `use_patient_collectives()` applies it to this process's environment; it must run before JAX
initialises its backends (the `jrt` command does it first thing), and is harmless on GPU / TPU, which ignore
the XLA:CPU flags. Subprocesses inherit the environment.
"""

from __future__ import annotations

import os

#: flag -> value (seconds). The terminate timeout is the one that aborts; the stuck warning stays early enough
#: to tell a real hang from a slow machine in the log; the per-operation timeout (default 30 min) is XLA's.
PATIENT_COLLECTIVE_FLAGS = {
    "xla_cpu_collective_call_warn_stuck_timeout_seconds": 120,
    "xla_cpu_collective_call_terminate_timeout_seconds": 300,
}


def patient_collective_flags(flags: str = "") -> str:
    """`flags` (an XLA_FLAGS value) with `PATIENT_COLLECTIVE_FLAGS` appended where `flags` does not set them."""
    if not isinstance(flags, str):
        raise TypeError(f"flags: expected an XLA_FLAGS string, got {type(flags).__name__}")
    parts = flags.split()
    for name, value in PATIENT_COLLECTIVE_FLAGS.items():
        if not any(p.lstrip("-").split("=", 1)[0] == name for p in parts):
            parts.append(f"--{name}={value}")
    return " ".join(parts)


def use_patient_collectives(environ=None) -> None:
    """Set `environ["XLA_FLAGS"]` (default: this process's environment) to `patient_collective_flags` of it."""
    environ = os.environ if environ is None else environ
    environ["XLA_FLAGS"] = patient_collective_flags(environ.get("XLA_FLAGS", ""))
