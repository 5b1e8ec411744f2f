"""Timing and memory helpers for the benchmarks and the demo (not used by the library itself).

Wall time is the median of `repeats` runs after one warm-up run (which also compiles). Peak memory is XLA's
own buffer accounting of the compiled program (arguments + outputs + the temporary arena), which is exact
for what the computation allocates and, unlike the process RSS, can be read per configuration in one process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jrt_jax import ops


def median_time(fn: Callable, *args, repeats: int = 3) -> float:
    """Seconds per call of `fn(*args)`: median of `repeats` timed runs after one warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(calls: Sequence[tuple[Callable, tuple]], repeats: int = 3) -> list[float]:
    """Median seconds per call for each (fn, args): one warm-up call each, then `repeats` round-robin rounds.

    Like `median_time` for several functions at once; interleaving makes slow phases of a shared machine hit
    every entry alike rather than whichever one happened to be running.
    """
    for fn, args in calls:
        jax.block_until_ready(fn(*args))
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, (fn, args) in enumerate(calls):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[i].append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def compiled_memory_bytes(jitted, *args) -> int:
    """Bytes XLA allocates for one call of the jitted function: arguments + outputs + temporaries."""
    analysis = jitted.lower(*args).compile().memory_analysis()
    if analysis is None:
        return -1
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


def _matmul_case(n: int):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    return jax.jit(lambda x, y: x @ y), (a, b)


def matmul_ceiling_gflops(n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of an n×n by n×n fp32 matmul on the default device: the machine's practical ceiling."""
    f, args = _matmul_case(n)
    return 2 * n**3 / median_time(f, *args, repeats=repeats) / 1e9


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def transparent_huge_pages_mode(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise" or "never"), or None where unknown."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def _glibc_has_hugetlb(libc: tuple[str, str]) -> bool:
    name, version = libc
    try:
        return name == "glibc" and tuple(int(x) for x in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


def huge_pages_environ(
    environ: Mapping[str, str], thp_mode: str | None, libc: tuple[str, str] | None = None
) -> dict[str, str] | None:
    """The environment that puts glibc's large allocations on transparent huge pages, or None if nothing to do.

    XLA:CPU allocates every large buffer (a 32k-token output is 128 MiB) with a fresh mmap, so each call
    first-touches it 4 KiB page by page: 32k page faults, 22 ms of a 200 ms PLA prefill on a 2-core VM.
    Where the kernel's mode is "madvise", glibc ≥ 2.35 asks for huge pages when `glibc.malloc.hugetlb=1` is in
    GLIBC_TUNABLES (read only at process start, hence a new environment). With "always" the kernel does it
    already; with "never", another libc or an older glibc, nothing can. `libc` defaults to this process's
    (`platform.libc_ver()`).
    """
    tunables = environ.get("GLIBC_TUNABLES", "")
    libc = platform.libc_ver() if libc is None else libc
    if thp_mode != "madvise" or not _glibc_has_hugetlb(libc) or "glibc.malloc.hugetlb" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(t for t in (tunables, HUGE_PAGES_TUNABLE) if t)}


def malloc_description(environ: Mapping[str, str], thp_mode: str | None) -> str:
    """One line saying which page size the large buffers of this process get."""
    if thp_mode == "always":
        return "large buffers on transparent huge pages (kernel mode: always)"
    if thp_mode == "madvise" and HUGE_PAGES_TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":"):
        return f"large buffers on transparent huge pages (GLIBC_TUNABLES={environ['GLIBC_TUNABLES']})"
    return f"large buffers on 4 KiB pages (glibc's default malloc; kernel huge page mode: {thp_mode or 'unknown'})"


def available_memory_bytes() -> int:
    """Physical memory available to this process (Linux: MemAvailable), or total pages × page size."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def linear_attention_flops(b: int, h: int, t: int, f: int, d: int, chunk: int, m: int = 0) -> int:
    """FLOPs the chunked path executes (multiply-adds count 2; the denominator counts as a value column).

    Per token: intra-chunk q·kᵀ and a·[v|1] over the full C×C block (2·C·(F + D + 1)), the read of the
    carried state φ(q)·[kv|z] and its update φ(k)ᵀ[v|1] (2 × 2·Φ·(D + 1), Φ the compact feature size).
    Per encoder token (PLA): the state update only, 2·Φ·(D + 1).
    """
    p = ops.taylor_feature_dim(f, compact=True)
    per_token = 2 * chunk * (f + d + 1) + 4 * p * (d + 1)
    return b * h * (t * per_token + m * 2 * p * (d + 1))


def attention_flops(b: int, h: int, t: int, d: int) -> int:
    """FLOPs XLA executes for causal softmax attention: both T×T matmuls in full (the mask is applied after)."""
    return 4 * b * h * t * t * d


CEILING = "fp32 matmul n×n"


@dataclasses.dataclass
class Row:
    method: str
    seq_len: int
    seconds: float | None
    memory_bytes: int | None
    flops: int
    note: str = ""

    @property
    def gflops(self) -> float | None:
        return None if self.seconds is None else self.flops / self.seconds / 1e9


def prefill_table(
    seq_lens: Sequence[int],
    *,
    batch: int = 1,
    heads: int = 16,
    feature_dim: int = 16,
    head_dim: int = 64,
    chunk_size: int = 64,
    repeats: int = 3,
    attention_time_budget_s: float = 120.0,
    methods: Sequence[str] = ("pla", "linear", "attention"),
    ceiling_n: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[Row]:
    """Time PLA (M = T/2), causal linear attention (xla path) and `jax.nn.dot_product_attention(is_causal=True)`.

    Attention is skipped, with the reason in `note`, when XLA's own estimate of its memory exceeds 80 % of the
    available RAM, or when the time extrapolated from the previous length (× 4) would exceed the budget.
    With `ceiling_n`, the first row (method `CEILING`) is an n×n fp32 matmul timed in the same round-robin as
    the linear rows, so that the fraction of the ceiling divides figures taken in the same phases of the
    machine (on a shared 2-core VM, a ceiling measured once moved between 347 and 450 GFLOP/s across runs).
    """
    rows: list[Row] = []
    b, h, f, d = batch, heads, feature_dim, head_dim
    la = jax.jit(functools.partial(ops.linear_attention, implementation="xla", chunk_size=chunk_size))
    pla = jax.jit(functools.partial(ops.prefix_linear_attention, implementation="xla", chunk_size=chunk_size))
    att = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=True))

    def inputs(t, shapes):
        keys = jax.random.split(jax.random.PRNGKey(t), len(shapes))
        return [jax.random.normal(kk, s, jnp.float32) for kk, s in zip(keys, shapes)]

    def record(row):
        rows.append(row)
        log(_format_row(row))

    # The linear methods run first, attention last: its multi-GiB buffers disturb the timing of whatever runs
    # right after them. The linear rows are timed round-robin (one call of every (method, T) per round, the
    # median over rounds), so a slow phase of a shared machine spreads over all rows instead of landing on one.
    cases = []
    if ceiling_n is not None:
        mm, mm_args = _matmul_case(ceiling_n)
        cases.append((CEILING, ceiling_n, mm, mm_args, 2 * ceiling_n**3))
    for t in seq_lens:
        m = t // 2
        if "pla" in methods:
            args = inputs(t, [(b, t, h, f), (b, t, h, f), (b, t, h, d), (b, m, h, f), (b, m, h, d)])
            cases.append(("PLA (xla, M=T/2)", t, pla, args, linear_attention_flops(b, h, t, f, d, chunk_size, m)))
        if "linear" in methods:
            args = inputs(t, [(b, t, h, f), (b, t, h, f), (b, t, h, d)])
            cases.append(("causal LA (xla)", t, la, args, linear_attention_flops(b, h, t, f, d, chunk_size)))
    times = interleaved_times([(fn, args) for _, _, fn, args, _ in cases], repeats=repeats)
    for (method, t, fn, args, flops), sec in zip(cases, times):
        record(Row(method, t, sec, compiled_memory_bytes(fn, *args), flops))
    cases = args = None
    last: tuple[int, float] | None = None
    for t in seq_lens if "attention" in methods else ():
        args = inputs(t, [(b, t, h, d)] * 3)
        mem = compiled_memory_bytes(att, *args)
        flops = attention_flops(b, h, t, d)
        estimate = None if last is None else last[1] * (t / last[0]) ** 2
        if mem > 0.8 * available_memory_bytes():
            record(Row("dot_product_attention", t, None, mem, flops, f"out of memory: needs {mem / 2**30:.1f} GiB"))
        elif estimate is not None and estimate * (repeats + 1) > attention_time_budget_s:
            record(Row("dot_product_attention", t, None, mem, flops,
                       f"out of time: ~{estimate:.0f} s per call, budget {attention_time_budget_s:.0f} s"))
        else:
            sec = median_time(att, *args, repeats=repeats)
            last = (t, sec)
            record(Row("dot_product_attention", t, sec, mem, flops))
        args = None
    return rows


def _format_row(r: Row) -> str:
    time_s = f"{r.seconds * 1e3:10.1f}" if r.seconds is not None else f"{'—':>10}"
    gf = f"{r.gflops:9.1f}" if r.gflops is not None else f"{'—':>9}"
    mem = f"{r.memory_bytes / 2**20:10.1f}" if r.memory_bytes and r.memory_bytes > 0 else f"{'—':>10}"
    return f"{r.method:<24}{r.seq_len:>8}{time_s}{mem}{gf}  {r.note}"


TABLE_HEADER = f"{'method':<24}{'T':>8}{'ms':>10}{'peak MiB':>10}{'GFLOP/s':>9}  note"


def format_table(rows: Sequence[Row]) -> str:
    return "\n".join([TABLE_HEADER] + [_format_row(r) for r in rows])


def speedups(rows: Sequence[Row], method: str, baseline: str = "dot_product_attention") -> dict[int, float]:
    """seq_len → baseline time / method time, where both ran."""
    base = {r.seq_len: r.seconds for r in rows if r.method == baseline and r.seconds}
    return {r.seq_len: base[r.seq_len] / r.seconds for r in rows if r.method == method and r.seconds and r.seq_len in base}
