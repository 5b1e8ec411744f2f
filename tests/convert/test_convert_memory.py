"""Streaming: converting a random checkpoint of the JRT 1.3B release shape keeps the converting process's peak
RSS within 2.5x the file size (benchmarks/convert_memory.py; bfloat16 pytorch_model.bin, 2.56 GiB)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_convert_memory", ROOT / "benchmarks" / "convert_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_checkpoint_streams(tmp_path):
    """The same measurement on the micro preset (fast): the machinery works and the values are right."""
    bench = _bench()
    weights = bench.write_checkpoint(tmp_path, "jrt-micro", "float32", "safetensors")
    r = bench.measure(tmp_path, weights)
    assert r["values_ok"] and r["params"] > 0
    assert r["peak_bytes"] > r["baseline_bytes"] > 0


@pytest.mark.slow
def test_jrt_1p3b_peak_rss_within_2_5x_file_size(tmp_path):
    bench = _bench()
    weights = bench.write_checkpoint(tmp_path, "jrt-1.3b", "bfloat16", "torch")
    r = bench.measure(tmp_path, weights)
    gib = 1024**3
    print(f"\njrt-1.3b bf16 pytorch_model.bin: {r['file_bytes'] / gib:.2f} GiB, {r['params']:,} parameters; "
          f"peak RSS {r['peak_bytes'] / gib:.2f} GiB (VmHWM {r['vmhwm_bytes'] / gib:.2f} GiB) = "
          f"{r['ratio']:.2f}x the file; load {r['load_s']:.1f} s")
    assert r["params"] == 1_375_143_168 and r["values_ok"]
    assert r["ratio"] <= 2.5  # the requirement
    # and what streaming achieves: model (= file size, dtype kept) + one tensor + the runtime. Loading the file
    # whole before converting would need about 2 file sizes plus the runtime, > 2.1x.
    assert r["ratio"] <= 1.6
