"""`python -m benchmarks.device`: the dry run end to end on the CPU, and the parts that need no device.

The dry run is the device run at tiny sizes (benchmarks/device.py's docstring); it runs in a subprocess, like on the
device, with one section made to fail after its work (the hidden `--inject-failure`), so that one run shows the
failing section recorded with its figures kept and every later section still running. The wheel preparation is
tested without the network: the pip command it builds, and what it does with the wheels pip leaves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from benchmarks import device

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("OUT", None)
    start = time.time()
    # About 50 s on an idle machine; a budget that never binds, so that a loaded CI machine still times every row
    # (the budget split has its own test below).
    done = subprocess.run([sys.executable, "-m", "benchmarks.device", "--dry-run", "--out", str(out),
                           "--inject-failure", "ceilings", "--budget-s", "1200"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1300)
    wall = time.time() - start
    print(f"dry run: {wall:.1f} s\n{done.stdout[-3000:]}")
    return done, out, wall


@pytest.mark.slow
def test_dry_run_records_every_section(dry_run):
    done, out, _ = dry_run
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]  # 1: a section (the injected one) failed
    data = json.loads((out / device.JSON_NAME).read_text())
    assert data["schema"] == device.SCHEMA and data["dry_run"] is True and data["finished"]
    assert list(data["sections"]) == list(device.SECTIONS)
    for name, sec in data["sections"].items():
        assert sec["status"] in device.STATUSES, (name, sec)
        assert isinstance(sec["seconds"], (int, float)), name
        if sec["status"] == "ok":
            assert sec["summary"] and (sec["figures"] or sec["rows"]), name
        if sec["status"] == "error":
            assert sec["error"], name
    statuses = {n: s["status"] for n, s in data["sections"].items()}
    # The injected failure is recorded with the figures measured before it; everything after it ran.
    assert statuses["ceilings"] == "error"
    ceilings = data["sections"]["ceilings"]
    assert "injected failure in ceilings" in ceilings["error"] and ceilings["figures"]["bf16_matmul_tflops"] > 0
    assert all(statuses[n] == "ok" for n in device.SECTIONS if n != "ceilings"), statuses


@pytest.mark.slow
def test_dry_run_figures(dry_run):
    _, out, _ = dry_run
    sections = json.loads((out / device.JSON_NAME).read_text())["sections"]
    env = sections["environment"]["figures"]
    assert env["versions"]["jax"] and env["device_kind"] and env["backend"] == "cpu"
    ptx = env["triton_ptx"]  # Triton compiles for sm_90 without a GPU; its PTX declares an ISA version
    if isinstance(ptx, dict):
        assert ptx["ptx_version"] and ptx["target"].startswith("sm_90")
    tests = sections["gpu_tests"]["figures"]
    assert tests["skipped"] >= 1 and tests["passed"] == tests["failed"] == tests["errors"] == 0
    rows = sections["prefill"]["rows"]
    timed = {(r["method"], r["pass"]) for r in rows if r.get("ms")}
    kernel_name = "Pallas-Triton kernel (interpret)"
    assert (kernel_name, "fwd") in timed and (kernel_name, "fwd+bwd") in timed
    assert ("XLA chunked", "fwd") in timed and ("dot_product_attention [xla]", "fwd+bwd") in timed
    kernel = next(r for r in rows if r["method"].startswith("Pallas") and r["pass"] == "fwd")
    assert kernel["tflops"] > 0 and kernel["gbs"] > 0 and kernel["speedup_vs_attention"] > 0
    for r in (r for r in rows if r["method"].startswith("jax-triton")):  # timed, or skipped with the reason
        assert r.get("ms") or r["note"].startswith("skipped: jax-triton does not import"), r
    pla = sections["pla_vs_based"]["rows"][0]
    assert pla["pla_ms"] > 0 and pla["based_ms"] > 0
    assert {r["model"] for r in sections["decode"]["rows"] if r.get("ms_per_token")} == {"jrt-micro", "llama-tiny"}
    train = sections["training"]["figures"]
    assert train["tokens_per_s"] > 0 and 0 < train["mfu"] < 10 and train["compute_dtype"] == "bfloat16"
    assert any(r["method"].startswith("Mosaic TPU kernel") and r.get("ms") for r in sections["tpu"]["rows"])


@pytest.mark.slow
def test_dry_run_markdown(dry_run):
    _, out, _ = dry_run
    text = (out / device.MD_NAME).read_text()
    assert text.startswith("# jrt-jax hardware validation")
    assert "| section | status | s | budget s | result |" in text
    for name in device.SECTIONS:
        assert f"| {name} | " in text, name
    assert "injected failure in ceilings" in text
    assert "| " + " | ".join(device.KERNEL_HEADER) + " |" in text
    assert "## decode" in text and "## training" in text


def test_download_command():
    cmd = device.download_command("W", ["jax-triton==0.4.1"], python="py")
    assert cmd[:5] == ["py", "-m", "pip", "download", "--no-deps"]
    assert "--only-binary=:all:" in cmd and cmd[cmd.index("--python-version") + 1] == "3.12"
    assert cmd[cmd.index("--implementation") + 1] == "cp"
    platforms = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--platform"]
    assert platforms == ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                         "manylinux2014_x86_64", "manylinux1_x86_64"]
    assert cmd[-3:] == ["-d", "W", "jax-triton==0.4.1"]


def _fake_wheel(path: Path, name: str, version: str, requires=()):
    with zipfile.ZipFile(path / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        meta = [f"Name: {name}", f"Version: {version}"] + [f"Requires-Dist: {r}" for r in requires]
        zf.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(meta) + "\n")


def test_prepare_wheels_without_network(tmp_path):
    """The command pip gets, the stale version it replaces, the sizes and the requirement the image lacks."""
    dest = tmp_path / "whl"
    dest.mkdir()
    _fake_wheel(dest, "jax_triton", "0.3.1")  # another version of one of ours: must go
    _fake_wheel(dest, "unrelated", "1.0")  # not ours: stays
    calls, lines = [], []

    def fake_pip(cmd):
        calls.append(cmd)
        _fake_wheel(dest, "jax_triton", "0.4.1", ["absl-py>=1.4.0", "jax>=0.11.0", "triton>=3.7",
                                                  'pytest; extra == "tests"'])
        _fake_wheel(dest, "tensorboardX", "2.6.5", ["numpy", "packaging", "protobuf>=3.20", "not-on-image>=1"])
        return subprocess.CompletedProcess(cmd, 0)

    total = device.prepare_wheels(dest, run=fake_pip, log=lines.append)
    assert len(calls) == 1 and calls[0][-2:] == ["jax-triton==0.4.1", "tensorboardX==2.6.5"]
    assert calls[0][calls[0].index("-d") + 1] == str(dest)
    assert sorted(p.name for p in dest.glob("*.whl")) == ["jax_triton-0.4.1-py3-none-any.whl",
                                                          "tensorboardX-2.6.5-py3-none-any.whl",
                                                          "unrelated-1.0-py3-none-any.whl"]
    assert total == sum(p.stat().st_size for p in dest.glob("*.whl"))
    text = "\n".join(lines)
    assert "needs, not on the image: not-on-image" in text and "MiB in 3 wheels" in text
    jax_triton_line = next(line for line in lines if line.startswith("jax_triton-0.4.1"))
    assert "needs, not on the image" not in jax_triton_line  # absl-py, jax, triton are there; extras don't count
    assert device.wheel_requirements(dest / "jax_triton-0.4.1-py3-none-any.whl") == ["absl-py", "jax", "triton"]

    def failing_pip(cmd):
        return subprocess.CompletedProcess(cmd, 1)

    with pytest.raises(SystemExit, match="pip download failed"):
        device.prepare_wheels(dest, run=failing_pip, log=lines.append)


def test_install_command(tmp_path):
    for name in ("b-1-py3-none-any.whl", "a-1-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    cmd = device.install_command(tmp_path, "/tmp/site", python="py")
    assert cmd[:4] == ["py", "-m", "pip", "install"]
    for flag in ("--no-index", "--no-deps", "--no-compile", "--upgrade"):
        assert flag in cmd
    assert cmd[cmd.index("--target") + 1] == "/tmp/site"
    assert cmd[-2:] == [str(tmp_path / "a-1-py3-none-any.whl"), str(tmp_path / "b-1-py3-none-any.whl")]


def test_budget_nominal_and_junit(tmp_path):
    split = device.split_budget(100.0, ["prefill", "training"])
    assert split["prefill"] + split["training"] == pytest.approx(100.0) and split["prefill"] > split["training"]
    assert device.nominal_for("NVIDIA H200")["hbm"] == 4.8e12
    assert device.nominal_for("NVIDIA H100 PCIe")["bf16"] == 756e12
    assert device.nominal_for("NVIDIA H100 80GB HBM3")["hbm"] == 3.35e12 and device.nominal_for("cpu") is None
    roof = device._roofline(2e12, 1e9, 1.0, dict(bf16_flops=4e12, hbm_bytes_per_s=2e9))
    assert roof["pct_peak_measured"] == 50 and roof["pct_hbm_measured"] == 50 and roof["pct_roofline"] == 50
    (tmp_path / "j.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.a" name="ok"/>'
        '<testcase classname="tests.a" name="bad"><failure message="assert 1 == 2">trace</failure></testcase>'
        '<testcase classname="tests.b" name="gone"><skipped message="needs a GPU"/></testcase>'
        "</testsuite></testsuites>")
    counts = device.junit_counts(tmp_path / "j.xml")
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"]) == (1, 1, 0, 1)
    assert counts["problems"] == [dict(test="tests.a::bad", message="assert 1 == 2")]


def test_gpu_test_files_and_bad_arguments(capsys):
    files = device.gpu_test_files()
    assert "tests/kernels/test_pallas_kernels.py" in files and "tests/benchmarks/test_device_benchmark.py" not in files
    for argv, message in ((["--budget-s", "0"], "--budget-s must be positive"),
                          (["--seq-lens", "0"], "--seq-lens must be positive"),
                          (["--wheels", "/nonexistent-wheels"], "no such folder"),
                          (["--sections", "nope"], "invalid choice")):
        with pytest.raises(SystemExit) as exc:
            device.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_triton_patch_for_jax_triton(monkeypatch):
    """Triton 3.6 lacks `TMA_TF32`, which jax-triton 0.4 imports from triton's NVIDIA driver (a failing import makes
    it stub out its whole NVIDIA backend); the patch supplies it, and leaves a Triton that has it alone."""
    driver = pytest.importorskip("triton.backends.nvidia.driver")
    if hasattr(driver, "TMA_TF32"):
        assert device.patch_triton_for_jax_triton() is None
        monkeypatch.delattr(driver, "TMA_TF32")
    with pytest.raises(ImportError):
        exec("from triton.backends.nvidia.driver import TMA_TF32", {})
    assert "TMA_TF32 = 11" in device.patch_triton_for_jax_triton()
    namespace = {}
    exec("from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST, TMA_TF32", namespace)  # jax-triton's
    assert namespace["TMA_TF32"] == 11
