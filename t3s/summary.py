"""The summary table of a `t3s run` (single teacher or mixture): one row per method, every number read from the
run's evaluation and selection records, written as Markdown and JSON."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from t3s.artifacts import write_json
from t3s.config import MASKING_LOSSES
from t3s.modes import LOSS_MODES, mode_of

# Modes that train on every response token: their selection column reads 0 rather than "–" (memft drops tokens
# per step, from the model being trained: "–", as it has no selection to count them)
EVERY_TOKEN = ("sft", *(m for m in LOSS_MODES if mode_of(m).loss not in MASKING_LOSSES))


def mean_sd(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def pct(mean: float, sd: float | None) -> str:
    return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def base_row(base: dict[str, Any], stat: str) -> dict[str, Any]:
    """The base model's row from its evaluation metrics."""
    return {
        "method": "base",
        "accuracy": base["accuracy"],
        "accuracy_sd": None,
        "delta": 0.0,
        "pass_at_k": base["pass_at_k"],
        "mean_tokens": base["mean_tokens"],
        stat: None,
        "per_seed": {},
    }


def method_row(
    method: str, mode: str, per_seed: dict[Any, dict[str, Any]], fractions: list[float], stat: str, base_accuracy: float
) -> dict[str, Any]:
    """One method's row: accuracy mean ± sd over seeds, pass@k, mean response tokens and the mean of its
    selections' `stat` (dropped or forced fraction; 0 for a mode that trains every token, None without one)."""
    acc, sd = mean_sd([v["accuracy"] for v in per_seed.values()])
    tokens = [v["mean_tokens"] for v in per_seed.values() if v["mean_tokens"] is not None]
    return {
        "method": method,
        "accuracy": acc,
        "accuracy_sd": sd,
        "delta": acc - base_accuracy,
        "pass_at_k": statistics.fmean(v["pass_at_k"] for v in per_seed.values()),
        "mean_tokens": statistics.fmean(tokens) if tokens else None,
        stat: statistics.fmean(fractions) if fractions else (0.0 if mode in EVERY_TOKEN else None),
        "per_seed": {str(s): v["accuracy"] for s, v in per_seed.items()},
    }


def table(rows: list[dict[str, Any]], stat: str, header: str, k: int) -> list[str]:
    """The Markdown table of the rows."""
    lines = [f"| method | accuracy % | Δ vs base | pass@{k} % | mean tokens | {header} |", "|---|---|---|---|---|---|"]
    for r in rows:
        frac = "–" if r.get(stat) is None else f"{100 * r[stat]:.1f}"
        tokens = "–" if r["mean_tokens"] is None else f"{r['mean_tokens']:.1f}"
        lines.append(
            f"| {r['method']} | {pct(r['accuracy'], r['accuracy_sd'])} | {100 * r['delta']:+.1f} | "
            f"{100 * r['pass_at_k']:.1f} | {tokens} | {frac} |"
        )
    return lines


def write_summary(out: Path, summary: dict[str, Any], title: str) -> None:
    """summary.json and summary.md (its `markdown` under a title), each atomically."""
    write_json(out / "summary.json", summary)
    tmp = out / ".summary.md.tmp"
    tmp.write_text(f"# {title}\n\n" + summary["markdown"], encoding="utf-8")
    tmp.replace(out / "summary.md")
