"""The objectives a student can be trained with (`OBJECTIVES`, one table), and the one place that picks one.

`objective_for(cfg)` reads a run config's `objective` key (and lets the objective check the run);
`objective_of(model, cfg)` asks each objective whether it recognises a model from its own config (a *ForMaskedLM,
LLaDA, LLaDA-2 or Dream model is a masked-diffusion student), for the single commands. Everything else takes the
`Objective` it is given (`t3s.objectives.base`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from t3s import T3SError
from t3s.config import DiffusionConfig
from t3s.objectives.ar import Autoregressive
from t3s.objectives.base import Objective, Prepared
from t3s.objectives.masked import MaskedDiffusion

if TYPE_CHECKING:
    from t3s.config import RunConfig

__all__ = [
    "Autoregressive",
    "MaskedDiffusion",
    "OBJECTIVES",
    "Objective",
    "Prepared",
    "as_objective",
    "objective_for",
    "objective_of",
]


# Every objective a run config can name (`objective: NAME`): the one table a new objective joins.
OBJECTIVES: dict[str, type[Objective]] = {"ar": Autoregressive, "diffusion": MaskedDiffusion}
DEFAULT = "ar"  # the objective of a model no other objective recognises


def check_name(cfg: RunConfig) -> None:
    """Refuse a run config whose `objective` is not in the table."""
    if cfg.objective not in OBJECTIVES:
        raise T3SError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{cfg.objective}'")


def objective_for(cfg: RunConfig) -> Objective:
    """The objective a run config names, with its settings, after it has checked the run (`Objective.check`)."""
    check_name(cfg)
    objective = OBJECTIVES[cfg.objective].from_config(cfg)
    objective.check(cfg)
    return objective


def objective_of(model: str | Path, cfg: RunConfig, trust_remote_code: bool = False) -> Objective:
    """The objective of a model (a directory or a hub id), from its config alone, with the run config's settings
    for it."""
    check_name(cfg)  # the model decides, but a config naming no objective we have is a mistake
    for name, cls in OBJECTIVES.items():
        if name != DEFAULT and cls.recognises(model, trust_remote_code):
            return cls.from_config(cfg, model)
    return OBJECTIVES[DEFAULT].from_config(cfg, model)


def as_objective(value: Objective | DiffusionConfig | None) -> Objective:
    """An objective from what a caller of the stage functions may pass: an objective, the `diffusion` section
    (a masked-diffusion student) or None (autoregressive)."""
    if isinstance(value, Objective):
        return value
    return MaskedDiffusion(value) if isinstance(value, DiffusionConfig) else Autoregressive()
