"""The README's promises to a newcomer: it opens with the two commands CI runs, and its snippets run as written.

Every ```python block runs, in order, in one namespace (as a reader pasting them into one session would), except
a block whose first line says it is not run here (one that needs checkpoint folders the test machine lacks). The
quick tour's shell block (train → export → evaluate → generate) runs too; both are in the slow tier (the fast one
is at its time limit).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = "# not run by tests/test_readme.py"
TEST_COMMAND = 'pip install torch==2.13.0 ".[test]" && python -m pytest -q -n 2 --dist loadfile -m "not slow"'


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_readme_opens_with_exactly_the_two_commands():
    lines = README.read_text().splitlines()
    assert lines[0] == "```bash" and lines[3] == "```", lines[:4]
    assert lines[1].startswith("pip install . && jrt train"), lines[1]
    assert lines[2] == TEST_COMMAND, lines[2]


@pytest.mark.slow
def test_python_blocks_run_as_written():
    blocks = fenced_blocks("python")
    runnable = [b for b in blocks if not b.startswith(NOT_RUN)]
    assert len(runnable) >= 4 and len(blocks) - len(runnable) <= 1, (len(blocks), len(runnable))
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(runnable):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:  # name the block: the traceback's file name alone does not say which
            raise AssertionError(f"README python block {i} failed: {e!r}\n{block}") from e
    assert namespace["logits"].shape[:2] == namespace["tokens"].shape


def tour_block() -> str:
    tours = [b for b in fenced_blocks("bash") if "jrt train name=tour" in b]
    assert len(tours) == 1, "the quick tour's shell block (jrt train name=tour …) is missing"
    return tours[0]


@pytest.mark.slow
def test_quick_tour_shell_block_runs_and_both_evaluations_agree(tmp_path):
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("JAX_PLATFORMS", None)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", tour_block()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    perplexities = re.findall(r"^\s*perplexity: ([0-9.]+)$", proc.stdout, flags=re.M)
    assert len(perplexities) == 2, proc.stdout[-3000:]
    assert abs(float(perplexities[0]) - float(perplexities[1])) <= 1e-6 * float(perplexities[0]), perplexities
    assert (tmp_path / "out" / "tour" / "config.json").is_file()
