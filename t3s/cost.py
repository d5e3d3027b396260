"""What T3S cost against SFT alone, read from a finished `t3s run`'s stage records (wall seconds, on the machine
that ran it).

The paper's recipe runs SFT once to find θ_b (the probe) and trains again from θ_0 with the mask. Per seed:

- **SFT alone**: the probe's stage less what only the probe does (its evaluations along the way, its token
  confidences and its checkpoint saves), plus the final evaluation of the SFT model. With `probe.online` the probe
  stops early and `sft` is trained as a stage of its own: then that stage's seconds.
- **SFT watched**: SFT with the probe's evaluations, as a user who wants to see the shock runs it: the whole probe
  plus the final evaluation.
- **T3S**: the whole probe, the scoring of θ_0 (shared by the seeds, divided among them) and of θ_b, the selection,
  the masked training and its final evaluation.
- **Online stop**: where `probe.online`'s rule (`t3s.probe.online_should_stop`, with the probe's margin and
  patience) would have stopped this probe, and the wall time from there to the probe's end that it saves. A probe
  that stops early gives no verdict (`t3s.verdict`): what the verdict needs is the probe's end.

A leaf of the pipeline: it reads files, imports no stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t3s import T3SError
from t3s.probe import online_should_stop

PROBE_ONLY = ("generation", "confidence", "checkpoints")  # what the probe does that plain SFT does not


def online_stop(points: list[dict[str, Any]], margin: float, patience: int) -> dict[str, Any] | None:
    """The first evaluation at which the online rule stops a probe with this trajectory (None: it never does):
    its step and the wall seconds from it to the trajectory's last point."""
    acc = [p["train_accuracy"] for p in points]
    for i in range(1, len(points)):
        if online_should_stop(acc[: i + 1], margin, patience):
            saved = None
            if points[i].get("time") is not None and points[-1].get("time") is not None:
                saved = points[-1]["time"] - points[i]["time"]
            return {"step": points[i]["step"], "of": points[-1]["step"], "saved_seconds": saved}
    return None


def seed_cost(stages: dict[str, dict[str, Any]], seed: int, n_seeds: int, probe_dir: Path | None = None) -> dict:
    """One seed's costs (seconds) from the run's stage records ({key: record}); see the module docstring."""

    def sec(key: str) -> float:
        if key not in stages:
            raise T3SError(f"no record of stage {key}: cost needs a finished run with the sft and t3s modes")
        return float(stages[key]["seconds"])

    probe = stages.get(f"seed-{seed}__probe")
    if probe is None:
        raise T3SError(f"no record of stage seed-{seed}__probe")
    parts = probe["result"].get("seconds", {})
    probe_s = float(probe["seconds"])
    watch = sum(float(parts.get(k, 0.0)) for k in PROBE_ONLY)
    eval_sft = sec(f"seed-{seed}__eval-sft")
    own_sft = f"seed-{seed}__train-sft" in stages
    sft_alone = (sec(f"seed-{seed}__train-sft") if own_sft else probe_s - watch) + eval_sft
    t3s_parts = {
        "probe": probe_s,
        "scoring": sec("scores-init") / n_seeds + sec(f"seed-{seed}__scores-bottleneck"),
        "selection": sec(f"seed-{seed}__select-t3s"),
        "training": sec(f"seed-{seed}__train-t3s"),
        "evaluation": sec(f"seed-{seed}__eval-t3s"),
    }
    t3s_total = sum(t3s_parts.values())
    out = {
        "seed": seed,
        "sft_alone": sft_alone,
        "sft_watched": probe_s + eval_sft,
        "t3s": t3s_total,
        "t3s_parts": t3s_parts,
        "ratio": t3s_total / sft_alone if sft_alone > 0 else None,
        "online_stop": None,
    }
    traj = (probe_dir / "trajectory.jsonl") if probe_dir is not None else None
    if traj is not None and traj.exists() and not probe["result"].get("stopped_early"):
        points = [json.loads(x) for x in traj.read_text(encoding="utf-8").splitlines() if x.strip()]
        patience = probe["result"].get("probe_config", {}).get("patience", 2)
        out["online_stop"] = online_stop(points, probe["result"]["margin"], patience)
    return out


def run_costs(run: str | Path) -> dict[str, Any]:
    """Every seed's costs of a finished single-teacher `t3s run` directory, and their means."""
    run = Path(run)
    files = sorted((run / "stages").glob("*.json"))
    if not files:
        raise T3SError(f"{run}: no stages/ records (is this a t3s run directory?)")
    stages = {}
    for f in files:
        try:
            stages[f.stem] = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise T3SError(f"{f}: not a stage record ({e})") from None
    seeds = sorted(int(k.split("__")[0][5:]) for k in stages if k.endswith("__probe") and k.startswith("seed-"))
    per = [seed_cost(stages, s, len(seeds), run / f"seed-{s}" / "probe") for s in seeds]
    mean = {k: sum(p[k] for p in per) / len(per) for k in ("sft_alone", "sft_watched", "t3s")} if per else {}
    return {"seeds": per, "mean": mean}


def format_costs(costs: dict[str, Any]) -> list[str]:
    """The costs as a Markdown table with one line of explanation."""

    def m(x: float | None) -> str:
        return "–" if x is None else f"{x / 60:.1f}"

    lines = [
        "| seed | SFT alone (min) | SFT watched (min) | T3S (min): probe + scoring + selection + training + "
        "evaluation | T3S / SFT alone | online stop (step of steps, min saved) |",
        "|---|---|---|---|---|---|",
    ]
    for c in costs["seeds"]:
        p = c["t3s_parts"]
        stop = c["online_stop"]
        where = (
            "never stops"
            if stop is None
            else f"{stop['step']} of {stop['of']}, {m(stop['saved_seconds'])} saved"
            if stop["saved_seconds"] is not None
            else f"{stop['step']} of {stop['of']}"
        )
        lines.append(
            f"| {c['seed']} | {m(c['sft_alone'])} | {m(c['sft_watched'])} | {m(c['t3s'])} = {m(p['probe'])} + "
            f"{m(p['scoring'])} + {m(p['selection'])} + {m(p['training'])} + {m(p['evaluation'])} | "
            + ("–" if c["ratio"] is None else f"{c['ratio']:.2f}×")
            + f" | {where} |"
        )
    lines += [
        "",
        "Wall minutes of each stage on the machine that ran it. SFT alone: the probe's training without its "
        "evaluations, plus the final evaluation; SFT watched: with the probe's evaluations (to see the shock); T3S: "
        "the whole probe, then scoring θ_0 (shared by the seeds) and θ_b, the selection, the masked training and "
        "its evaluation. The online stop saves the probe's time after it, but a stopped probe gives no verdict.",
    ]
    return lines
