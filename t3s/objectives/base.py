"""The objective interface: everything that differs between training an autoregressive student and a
masked-diffusion one, behind one small class. The stages (train, probe, evaluate, select, the pipeline) hold an
`Objective` and call it; they never ask which kind it is.

An objective owns:
- `load`: the model class (a causal LM, or a mask predictor with its LM head);
- `columns`: the training columns a selection turns into (labels with −100 on dropped tokens, or a forced set);
- `trainer`: the Trainer and its loss;
- `generate`: how the student answers a prompt (HF `generate`, or the diffusion sampler);
- `select`: which selection applies (a keep-mask, or a forced set of always-masked positions);
- `confidence`: the teacher-forced confidence the probe records (none for a mask predictor);
- its settings, split by the stages that read them (`training_inputs`, `sampler_inputs`, `selection_inputs`),
  so that each stage's fingerprint holds exactly what it reads.

Also here: the pieces both trainers share (TrainingArguments from a TrainConfig, the precision plan, the
non-finite-loss stop, the prepared data record).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from t3s import T3SError
from t3s.config import GenConfig, TrainConfig
from t3s.data import Example, RenderReport, Row
from t3s.models import Precision, TrainingPlan, training_plan

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

    from t3s.config import RunConfig
    from t3s.generation import Generation
    from t3s.score import ScoreSet
    from t3s.select import Selection

    # a selector's Δc moved onto the student's tokens (t3s.objectives.projection.projector): per row the values, the
    # student's response ids, the student's fingerprints and the count of student tokens no selector token covers
    Projection = Callable[[ScoreSet], tuple[list[np.ndarray], list[list[int]], dict[str, str], int]]


class Objective:
    """What a student is trained and sampled with. Two implementations: `Autoregressive` and `MaskedDiffusion`
    (`t3s.objectives.objective_for` picks one)."""

    name: str = ""  # recorded in every artifact: "ar" | "diffusion"
    modes: tuple[str, ...] = ()  # the run modes this objective trains
    selection_stat: str = ""  # the selection statistic a summary shows for a mode
    selection_header: str = ""  # ... and its column header
    samples_with: str = ""  # how it generates, for messages

    def load(
        self, path: str | Path, precision: Precision, trust_remote_code: bool = False, *, place: bool = True
    ) -> PreTrainedModel:
        raise NotImplementedError

    def selector(self, cfg: RunConfig) -> Selector:
        """Where a run's Δc comes from (read once by the pipeline): the student itself, or a separate model."""
        raise NotImplementedError

    def columns(self, examples: list[Example], sel: Selection | None, where: str, cfg: TrainConfig) -> dict[str, list]:
        """The training columns of `examples` with the selection `sel` applied (None: every token)."""
        raise NotImplementedError

    def trainer(
        self,
        model: PreTrainedModel,
        data: Prepared,
        cfg: TrainConfig,
        output_dir: str | Path,
        *,
        progress: bool = True,
        callbacks: list[TrainerCallback] | None = None,
        reference: PreTrainedModel | None = None,
    ) -> Trainer:
        """`reference`: θ_0, frozen, for a per-token loss that reads it (`train.loss: asft` without LoRA)."""
        raise NotImplementedError

    def generate(
        self,
        model: PreTrainedModel,
        tok: PreTrainedTokenizerBase,
        prompts: list[list[int]],
        gcfg: GenConfig,
        precision: Precision,
        progress: bool = True,
        desc: str = "generate",
    ) -> list[list[Generation]]:
        raise NotImplementedError

    def select(
        self,
        init: ScoreSet,
        bottleneck: ScoreSet,
        mode: str,
        *,
        threshold: float | str,
        seed: int,
        bottleneck_step: int | None,
        reference: ScoreSet | None = None,
        project: Projection | None = None,
    ) -> Selection:
        raise NotImplementedError

    def confidence(
        self, model: PreTrainedModel, examples: list[Example], precision: Precision, pad_id: int
    ) -> list[np.ndarray] | None:
        """Per example, the teacher-forced log-probabilities of its response tokens; None where the objective
        has no such thing."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: RunConfig, model: str | Path | None = None) -> Objective:
        """The objective with the run config's settings for it (its section, if it has one), for `model` (default:
        the run's student) where a setting depends on the model."""
        return cls()

    @classmethod
    def recognises(cls, model: str | Path, trust_remote_code: bool = False) -> bool:
        """Whether a model (a directory or a hub id) is a student of this objective, from its config alone
        (`objective_of`, for the single commands); the default objective recognises whatever no other does."""
        return False

    def check(self, cfg: RunConfig) -> None:
        """Refuse, before any work, a run this objective cannot carry out: a mode it does not train, a selector
        it needs and lacks, a generation backend it cannot use (the evaluation's, and the probe's for each model
        that is probed)."""
        if cfg.train.loss != "nll":  # the probe is SFT; each mode brings its own loss
            raise T3SError(
                f"train.loss={cfg.train.loss}: `t3s run` trains each mode with its own loss; add {cfg.train.loss} "
                "to modes instead"
            )
        bad = [m for m in cfg.modes if m not in self.modes]
        if bad:
            raise T3SError(f"a {self.name} student trains the modes {', '.join(self.modes)}; not {', '.join(bad)}")
        selector = self.selector(cfg)
        self.check_backend(cfg.eval.backend, "eval.backend")
        selector.objective.check_backend(cfg.probe.backend, "probe.backend")
        if selector.probe_student:
            try:
                self.check_backend(cfg.probe.backend, "probe.backend")
            except T3SError as e:
                raise T3SError(
                    f"{e} (probe_student: true probes the student itself; with probe_student: false only the "
                    "selector is probed, and its probe may use this backend)"
                ) from None

    def check_backend(self, backend: str, setting: str) -> None:
        """Refuse a generation backend this objective cannot use, before any work (`setting` names the key)."""

    def training_inputs(self) -> dict[str, Any] | None:
        """The objective's own settings that training reads (part of a training stage's fingerprint)."""
        return None

    def sampler_inputs(self) -> dict[str, Any] | None:
        """The objective's own settings that generation reads (part of a sampling stage's fingerprint)."""
        return None

    def selection_inputs(self) -> dict[str, Any] | None:
        """The objective's own settings that a selection reads."""
        return None

    def record(self) -> dict[str, Any]:
        """What artifacts record about the objective."""
        return {"objective": self.name, "diffusion": None}

    def trained_on(self, summary: dict[str, Any]) -> str:
        """One phrase for `t3s train`'s last line: what the loss covered."""
        raise NotImplementedError


@dataclass(frozen=True)
class Selector:
    """The model whose probe and scores give a run's Δc, as the pipeline reads it (`Objective.selector`)."""

    model: str  # its path or hub id
    objective: Objective  # how it trains and samples in its probe
    train: TrainConfig  # its probe's training settings (each seed's replaces `seed`)
    # the student itself: its probe is the run's SFT (whose end point is the `sft` result), RRT applies, the
    # selections are on the student's own tokens. Otherwise the student trains every mode, `sft` included, RRT
    # is skipped, and Δc is projected onto the student's tokens where the tokenizers differ
    is_student: bool
    probe_student: bool = False  # also probe the student itself (does it show the shock?); not for the student


@dataclass
class Prepared:
    """Rendered training data with the selection applied, ready for the objective's trainer."""

    tokenizer: PreTrainedTokenizerBase
    rows: list[Row]  # the validated rows, in file order
    examples: list[Example]
    report: RenderReport
    fingerprints: dict[str, str]
    selection: Selection | None
    dataset: Dataset  # with the objective's columns
    objective: Objective

    @property
    def kept_tokens(self) -> int:
        """AR: response tokens trained on. Diffusion: response tokens (every one can be masked)."""
        if "labels" not in self.dataset.column_names:
            return sum(len(e.response_ids) for e in self.examples)
        return sum(sum(1 for x in lab if x != -100) for lab in self.dataset["labels"])

    @property
    def forced_tokens(self) -> int | None:
        if "forced" not in self.dataset.column_names:
            return None
        return sum(sum(f) for f in self.dataset["forced"])


def selection_rows(examples: list[Example], sel: Selection, where: str) -> list[int]:
    """The selection's row index of every example, checking that it covers it with the same response tokens."""
    index, out = sel.by_id, []
    for e in examples:
        i = index.get(e.id)
        if i is None:
            raise T3SError(f"row '{e.id}' of the training data is not in the selection {where}")
        if list(sel.response_ids[i]) != e.response_ids:
            raise T3SError(f"row '{e.id}': the selection {where} was made on different response tokens")
        out.append(i)
    return out


DIVERGENCE_LOGS = 3  # logged losses in a row above the limit before a run counts as diverged


def divergence_limit(start: float, vocab: int | None) -> float:
    """The loss above which training has diverged, given the first logged loss: three times it, and at least
    ln(vocabulary) above it (ln V is the loss of a uniform guess: a run that far above where it began predicts
    worse than chance)."""
    return max(3 * start, start + math.log(vocab if vocab and vocab > 1 else 2**15))


def diverged(losses: list[tuple[int, float]], vocab: int | None) -> dict[str, Any] | None:
    """(step, loss) pairs as logged, oldest first: the divergence record when the last `DIVERGENCE_LOGS` of them
    all lie above `divergence_limit` of the first (a loss far above its start, sustained), else None."""
    if len(losses) < 1 + DIVERGENCE_LOGS:
        return None
    (step0, start), last = losses[0], losses[-DIVERGENCE_LOGS:]
    limit = divergence_limit(start, vocab)
    if all(v > limit for _, v in last):
        return {"step": last[-1][0], "loss": last[-1][1], "start_step": step0, "start_loss": start, "limit": limit}
    return None


def divergence_message(d: dict[str, Any], stopping: bool = True) -> str:
    return (
        f"training diverged at step {d['step']}: the loss is {d['loss']:.4g}, up from {d['start_loss']:.4g} at step "
        f"{d['start_step']} (above {d['limit']:.4g} for {DIVERGENCE_LOGS} logs in a row); lower "
        "train.learning_rate"
        + (
            " (or set train.stop_on_divergence=false to train on and mark the run)"
            if stopping
            else "; training on (train.stop_on_divergence=false), the run is marked diverged"
        )
    )


def finite_loss_callback(stop_on_divergence: bool = True) -> TrainerCallback:
    """A TrainerCallback that stops training with one clear error when a logged loss (or, without fp16 loss
    scaling, whose overflow steps are skipped on purpose, the gradient norm) is NaN or infinite. The Trainer's
    own `logging_nan_inf_filter` would instead replace the NaN by an average and carry on with broken weights.
    It also watches for divergence (`diverged`: finite losses far above the first, sustained): it stops the run
    with one clear error, or, with `stop_on_divergence=False`, records it in `.diverged` (the run's summary
    keeps it) and says so once."""
    from transformers import TrainerCallback

    class FiniteLoss(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[tuple[int, float]] = []
            self.diverged: dict[str, Any] | None = None

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            for key in ("loss", "grad_norm") if not args.fp16 else ("loss",):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(float(value)):
                    raise T3SError(
                        f"training diverged at step {state.global_step}: {key} is {value} (lower "
                        "train.learning_rate, or check the data and train.dtype)"
                    )
            if (logs or {}).get("loss") is None or self.diverged is not None:
                return
            self.losses.append((state.global_step, float(logs["loss"])))
            d = diverged(self.losses, getattr(getattr(model, "config", None), "vocab_size", None))
            if d is None:
                return
            if stop_on_divergence:
                raise T3SError(divergence_message(d))
            self.diverged = d
            import sys

            print(f"t3s: warning: {divergence_message(d, stopping=False)}", file=sys.stderr)

    return FiniteLoss()


def divergence_of(trainer: Trainer) -> dict[str, Any] | None:
    """The divergence a trainer's `finite_loss_callback` recorded (None: none, or it stopped the run)."""
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "FiniteLoss":
            return cb.diverged
    return None


def plan_for(cfg: TrainConfig) -> TrainingPlan:
    """The precision plan of a training run with these settings on this machine."""
    return training_plan(cfg.dtype, pure_bf16=cfg.pure_bf16, lora=cfg.lora_r > 0)


def checkpointing_argument(on: bool, fields: Iterable[str] | None = None) -> dict[str, bool]:
    """The TrainingArguments field that turns activation checkpointing on: `activation_checkpointing` from
    transformers 5.23 (where `gradient_checkpointing` is its deprecated alias), `gradient_checkpointing` before.
    `fields`: TrainingArguments' field names (default: the installed transformers')."""
    if fields is None:
        import dataclasses

        from transformers import TrainingArguments

        fields = [f.name for f in dataclasses.fields(TrainingArguments)]
    name = "activation_checkpointing" if "activation_checkpointing" in set(fields) else "gradient_checkpointing"
    return {name: on}


def loss_scaled_without_the_flag(trainer_cls: type) -> bool:
    """Whether transformers' Trainer class predates `loss_is_scaled_for_ga` (transformers < 5.19), the flag by
    which t3s's trainers say their loss is already divided by the global token count. Before it, the Trainer
    divides the loss by the accumulation steps again unless `model_accepts_loss_kwargs` (and a count was given)
    or a `compute_loss_func` is set; TRL works around it by putting a string in `compute_loss_func`, which its
    own compute_loss then calls."""
    return not hasattr(trainer_cls, "loss_is_scaled_for_ga")


def keep_the_loss_scaled(trainer: Trainer, trainer_cls: type | None = None) -> None:
    """After Trainer.__init__ of a trainer whose loss is already scaled (`loss_is_scaled_for_ga = True`): on
    transformers < 5.19, the flags that make the Trainer leave it as it is (the trainer counts the tokens itself,
    so a count is always given during training). `trainer_cls`: transformers' Trainer (default: the installed)."""
    if trainer_cls is None:
        from transformers import Trainer as trainer_cls

    if loss_scaled_without_the_flag(trainer_cls):
        trainer.model_accepts_loss_kwargs = True
        if isinstance(trainer.compute_loss_func, str):  # TRL's stand-in flag: not a function to call
            trainer.compute_loss_func = None


def training_arguments(
    cfg: TrainConfig, output_dir: str | Path, progress: bool, plan: TrainingPlan | None = None
) -> dict[str, Any]:
    """transformers TrainingArguments from a TrainConfig (shared by the AR and the diffusion trainers); `plan`:
    the precision plan (default: this machine's, `plan_for`)."""
    from t3s.trackers import wanted

    plan = plan or plan_for(cfg)
    return dict(
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,  # -1: transformers' 'use the epochs'
        num_train_epochs=cfg.num_train_epochs,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        use_cpu=plan.device == "cpu",
        bf16=plan.trainer_bf16,
        fp16=plan.trainer_fp16,
        **checkpointing_argument(cfg.activation_checkpointing),
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        logging_steps=cfg.logging_steps,
        report_to=wanted(cfg.report_to) or "none",  # transformers takes a list, not a comma-separated string
        remove_unused_columns=False,
        logging_nan_inf_filter=False,  # a NaN loss must reach the log, where FiniteLoss stops the run
        disable_tqdm=not progress,
        **cfg.trainer,
    )


def quiet(trainer: Trainer, progress: bool) -> Trainer:
    """--quiet: no per-step log lines either."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer
