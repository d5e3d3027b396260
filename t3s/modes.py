"""The training modes, as data (a leaf module: no torch, no stage imports).

A mode is what a training run of the student does with the teacher's response tokens. Each is one `Mode` entry in
`TABLE`: the keep-mask rule it applies (none: every token), which checkpoint's scores stand in θ_b's place and
which are its reference, the training settings it adds, and the objectives that train it. The pipeline's score
stages, the mode → checkpoint mapping, `t3s run --plan` and the CLI's choices are all read from this table, and
where each probe checkpoint lies from `CHECKPOINTS`, so a control that reads another checkpoint is one entry here
(two, for a new kind of checkpoint; docs/extending.md).

- `sft`: trains on every token (`none` is its old name, still accepted: `canonical`).
- the selection modes: train on the tokens a keep-mask keeps (`t3s.select`).
- `dft`: every token, each weighted by its own detached probability (Dynamic Fine-Tuning; TRL's
  `loss_type="dft"`): the loss-side alternative users have one flag away.
- the online token losses `eaft`, `memft`, `asft` (`train.loss`, t3s.objectives.token_losses): each reweights
  every token's loss per step from the model being trained; like `dft`, they need no probe and no selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from t3s import T3SError


@dataclass(frozen=True)
class Checkpoint:
    """A probe checkpoint whose scores a mode can read, and where the probe's directory holds it: a directory the
    probe always writes, the evaluated checkpoint nearest a multiple of the bottleneck step, or the evaluated
    checkpoint at a step a run-config key names. The last two exist only when the probe keeps every evaluated
    checkpoint (`t3s run` then sets `probe.keep_all`)."""

    name: str
    help: str
    directory: str | None = None  # bottleneck/, final/ under the probe's directory
    of_bottleneck: float | None = None  # nearest this × the bottleneck step (before it when < 1, after when > 1)
    at_step: str | None = None  # the RunConfig key holding the step (> 0 where a mode reads it)
    needs_end: bool = False  # the probe must run to its end (probe.online: false)

    @property
    def keeps_all(self) -> bool:
        return self.directory is None

    def scores_name(self, cfg: Any) -> str:
        """Its scores stage (and directory): scores-bottleneck, ..., scores-step-N (`cfg`: the RunConfig)."""
        return f"scores-{self.name}" + ("" if self.at_step is None else f"-{getattr(cfg, self.at_step)}")


CHECKPOINTS = {
    c.name: c
    for c in (
        Checkpoint("bottleneck", "θ_b, the probe's lowest point", directory="bottleneck"),
        Checkpoint(
            "final",
            "θ_T, the probe's end point (the probe must run to its end: probe.online false)",
            directory="final",
            needs_end=True,
        ),
        Checkpoint("early", "the evaluated checkpoint closest to half the bottleneck step", of_bottleneck=0.5),
        Checkpoint("step", "the evaluated checkpoint at step `delta_step`", at_step="delta_step"),
        Checkpoint(
            "recovery",
            "the evaluated checkpoint closest to twice the bottleneck step (the probe runs to its end)",
            of_bottleneck=2.0,
            needs_end=True,
        ),
    )
}


@dataclass(frozen=True)
class Mode:
    name: str
    help: str
    rule: str | None = None  # t3s.select.keep_mask's rule; None: no selection, every token is trained on
    delta: str = "bottleneck"  # the checkpoint whose scores stand in θ_b's place in Δc = c(θ_b) − c(θ_0)
    reference: str | None = None  # the checkpoint whose scores are the reference model's (excess-loss: θ_T)
    trainer: dict[str, Any] = field(default_factory=dict)  # SFTConfig settings the mode adds (dft: loss_type)
    loss: str = "nll"  # the per-token loss it trains with (`train.loss`: eaft, memft, asft)
    objectives: tuple[str, ...] = ("ar",)  # the objectives that train it ("diffusion": as a forced set)

    @property
    def selects(self) -> bool:
        return self.rule is not None

    def reads(self) -> dict[str, str]:
        """What the selection reads: {"bottleneck": checkpoint, ["reference": checkpoint]}."""
        return {"bottleneck": self.delta, **({"reference": self.reference} if self.reference else {})}

    def checkpoints(self) -> tuple[str, ...]:
        """The checkpoints whose scores this mode needs (θ_0's are always scored)."""
        return tuple(dict.fromkeys(self.reads().values())) if self.selects else ()


TABLE = (
    Mode("sft", "every token (the paper's SFT)", objectives=("ar", "diffusion")),
    Mode("t3s", "every token but the anchors (Δc > τ): the paper's method", rule="t3s", objectives=("ar", "diffusion")),
    Mode("reverse", "only the anchors (the tokens t3s drops)", rule="reverse"),
    Mode("static-high", "as many tokens dropped as t3s drops, the most confident under θ_0", rule="static-high"),
    Mode("static-low", "as many tokens dropped as t3s drops, the least confident under θ_0", rule="static-low"),
    Mode(
        "random",
        "as many tokens dropped as t3s drops, at random (seeded)",
        rule="random",
        objectives=("ar", "diffusion"),
    ),
    Mode("t3s-final", "the t3s rule with θ_T's scores in θ_b's place", rule="t3s", delta="final"),
    Mode("t3s-early", "the t3s rule with an evaluated checkpoint halfway to θ_b", rule="t3s", delta="early"),
    Mode(
        "excess-loss",
        "the tokens θ_T gained most on over θ_0 (as many as t3s keeps)",
        rule="excess-loss",
        reference="final",
    ),
    Mode(
        "dft", "every token, weighted by its detached probability (TRL's loss_type=dft)", trainer={"loss_type": "dft"}
    ),
    Mode(
        "eaft",
        "every token, weighted by its normalised top-k entropy^α under the current model (EAFT)",
        loss="eaft",
    ),
    Mode("memft", "the tokens whose current probability is below 0.5, per step (MemFT's hard mask)", loss="memft"),
    Mode("asft", "DFT plus a KL term to θ_0 (ASFT; under LoRA θ_0 is the adapter-disabled model)", loss="asft"),
    Mode("t3s-step", "the t3s rule with the checkpoint at step `delta_step` in θ_b's place", rule="t3s", delta="step"),
    Mode(
        "t3s-recovery",
        "the t3s rule with the evaluated checkpoint closest to twice the bottleneck step in θ_b's place",
        rule="t3s",
        delta="recovery",
    ),
)
MODES = {m.name: m for m in TABLE}
ALIASES = {"none": "sft"}

# Named groups, read from the table (the modes' order is the table's)
RUN_MODES = tuple(m.name for m in TABLE if "ar" in m.objectives)
SELECTION_MODES = tuple(m.name for m in TABLE if m.selects)
# Modes that train on every response token with a loss of their own (dft, eaft, ...): no selection
LOSS_MODES = tuple(m.name for m in TABLE if not m.selects and (m.trainer or m.loss != "nll"))
# A masked-diffusion student: `sft` is the random mask alone; its selecting modes add a forced set (always masked)
DIFFUSION_MODES = tuple(m.name for m in TABLE if "diffusion" in m.objectives)


def canonical(mode: str) -> str:
    """A mode's one name (`none` -> `sft`)."""
    return ALIASES.get(mode, mode)


def mode_of(name: str) -> Mode:
    """The table's entry of a mode (by any of its names)."""
    if canonical(name) not in MODES:
        raise T3SError(f"unknown mode '{name}' (choose from {', '.join(MODES)})")
    return MODES[canonical(name)]


def checkpoints_read(modes: list[str] | tuple[str, ...]) -> list[str]:
    """The checkpoints whose scores these modes read besides θ_0's, in CHECKPOINTS' order (θ_b always: the
    probe's bottleneck is scored for every run)."""
    wanted = {c for m in modes if canonical(m) in MODES for c in mode_of(m).checkpoints()}
    return ["bottleneck", *(c for c in CHECKPOINTS if c in wanted and c != "bottleneck")]


def keeps_all_checkpoints(modes: list[str] | tuple[str, ...]) -> bool:
    """Whether these modes read a checkpoint that exists only when the probe keeps every evaluated one."""
    return any(CHECKPOINTS[c].keeps_all for c in checkpoints_read(modes))


def scores_name(checkpoint: str, cfg: Any) -> str:
    """The scores stage (and directory) of a checkpoint: scores-bottleneck, ..., scores-step-N."""
    return CHECKPOINTS[checkpoint].scores_name(cfg)


def missing_steps(cfg: Any) -> list[tuple[str, str]]:
    """(mode, config key) for every mode of the run config that reads a checkpoint at a step the config does not
    give (the key is not > 0)."""
    return [
        (m, CHECKPOINTS[c].at_step)
        for m in cfg.modes
        if canonical(m) in MODES
        for c in mode_of(m).checkpoints()
        if CHECKPOINTS[c].at_step and getattr(cfg, CHECKPOINTS[c].at_step) <= 0
    ]
