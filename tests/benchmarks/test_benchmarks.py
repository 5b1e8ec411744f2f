"""The benchmark scripts run end to end (tiny sizes) and print the figures they promise."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleaved_times_calls_round_robin():
    from jrt_jax import benchmarking as bm

    log = []
    calls = [(lambda x, tag=tag: log.append(tag) or x, (1,)) for tag in "ab"]
    times = bm.interleaved_times(calls, repeats=3)
    assert log == list("ab") + list("ababab")  # one warm-up call each, then three rounds
    assert len(times) == 2 and all(t >= 0 for t in times)


def test_huge_pages_environ():
    from jrt_jax import benchmarking as bm

    glibc = ("glibc", "2.36")
    env = bm.huge_pages_environ({"PATH": "/bin"}, "madvise", glibc)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    # other tunables are kept; an explicit choice of the user, or a kernel or libc that cannot or need not,
    # is left alone
    env = bm.huge_pages_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", glibc)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert bm.huge_pages_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", glibc) is None
    for mode in ("always", "never", None):
        assert bm.huge_pages_environ({}, mode, glibc) is None
    for libc in (("glibc", "2.34"), ("", ""), ("musl", "1.2")):
        assert bm.huge_pages_environ({}, "madvise", libc) is None
    assert "huge pages" in bm.malloc_description(env, "madvise")
    assert "huge pages" in bm.malloc_description({}, "always")
    assert "4 KiB pages" in bm.malloc_description({}, "madvise")


def test_transparent_huge_pages_mode(tmp_path):
    from jrt_jax import benchmarking as bm

    (tmp_path / "enabled").write_text("always [madvise] never\n")
    assert bm.transparent_huge_pages_mode(str(tmp_path / "enabled")) == "madvise"
    assert bm.transparent_huge_pages_mode(str(tmp_path / "missing")) is None


def test_prefill_table_times_the_ceiling_with_the_linear_rows(monkeypatch):
    from jrt_jax import benchmarking as bm

    seen = []
    real = bm.interleaved_times
    monkeypatch.setattr(bm, "interleaved_times", lambda calls, repeats: seen.append(len(calls)) or real(calls, repeats))
    rows = bm.prefill_table([128], heads=2, repeats=1, methods=("pla", "linear"), ceiling_n=64)
    assert seen == [3]  # the matmul and both linear rows in one round-robin
    assert [r.method for r in rows] == [bm.CEILING, "PLA (xla, M=T/2)", "causal LA (xla)"]
    assert rows[0].flops == 2 * 64**3 and rows[0].seconds > 0


@pytest.mark.slow
def test_prefill_benchmark_runs(capsys, tmp_path):
    _load("prefill").main(["--seq-lens", "128", "256", "--heads", "2", "--repeats", "1", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "fp32 matmul ceiling" in out and "malloc:" in out
    for method in ("PLA (xla, M=T/2)", "causal LA (xla)", "dot_product_attention"):
        assert out.count(method) >= 2, method
    assert "speed-up over attention: T=128" in out
    assert (tmp_path / "r.json").stat().st_size > 0


@pytest.mark.slow
def test_kernel_benchmark_cpu_sanity_runs(capsys, tmp_path):
    _load("kernels").main(["--cpu-sanity", "--seq-lens", "128", "--repeats", "1", "--plot", "",
                           "--json", str(tmp_path / "k.json")])
    out = capsys.readouterr().out
    for name in ("PLA M=T/2 [pallas]", "JRT-Prompt (LA over 2T) [xla]", "Based (LA over T) [pallas]", "attention"):
        assert name in out, name
    assert "speed-up over attention" in out
