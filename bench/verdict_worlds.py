"""Recreate the runs that check the verdict (docs/method.md, "Will T3S pay on this run?") and print its hit rate.

For each testbed student named (world:seed), build the world (`t3s testbed build`; students 0 ship with t3s, the
others are pretrained here, minutes each) and run SFT and T3S on three training seeds with the settings of the
first check (threshold auto, no RRT, the probe going on without a dip); then `bench.verdict` over those runs and
any finished run directories given with --also (the SmolLM2 experiments'):

    python -m bench.verdict_worlds arithmetic:0 arithmetic:2 carry:0 carry:1 \\
        --also runs/experiment-sampled/run --out runs/verdict

Every step resumes: a built world and a finished run are reused.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench.verdict import render, seeds_of

RUN_SETTINGS = [
    "threshold=auto",
    "rrt=false",
    "modes=[sft,t3s]",
    "seeds=[0,1,2]",
    "probe.continue_without_dip=true",
]


def student(spec: str) -> tuple[str, int]:
    world, _, seed = spec.partition(":")
    if world not in ("arithmetic", "carry") or not seed.isdigit():
        raise argparse.ArgumentTypeError(f"'{spec}': a student is WORLD:SEED, WORLD arithmetic or carry")
    return world, int(seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.verdict_worlds", description=__doc__.split("\n\n")[0])
    ap.add_argument("students", nargs="+", type=student, metavar="WORLD:SEED")
    ap.add_argument("--out", type=Path, default=Path("runs/verdict"), help="worlds and runs go here")
    ap.add_argument("--also", nargs="*", type=Path, default=[], help="finished t3s run directories to add")
    args = ap.parse_args(argv)
    t3s = [sys.executable, "-m", "t3s"]
    runs = []
    for world, seed in args.students:
        where = args.out / f"{world}-{seed}"
        build = [*t3s, "testbed", "build", "--world", world, "--seed", str(seed), "--out", str(where / "world")]
        if subprocess.run(build + ["--quiet"]).returncode != 0:
            return 1
        run = [*t3s, "run", str(where / "world" / "run.yaml"), "--out", str(where / "run"), "--quiet"]
        if subprocess.run(run + RUN_SETTINGS).returncode != 0:
            return 1
        runs.append(where / "run")
    records, skipped = [], []
    for run in runs + args.also:
        got = seeds_of(run)
        records += got
        if not got:
            skipped.append(str(run))
    text = render(records, skipped)
    print(text, end="")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "verdict-table.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
