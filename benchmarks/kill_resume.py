"""kill -9 at random steps while grain workers prefetch packed token data, then resume: is the loss trajectory the
uninterrupted run's, step for step?

    python benchmarks/kill_resume.py                 # 3 trials, 2 grain workers, 24 steps of jrt-micro
    python benchmarks/kill_resume.py --trials 5 --workers 1

Builds a small prepare-data directory (40 documents, bytes tokenizer), trains a reference run, then for each trial
starts the same run, SIGKILLs it once its metrics.jsonl passes a random step, reruns the command (which resumes
from the newest checkpoint) and compares every step's loss with the reference. Prints one line per trial.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _losses(path: pathlib.Path) -> dict[int, float]:
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            if "loss" in r:
                rows[r["step"]] = r["loss"]
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from train.data.prepare import prepare

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kill_resume-"))
    src = tmp / "src"
    src.mkdir()
    rng = random.Random(0)
    words = "to be or not that is the question whether tis nobler in the mind suffer slings".split()
    for i in range(40):
        (src / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))))
    prepare([str(src / "*.txt")], tmp / "tokens", tokenizer="bytes", workers=1, eval_fraction=0.1)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    train = [sys.executable, "-m", "train.cli", "train", "model.preset=jrt-micro", "data.kind=tokens",
             f"data.path=[{tmp / 'tokens'}]", "data.packing=true", "data.seq_len=96", "data.batch_size=8",
             "model.overrides={enc_len: 16}", f"data.workers={args.workers}", "optim.warmup_steps=2",
             "data.eval_examples=8", f"steps={args.steps}", "logging.every=1", "checkpoint.every=4"]
    subprocess.run(train + [f"logging.dir={tmp / 'ref'}", f"checkpoint.dir={tmp / 'ref_ckpt'}"], env=env, cwd=ROOT,
                   check=True, capture_output=True)
    ref = _losses(tmp / "ref" / "metrics.jsonl")
    pick = random.Random(args.seed)
    for trial in range(args.trials):
        run, ckpt = tmp / f"run{trial}", tmp / f"ckpt{trial}"
        cmd = train + [f"logging.dir={run}", f"checkpoint.dir={ckpt}", "checkpoint.resume=true"]  # as requeued
        kill_after = pick.randint(3, args.steps - 4)
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while max(_losses(run / "metrics.jsonl"), default=0) < kill_after and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = max(_losses(run / "metrics.jsonl"), default=0)
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
        got = _losses(run / "metrics.jsonl")
        same = sorted(got) == sorted(ref) and all(got[s] == ref[s] for s in ref)
        print(f"trial {trial}: killed after step {killed} ({args.workers} grain workers); resumed to {args.steps}; "
              f"loss identical at every step: {same}", flush=True)


if __name__ == "__main__":
    main()
