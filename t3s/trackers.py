"""Experiment trackers (`train.report_to`) beyond the Trainer's own logging.

Every probe and training stage is a Trainer run, so its loss reaches `report_to` as usual; the probe's (and a
tracked mode's) evaluations go through `trainer.log` as `t3s/*` metrics (t3s.probe). TensorBoard writes into
the stage's own directory (`RUN/seed-S/probe/tensorboard`, `RUN/seed-S/train/MODE/tensorboard`), so
`tensorboard --logdir RUN` shows every stage as its own run. Each stage is its own W&B run: the one the Trainer
opened is finished when the stage ends (`end_stage`), otherwise every later stage of one `t3s run` process would
log into the first stage's run. The run's final results table goes to the trackers once (`log_summary`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

# trackers that receive the summary; the Trainer's other integrations (mlflow, comet, ...) get every stage's
# metrics through transformers, but not the table
SUMMARY_TRACKERS = ("tensorboard", "wandb")


def wanted(report_to: str | list[str] | None) -> list[str]:
    """The trackers a `report_to` value names ("none", "all", one name, or a comma-separated list)."""
    if report_to is None:
        return []
    names = report_to if isinstance(report_to, list) else [x.strip() for x in str(report_to).split(",")]
    names = [x for x in names if x and x != "none"]
    if "all" in names:
        from transformers.integrations import get_available_reporting_integrations

        return list(get_available_reporting_integrations())
    return names


def end_stage() -> None:
    """Finish the W&B run a stage's Trainer opened (if any), so that the next stage starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of a `t3s run` summary as tracker scalars: `summary/<method>/<column>`."""
    out: dict[str, float] = {}
    for row in summary.get("rows", []):
        for key, value in row.items():  # accuracy, its sd, delta, pass@k, tokens, dropped or forced fraction
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"summary/{row['method']}/{key}"] = float(value)
    return out


def log_summary(report_to: str | list[str] | None, out: Path, summary: dict[str, Any]) -> list[str]:
    """Send the results table of a finished run to TensorBoard (`out/tensorboard/summary`, rewritten each time)
    and W&B (one run named `<run directory>/summary`, WANDB_PROJECT as the Trainer uses it). Returns the trackers
    that received it."""
    names = [n for n in wanted(report_to) if n in SUMMARY_TRACKERS]
    scalars = summary_scalars(summary)
    text = summary.get("markdown", "")
    if "tensorboard" in names:
        from torch.utils.tensorboard import SummaryWriter

        where = Path(out) / "tensorboard" / "summary"
        shutil.rmtree(where, ignore_errors=True)  # a resumed run logs its table again: one copy only
        writer = SummaryWriter(log_dir=str(where))
        for key, value in scalars.items():
            writer.add_scalar(key, value, 0)
        writer.add_text("summary", text, 0)
        writer.close()
    if "wandb" in names:
        import wandb

        run = wandb.init(
            project=os.getenv("WANDB_PROJECT", "huggingface"), name=f"{Path(out).name}/summary", job_type="t3s-summary"
        )
        columns = ["method", "accuracy", "accuracy_sd", "delta", "pass_at_k", "mean_tokens"]
        run.log(
            {"summary/table": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in summary["rows"]])}
        )
        run.summary.update(scalars)
        run.finish()
    return names
