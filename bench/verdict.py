"""The verdict's hit rate: for every seed of every finished `t3s run` given, what the verdict said from the probe
(t3s.verdict) against what happened (did T3S end above SFT on the same seed?).

    python -m bench.verdict RUN_DIR [RUN_DIR ...] [--out FILE.md]

A run directory made before the verdict existed is read too: the verdict is recomputed from its probe's files
(trajectory.jsonl, token_logprobs.npz), exactly as `t3s run` computes it. Every number is read from the runs'
files. A seed counts as "T3S paid" when its t3s accuracy is above its sft accuracy; the table gives the
difference and the standard error of one evaluation (sqrt(p(1-p)/n) on the evaluated prompts), so that a
difference inside the noise can be seen as such. Runs without both `sft` and `t3s` are skipped, and said so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from t3s.verdict import probe_verdict


def seeds_of(run: Path) -> list[dict]:
    """One record per seed of a finished run: the verdict (its outcome, whether it predicts T3S pays) and the
    outcome (sft and t3s accuracy on that seed, the evaluation's prompt count)."""
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    rows = {r["method"]: r for r in summary.get("rows", [])}
    if "sft" not in rows or "t3s" not in rows:
        return []
    threshold = summary.get("config", {}).get("threshold", 0.0)
    out = []
    for seed, t3s_acc in rows["t3s"]["per_seed"].items():
        probe = run / f"seed-{seed}" / "probe"
        v = summary.get("verdicts", {}).get(seed)
        if (probe / "probe.json").exists():  # the rule of this code on the probe's own files (older runs too)
            v = probe_verdict(
                probe, json.loads((probe / "probe.json").read_text(encoding="utf-8")), threshold
            ).as_dict()
        if v is None:
            raise SystemExit(f"{run}: seed {seed} has neither a recorded verdict nor its probe's files")
        metrics = json.loads((run / f"seed-{seed}" / "eval" / "t3s" / "metrics.json").read_text(encoding="utf-8"))
        n = metrics["metrics"]["prompts"]
        sft_acc = rows["sft"]["per_seed"][seed]
        out.append(
            {
                "run": str(run),
                "seed": seed,
                "outcome": v["outcome"],
                "predicts": v["pays"],
                "sft": sft_acc,
                "t3s": t3s_acc,
                "paid": t3s_acc > sft_acc,
                "se": math.sqrt(max(sft_acc * (1 - sft_acc), 1e-12) / n) if n else None,
                "anchors": v.get("anchors"),
                "anchors_zero": v.get("anchors_zero"),
                "anchors_auto": v.get("anchors_auto"),
                "below_base_at_end": v.get("below_base_at_end"),
            }
        )
    return out


def render(records: list[dict], skipped: list[str]) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}"

    lines = [
        "| run | seed | verdict | sft % | t3s % | t3s − sft (SE of one eval) | anchors % (run's τ; τ = 0; auto) "
        "| below base at θ_T % | hit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    decided = [r for r in records if r["predicts"] is not None]
    for r in records:
        hit = "–" if r["predicts"] is None else ("yes" if r["predicts"] == r["paid"] else "**no**")
        se = "" if r["se"] is None else f" ({100 * r['se']:.1f})"
        lines.append(
            f"| {r['run']} | {r['seed']} | {r['outcome']} | {pct(r['sft'])} | {pct(r['t3s'])} | "
            f"{100 * (r['t3s'] - r['sft']):+.1f}{se} | {pct(r['anchors'])}; {pct(r.get('anchors_zero'))}; "
            f"{pct(r.get('anchors_auto'))} | {pct(r['below_base_at_end'])} | {hit} |"
        )
    hits = sum(r["predicts"] == r["paid"] for r in decided)
    both = {r["paid"] for r in decided}
    lines += [
        "",
        f"Hit rate: {hits}/{len(decided)} decided seeds"
        + ("" if len(both) == 2 else " (only one outcome among them: the rule is not tested on the other)"),
    ]
    wrong = [f"{r['run']} seed {r['seed']}" for r in decided if r["predicts"] != r["paid"]]
    if wrong:
        lines.append("Wrong: " + "; ".join(wrong))
    if skipped:
        lines.append("Skipped (no sft and t3s rows): " + "; ".join(skipped))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    records, skipped = [], []
    for run in args.runs:
        got = seeds_of(run)
        if got:
            records += got
        else:
            skipped.append(str(run))
    text = render(records, skipped)
    print(text, end="")
    if args.out:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
