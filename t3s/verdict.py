"""The verdict: will T3S pay on this run? Read from the probe alone, before any mode is trained.

The probe is plain SFT with its budget, evaluated along the way; its token log-probabilities at every evaluated
step give Δc without a separate scoring pass. The rule (docs/method.md, "Will T3S pay on this run?") was written
down before it was checked against the runs we have, and is not tuned to them:

1. no dip: the probe never fell `margin` (two standard errors of its start) below its start. There is no shock for
   T3S to remove: use SFT.
2. SFT recovers within the budget: at the probe's end, training accuracy is back within `margin` of its start.
   Plain SFT has healed by itself; T3S only drops tokens SFT has learned to use (train longer, or use SFT).
3. the selection is degenerate: more than `DEGENERATE` of the response tokens are anchors at θ_b (Δc above the
   threshold): T3S would train on a small remainder of the teacher's text. Raise the threshold.
4. otherwise, SFT is still in the dip when its budget ends and the selection keeps most tokens: T3S is expected
   to help.

Every verdict carries the numbers that decided it, and the ones the paper uses to describe its regime (the share
of tokens still below their base confidence at θ_T: 68.51 % in the paper's Table 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t3s import T3SError
from t3s.select import groups

DEGENERATE = 0.5  # anchors above half of the response tokens: the selection drops most of what the teacher wrote

HEADLINES = {
    "no-dip": "no imitation shock: use SFT",
    "sft": "SFT recovers within the budget: train longer or use SFT",
    "degenerate": f"the selection is degenerate (anchors > {100 * DEGENERATE:.0f}%): raise the threshold",
    "t3s": "T3S is expected to help",
    "unknown": "no verdict: the probe stopped before the end of its budget (probe.online); set probe.online: false",
}


@dataclass(frozen=True)
class Verdict:
    outcome: str  # a key of HEADLINES
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        return HEADLINES[self.outcome]

    @property
    def pays(self) -> bool | None:
        """Whether T3S is expected to beat SFT (None: no verdict)."""
        return None if self.outcome == "unknown" else self.outcome == "t3s"

    def reason(self) -> str:
        """The numbers that decided it, in one line."""
        n = self.numbers

        def pct(key: str) -> str:
            return "?" if n.get(key) is None else f"{100 * n[key]:.1f}%"

        parts = [
            f"training accuracy {pct('start_accuracy')} at θ_0 → {pct('bottleneck_accuracy')} at the bottleneck "
            f"(step {n.get('bottleneck_step')}) → {pct('final_accuracy')} at the end (step {n.get('final_step')})",
            f"a dip or a recovery counts from {100 * n['margin']:.1f} points (2 standard errors)",
        ]
        if n.get("final_heldout_accuracy") is not None:
            parts.append(f"held-out {pct('start_heldout_accuracy')} → {pct('final_heldout_accuracy')}")
        if n.get("anchors") is not None:
            parts.append(f"anchors {pct('anchors')} (threshold {n['threshold']})")
        if n.get("below_base_at_end") is not None:
            parts.append(f"{pct('below_base_at_end')} of tokens below their base confidence at the end")
        return "; ".join(parts)

    def line(self) -> str:
        return f"{self.headline} ({self.reason()})"

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "headline": self.headline, "pays": self.pays, **self.numbers}


def decide(
    points: list[dict[str, Any]],
    margin: float,
    bottleneck_step: int | None,
    completed: bool,
    logprobs: dict[int, np.ndarray] | None = None,
    threshold: float | str = 0.0,
) -> Verdict:
    """The verdict from a probe's trajectory (`points`, step 0 first), its noise margin, its bottleneck step,
    whether it ran to the end of its budget, and its per-step token log-probabilities (None: the probe recorded
    none, as for a mask predictor's own probe)."""
    if not points or points[0]["step"] != 0:
        raise T3SError("a probe's trajectory starts with the evaluation of θ_0 at step 0")
    start, end = points[0], points[-1]
    at = {p["step"]: p for p in points}
    b = at.get(bottleneck_step) if bottleneck_step is not None else None
    numbers: dict[str, Any] = {
        "start_accuracy": start["train_accuracy"],
        "bottleneck_step": bottleneck_step,
        "bottleneck_accuracy": None if b is None else b["train_accuracy"],
        "final_step": end["step"],
        "final_accuracy": end["train_accuracy"],
        "start_heldout_accuracy": start.get("heldout_accuracy"),
        "final_heldout_accuracy": end.get("heldout_accuracy"),
        "margin": margin,
        "threshold": threshold,
        "anchors": None,
        "anchors_zero": None,
        "anchors_auto": None,
        "below_base_at_end": None,
    }
    if logprobs and 0 in logprobs:
        c0 = logprobs[0]
        if bottleneck_step in logprobs and c0.size:
            delta = logprobs[bottleneck_step] - c0
            numbers["anchors"] = float(groups(delta, c0, threshold)[0].mean())
            # the two thresholds users compare (the regime's numbers, whatever the run's own threshold)
            numbers["anchors_zero"] = float(groups(delta, c0, 0.0)[0].mean())
            numbers["anchors_auto"] = float(groups(delta, c0, "auto")[0].mean())
        if end["step"] in logprobs and end["step"] != 0:
            numbers["below_base_at_end"] = float((logprobs[end["step"]] < c0).mean()) if c0.size else None
    if b is None or start["train_accuracy"] - b["train_accuracy"] < margin - 1e-12:
        return Verdict("no-dip", numbers)
    if not completed:
        return Verdict("unknown", numbers)
    if end["train_accuracy"] >= start["train_accuracy"] - margin - 1e-12:
        return Verdict("sft", numbers)
    if numbers["anchors"] is not None and numbers["anchors"] > DEGENERATE:
        return Verdict("degenerate", numbers)
    return Verdict("t3s", numbers)


def probe_verdict(probe_dir: str | Path, result: dict[str, Any], threshold: float | str = 0.0) -> Verdict:
    """The verdict of a finished probe: its directory (trajectory.jsonl, token_logprobs.npz) and its record."""
    probe_dir = Path(probe_dir)
    path = probe_dir / "trajectory.jsonl"
    if not path.exists():
        raise T3SError(f"{probe_dir}: no trajectory.jsonl (is this a finished probe?)")
    points = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    logprobs = None
    npz = probe_dir / "token_logprobs.npz"
    if npz.exists():
        with np.load(npz) as z:
            logprobs = {int(k.split("_")[1]): z[k] for k in z.files if k.startswith("step_")}
    return decide(points, result["margin"], result["bottleneck_step"], result["completed"], logprobs, threshold)
