"""`jrt reproduce NAME [--quick] [--out DIR] [--seeds N] [--jobs N] [--scale paper]`: run one reproduction study.

    jrt reproduce set-disjointness --quick             # < 1 minute, the pipeline of the full study
    jrt reproduce mqar --out results                   # full variant (<= 30 min on 2 CPU cores)
    jrt reproduce set-disjointness --scale paper       # the paper's sizes, for one GPU (studies with SCALES)
    jrt reproduce --list                               # the studies and their claims

Writes DIR/NAME/results.json (every number), DIR/NAME/report.md (the table "claim | paper | ours | reproduced?",
the command, the wall time, the machine) and PNG plots; prints the report's path and the claims table.
DIR defaults to runs/reproduce. Bad input (an unknown study, --seeds or --jobs < 1, an unwritable DIR) prints one line on
stderr and exits with status 2; an unexpected failure prints one line and exits 1 (JRT_TRACEBACK=1 for the
traceback); Ctrl-C exits 130 and SIGTERM 143, with nothing written (`jrt_jax.cli.run_command`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys
import time

from jrt_jax import cli
from train.reproduce import STUDIES

PROG = "jrt reproduce"
DEFAULT_OUT = "runs/reproduce"


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive integer; got {text!r}")
        return value

    return parse


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description="Reproduce a claim of the JRT / PI papers at laptop scale: a "
                           "table 'claim | paper | ours | reproduced?', the numbers in results.json, and plots.")
    p.add_argument("name", nargs="?", metavar="NAME", help=f"the study: {', '.join(STUDIES)}")
    p.add_argument("--quick", action="store_true", help="the scaled-down variant (< 1 minute; the test suite's)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"write DIR/NAME/ (default {DEFAULT_OUT})")
    p.add_argument("--seeds", type=_positive_int("--seeds"), default=None, metavar="N",
                   help="seeds per configuration (default: the study's, 3 for comparisons in the full variant)")
    p.add_argument("--jobs", type=_positive_int("--jobs"), default=None, metavar="N",
                   help="training runs at a time, in worker processes (default: 1 for --quick, else "
                        "min(2, CPU cores))")
    p.add_argument("--scale", choices=("cpu", "paper"), default="cpu",
                   help="cpu: sized for a laptop CPU (default); paper: the paper's sizes, for one GPU (studies "
                        "that define it)")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    return p


def _check_out(out: pathlib.Path) -> None:
    """The output directory can be made and written (before minutes of training are spent)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create --out directory {str(out)!r}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out directory {str(out)!r} is not writable")


def main(argv=None) -> int:
    """Run ``jrt reproduce`` with `argv` (default: sys.argv[1:]); returns the exit status."""
    return cli.run("reproduce", argv)


def command(argv) -> int:
    """`jrt reproduce` (under `jrt_jax.cli.run_command`: errors become one line and an exit status)."""
    args = build_parser().parse_args(argv)
    if args.list:
        from train.reproduce import load

        for name in STUDIES:
            doc = (load(name).__doc__ or "").strip().splitlines()
            print(f"{name:<18}{doc[0] if doc else ''}")
        return 0
    if args.name is None:
        raise cli.UsageError(f"give a study NAME: {', '.join(STUDIES)} (or --list)")
    if args.name not in STUDIES:
        raise ValueError(f"unknown study {args.name!r}; choose from {', '.join(STUDIES)}")
    out = pathlib.Path(args.out) / args.name
    _check_out(out)

    from train.reproduce import common, load

    command_line = " ".join(["jrt", "reproduce", *map(shlex.quote, argv)])
    log = lambda line: print(f"[{args.name}] {line}", file=sys.stderr, flush=True)
    study = load(args.name)
    jobs = args.jobs or (1 if args.quick else max(1, min(2, os.cpu_count() or 1)))
    if not getattr(study, "PARALLEL", False):  # the study trains one model at a time (no `common.run_jobs`)
        if args.jobs and args.jobs > 1:
            log(f"--jobs {args.jobs} ignored: this study trains one model at a time")
        jobs = 1
    if args.scale != "cpu" and (args.quick or args.scale not in getattr(study, "SCALES", {})):
        raise ValueError(f"--scale {args.scale}: " + ("not with --quick" if args.quick else
                                                      f"study {args.name!r} has no such scale"))
    if args.scale == "paper" and jobs > 1:  # one accelerator: worker processes would each claim its memory
        log(f"--jobs {jobs} ignored at the paper scale: one sweep at a time on the one accelerator")
        jobs = 1
    ctx = common.Context(quick=args.quick, seeds=args.seeds, out_dir=out, jobs=jobs, log=log, scale=args.scale)
    machine = common.machine_info()
    start = time.perf_counter()
    outcome = study.run(ctx)  # SIGTERM raises here (run_command), so the study's training workers are stopped
    wall = time.perf_counter() - start
    _, report = common.write_outputs(ctx, name=args.name, title=study.TITLE, command=command_line, wall_s=wall,
                                     outcome=outcome, machine=machine)
    print(f"report: {report}")
    print(f"{study.TITLE} — {'quick' if ctx.quick else 'full'} variant, {wall:.1f} s")
    print(common.markdown_table(["claim", "paper", "ours", "reproduced?"],
                                [(c.claim, c.paper, c.ours, c.reproduced) for c in outcome.claims]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
