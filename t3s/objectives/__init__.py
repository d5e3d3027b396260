"""The two objectives a student can be trained with, and the one place that picks between them.

`objective_for(cfg)` reads a run config's `objective` key; `objective_of(model, cfg)` looks at a model's own
config (a *ForMaskedLM, LLaDA, LLaDA-2 or Dream model is a masked-diffusion student), for the single commands.
Everything else takes the `Objective` it is given (`t3s.objectives.base`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from t3s.config import DiffusionConfig
from t3s.objectives.ar import Autoregressive
from t3s.objectives.base import Objective, Prepared
from t3s.objectives.masked import MaskedDiffusion

if TYPE_CHECKING:
    from t3s.config import RunConfig

__all__ = [
    "Autoregressive",
    "MaskedDiffusion",
    "Objective",
    "Prepared",
    "as_objective",
    "objective_for",
    "objective_of",
]


def objective_for(cfg: RunConfig) -> Objective:
    """The objective a run config names (`objective: ar | diffusion`, the latter with its `diffusion` section)."""
    return MaskedDiffusion(cfg.diffusion) if cfg.objective == "diffusion" else Autoregressive()


def objective_of(model: str | Path, cfg: RunConfig, trust_remote_code: bool = False) -> Objective:
    """The objective of a model (a directory or a hub id), from its config alone."""
    from t3s.objectives.diffusion import is_mask_predictor

    return MaskedDiffusion(cfg.diffusion) if is_mask_predictor(model, trust_remote_code) else Autoregressive()


def as_objective(value: Objective | DiffusionConfig | None) -> Objective:
    """An objective from what a caller of the stage functions may pass: an objective, the `diffusion` section
    (a masked-diffusion student) or None (autoregressive)."""
    if isinstance(value, Objective):
        return value
    return MaskedDiffusion(value) if isinstance(value, DiffusionConfig) else Autoregressive()
