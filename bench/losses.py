"""The per-token loss modes (dft, eaft, memft, asft) against SFT and T3S, from finished `t3s run` directories:
held-out accuracy mean ± sd over seeds, the paired difference to SFT on the same prompts (mean over seeds ± its
standard error), and the training-accuracy trajectory (does the mode dip as SFT does?).

    python -m bench.losses RUN [RUN ...] [--names NAME ...] [--out FILE.md]

Every number is read from the runs' files: summary.json, seed-*/eval/<method>/samples.jsonl, the probe's
trajectory (SFT) and each tracked mode's seed-*/train/<mode>/trajectory.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from experiments.smollm import _correct, paired

METHODS = ["sft", "t3s", "dft", "eaft", "memft", "asft"]


def trajectory(run: Path, seed: int, method: str) -> list[tuple[int, float]]:
    """(step, training accuracy) along training: the probe's for sft, the tracking's for a trained mode."""
    path = run / f"seed-{seed}" / ("probe" if method == "sft" else f"train/{method}") / "trajectory.jsonl"
    if not path.exists():
        return []
    points = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(p["step"], p["train_accuracy"]) for p in points if p.get("train_accuracy") is not None]


def dip(pts: list[tuple[int, float]]) -> tuple[float, float, int] | None:
    """(start, lowest after the start, its step) of a trajectory."""
    if len(pts) < 2:
        return None
    start = pts[0][1]
    step, low = min(pts[1:], key=lambda p: (p[1], p[0]))
    return start, low, step


def table(run: Path, name: str) -> list[str]:
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    rows = {r["method"]: r for r in summary["rows"]}
    seeds = summary["seeds"]
    methods = [m for m in METHODS if m in rows]
    base = rows["base"]["accuracy"] if "base" in rows else None
    n = None
    L = [
        f"**{name}**" + ("" if base is None else f" (base {100 * base:.1f} %)"),
        "",
        "| method | held-out % (mean ± sd) | per seed | paired Δ vs sft (pts) | training accuracy: start → lowest "
        "(step), per seed |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        r = rows[m]
        acc = f"{100 * r['accuracy']:.1f}" + ("" if r["accuracy_sd"] is None else f" ± {100 * r['accuracy_sd']:.1f}")
        per = ", ".join(f"{100 * v:.1f}" for v in r["per_seed"].values())
        diffs = []
        for s in seeds:
            a, b = (run / f"seed-{s}" / "eval" / x / "samples.jsonl" for x in ("sft", m))
            if m != "sft" and a.exists() and b.exists():
                d, se, n = paired(_correct(a), _correct(b))
                diffs.append((d, se))
        if diffs:
            mean = statistics.fmean(d for d, _ in diffs)
            se = math.sqrt(sum(e * e for _, e in diffs)) / len(diffs)
            delta = f"{100 * mean:+.1f} ± {100 * se:.1f}"
        else:
            delta = "–"
        dips = []
        for s in seeds:
            d = dip(trajectory(run, s, m))
            dips.append("–" if d is None else f"{100 * d[0]:.0f} → {100 * d[1]:.0f} ({d[2]})")
        L.append(f"| {m} | {acc} | {per} | {delta} | {'; '.join(dips)} |")
    L += [
        "",
        f"{n or '?'} held-out prompts per seed; Δ: the paired difference to SFT on the same prompts, averaged over "
        f"seeds {seeds}, ± its standard error. Training accuracy on training prompts: SFT's from its probe "
        f"(every {summary['config']['probe']['eval_every']} steps, {summary['config']['probe']['subset']} "
        f"prompts), a trained mode's from its tracking (every {summary['config']['probe']['track_every']} steps, "
        f"{summary['config']['probe']['track_subset']} prompts): a dip between evaluations is not seen.",
        "",
    ]
    return L


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.losses", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--names", nargs="*", help="a name per run (default: the directory)")
    ap.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    a = ap.parse_args(argv)
    names = a.names or [r.name for r in a.runs]
    if len(names) != len(a.runs):
        ap.error("--names: one per run")
    lines = [line for run, name in zip(a.runs, names) for line in table(run, name)]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
