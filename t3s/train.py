"""Stage 4: fine-tune a causal LM on teacher traces with a selection applied as labels.

Dropped positions get label −100 (the tokens stay in the input). Training runs on TRL's SFTTrainer, so PEFT,
accelerate (DDP, DeepSpeed, FSDP), `report_to` trackers and checkpoint resume behave as in TRL.

Loss normalisation (`normalize`):
- `kept` (default): sum of the kept tokens' cross-entropy / number of kept tokens in the global batch (all
  gradient-accumulation micro-batches and all processes). This is the Trainer's own `num_items_in_batch` path.
- `response`: the same sum / number of *response* tokens in the global batch, so a masked run keeps SFT's
  effective step size per token.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t3s import T3SError, __version__, dist
from t3s.artifacts import check_outside, read_json, sha256_json, swap_in, write_json
from t3s.data import Example, RenderConfig, fingerprints, load_rows, render_rows
from t3s.fields import check_fields
from t3s.models import (TrainingPlan, check_finite_weights, describe, device_info, load_causal_lm, load_tokenizer,
                        model_fingerprint, training_plan)
from t3s.select import MATCH_KEYS, Selection, load_selection

NORMALIZE = ("kept", "response")
# SFTConfig arguments t3s sets itself (`training_arguments`, `make_trainer`): `train.trainer` may not repeat them.
# The value says where the setting lives instead.
MANAGED = {
    "output_dir": "--out", "max_steps": "train.max_steps", "use_cpu": "train.dtype (the precision plan)",
    "bf16": "train.dtype (the precision plan)", "fp16": "train.dtype (the precision plan)",
    "save_strategy": "train.save_steps", "disable_tqdm": "--quiet", "remove_unused_columns": "nothing (t3s needs its "
    "own columns)", "max_length": "render.max_length", "dataset_kwargs": "nothing (t3s renders the rows itself)",
    "logging_nan_inf_filter": "nothing (t3s stops on a non-finite loss)",
}


@dataclass
class TrainConfig:
    """Training settings. Keys not listed here can be given under `trainer:` and go to TRL's SFTConfig as is
    (e.g. `deepspeed`, `fsdp`, `eval_strategy`)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "peak learning rate", "gt": 0, "le": 10,
                                                         "why": "a larger one is a typo"})
    max_steps: int = field(default=50, metadata={"help": "optimizer steps; 0 means use num_train_epochs", "ge": 0,
                                                  "why": "0 trains num_train_epochs epochs"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs when max_steps is 0", "gt": 0})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "rows per device per micro-batch", "ge": 1})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step", "ge": 1})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name"})
    warmup_steps: float = field(default=0, metadata={"help": "warm-up steps (a float < 1 is a ratio)", "ge": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "ge": 0})
    optim: str = field(default="adamw_torch", metadata={"help": "transformers optimizer name"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 disables)", "ge": 0})
    seed: int = field(default=42, metadata={"help": "data order and initialisation seed"})
    normalize: str = field(default="kept", metadata={"help": "kept | response: loss denominator"})
    dtype: str = field(default="auto", metadata={
        "help": "compute dtype: auto | float32 | bfloat16 | float16 (GPU only); weights stay fp32 (t3s.models)"})
    pure_bf16: bool = field(default=False, metadata={
        "help": "bf16 weights updated in place, no fp32 master copy: half the memory, but most updates below "
                "about 2^-9 of a weight are lost (at lr 1e-5: most of them)"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute activations to save memory (GPU)"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)", "ge": 0})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep Trainer checkpoints after success"})
    logging_steps: int = field(default=1, metadata={"help": "log the loss every N steps", "ge": 1})
    report_to: str = field(default="none", metadata={"help": "none | tensorboard | wandb | ..."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0: full fine-tuning)", "ge": 0})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha", "gt": 0})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout", "ge": 0, "lt": 1})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "LoRA target modules"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow remote code models"})
    trainer: dict[str, Any] = field(default_factory=dict, metadata={"help": "extra SFTConfig arguments"})

    def __post_init__(self) -> None:
        check_fields(self, "train")
        own = {f.name for f in dataclasses.fields(self)} - {"trainer"}
        for key in self.trainer:
            if key in own or key in MANAGED:
                where = f"train.{key}" if key in own else MANAGED[key]
                raise T3SError(f"train.trainer.{key}: t3s sets '{key}' itself; use {where} instead")
        if self.normalize not in NORMALIZE:
            raise T3SError(f"normalize must be one of {NORMALIZE}, got '{self.normalize}'")


def _selection_rows(examples: list[Example], sel: Selection, where: str) -> list[int]:
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


def apply_selection(examples: list[Example], sel: Selection | None, where: str = "") -> list[list[int]]:
    """Labels per example: −100 on the prompt and on dropped response tokens."""
    if sel is None:
        return [e.labels() for e in examples]
    out = []
    for e, i in zip(examples, _selection_rows(examples, sel, where)):
        out.append([-100] * e.prompt_len + [t if k else -100 for t, k in zip(e.response_ids, sel.keep[i])])
    return out


def finite_loss_callback() -> Any:
    """A TrainerCallback that stops training with one clear error when a logged loss (or, without fp16 loss
    scaling, whose overflow steps are skipped on purpose, the gradient norm) is NaN or infinite. The Trainer's
    own `logging_nan_inf_filter` would instead replace the NaN by an average and carry on with broken weights."""
    import math

    from transformers import TrainerCallback

    class FiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm") if not args.fp16 else ("loss",):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(float(value)):
                    raise T3SError(f"training diverged at step {state.global_step}: {key} is {value} (lower "
                                   "train.learning_rate, or check the data and train.dtype)")

    return FiniteLoss()


def _trainer_class():
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class Collator:
        """TRL's collator, plus the padded response labels when the loss is normalised by response tokens."""

        def __init__(self, pad_token_id: int, with_response: bool):
            self.base = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)
            self.with_response = with_response

        def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = self.base([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
            if self.with_response:
                alt = self.base([{"input_ids": e["input_ids"], "labels": e["response_labels"]} for e in examples])
                out["response_labels"] = alt["labels"]
            return out

    class T3STrainer(SFTTrainer):
        """SFTTrainer whose loss is Σ CE over the kept tokens / N, exactly over the global batch (every
        micro-batch and process), for every model class: N = the kept tokens (normalize=kept) or the response
        tokens (normalize=response) of the global batch.

        TRL's compute_loss divides the summed token losses by `num_items_in_batch` when it is given, and by the
        micro-batch's own count otherwise. transformers computes `num_items_in_batch` only for models that accept
        loss kwargs (`accepts_loss_kwargs`); for the others (several multimodal and newer classes) the loss would
        silently become a mean of per-micro-batch means. This trainer always counts N itself and says that the
        loss is already scaled for gradient accumulation."""

        loss_is_scaled_for_ga = True  # the loss is divided by the global N, never again by the accumulation steps

        def __init__(self, *args, normalize: str = "kept", **kwargs):
            self.normalize = normalize
            super().__init__(*args, **kwargs)

        def _get_num_items_in_batch(self, batch_samples, device):
            key = "response_labels" if self.normalize == "response" else "labels"
            # causal LM: position p predicts token p + 1, so the first label never counts (the Trainer's own rule);
            # counted where the batches are (the training device), no host round trip
            n = sum((b[key][..., 1:] != -100).sum().to(device) for b in batch_samples)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                n = self.accelerator.gather(n).sum()  # TRL multiplies the loss by the process count to match
            return n

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs.pop("response_labels", None)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return T3STrainer, Collator


@dataclass
class Prepared:
    """Rendered training data with the selection applied, ready for the trainer."""

    tokenizer: Any
    rows: list  # the validated rows (t3s.data.Row), in file order
    examples: list[Example]
    report: Any
    fingerprints: dict[str, str]
    selection: Selection | None
    dataset: Any  # datasets.Dataset with input_ids, labels (and response_labels for normalize=response)

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


def forced_sets(examples: list[Example], sel: Selection | None, where: str = "") -> list[list[bool]]:
    """Diffusion students: per example, which response positions are always masked (the forced set)."""
    if sel is None:
        return [[False] * len(e.response_ids) for e in examples]
    if sel.forced is None:
        raise T3SError(f"the selection {where} is a keep-mask for an autoregressive student; a diffusion student "
                       "needs a forced set (`t3s select --forced`)")
    return [[bool(x) for x in sel.forced[i]] for i in _selection_rows(examples, sel, where)]


def prepare(model_path: str, data_path: str, cfg: TrainConfig, rcfg: RenderConfig,
            selection_path: str | None = None, diffusion: Any = None) -> Prepared:
    """Render the training data and apply a selection: labels for an autoregressive student, or (with
    `diffusion`, a t3s.diffusion.DiffusionConfig) the forced sets of a masked-diffusion student."""
    import datasets

    tok = load_tokenizer(model_path, cfg.trust_remote_code)
    rows = load_rows(data_path)
    examples, report = render_rows(rows, tok, rcfg)
    fps = fingerprints(rows, tok, rcfg)
    sel = None
    if selection_path is not None:
        sel = load_selection(selection_path)
        for key in MATCH_KEYS:
            if sel.meta["fingerprints"].get(key) != fps[key]:
                raise T3SError(
                    f"the selection {selection_path} was made with a different {key} than this training run "
                    f"({sel.meta['fingerprints'].get(key, '?')[:12]} vs {fps[key][:12]})"
                )
    if diffusion is not None:
        columns = {"input_ids": [e.input_ids for e in examples], "prompt_len": [e.prompt_len for e in examples],
                   "forced": forced_sets(examples, sel, selection_path or ""), "row": list(range(len(examples)))}
        return Prepared(tok, rows, examples, report, fps, sel, datasets.Dataset.from_dict(columns))
    if sel is not None and sel.forced is not None:
        raise T3SError(f"the selection {selection_path} is a forced set for a masked-diffusion student, not a "
                       f"keep-mask; {model_path} is an autoregressive model")
    columns: dict[str, Any] = {"input_ids": [e.input_ids for e in examples],
                               "labels": apply_selection(examples, sel, selection_path or "")}
    if cfg.normalize == "response":
        columns["response_labels"] = [e.labels() for e in examples]
    return Prepared(tok, rows, examples, report, fps, sel, datasets.Dataset.from_dict(columns))


def config_for_mode(cfg: TrainConfig, mode: str) -> TrainConfig:
    """The training settings of a run mode: `dft` is TRL's loss_type=dft (every token weighted by its detached
    probability); every other mode trains with the settings as they are (its selection does the rest)."""
    if mode == "dft":
        return dataclasses.replace(cfg, trainer={**cfg.trainer, "loss_type": "dft"})
    return cfg


def plan_for(cfg: TrainConfig) -> TrainingPlan:
    """The precision plan of a training run with these settings on this machine."""
    return training_plan(cfg.dtype, pure_bf16=cfg.pure_bf16, lora=cfg.lora_r > 0)


def training_arguments(cfg: TrainConfig, output_dir: str | Path, progress: bool,
                       plan: TrainingPlan | None = None) -> dict[str, Any]:
    """transformers TrainingArguments from a TrainConfig (shared by the AR and the diffusion trainers); `plan`:
    the precision plan (default: this machine's, `plan_for`)."""
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
        activation_checkpointing=cfg.activation_checkpointing,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        logging_steps=cfg.logging_steps,
        report_to=cfg.report_to,
        remove_unused_columns=False,
        logging_nan_inf_filter=False,  # a NaN loss must reach the log, where FiniteLoss stops the run
        disable_tqdm=not progress,
        **cfg.trainer,
    )


def make_trainer(model: Any, data: Prepared, cfg: TrainConfig, output_dir: str | Path, *,
                 progress: bool = True, callbacks: list | None = None) -> Any:
    """TRL SFTTrainer configured from a TrainConfig (precision, checkpoints, LoRA, loss normalisation)."""
    from trl import SFTConfig

    args = SFTConfig(
        **training_arguments(cfg, output_dir, progress),
        max_length=None,  # rows are rendered (and truncated by policy) by t3s.data
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    peft_config = None
    if cfg.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM",
        )
    T3STrainer, Collator = _trainer_class()
    trainer = T3STrainer(
        model=model,
        args=args,
        train_dataset=data.dataset,
        processing_class=data.tokenizer,
        data_collator=Collator(data.tokenizer.pad_token_id, cfg.normalize == "response"),
        peft_config=peft_config,
        callbacks=[*(callbacks or []), finite_loss_callback()],
        normalize=cfg.normalize,
    )
    if not progress:  # --quiet: no per-step log lines either
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def train(
    model_path: str,
    data_path: str,
    out: str | Path,
    cfg: TrainConfig,
    rcfg: RenderConfig,
    selection_path: str | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
    data: Prepared | None = None,
    diffusion: Any = None,
) -> dict[str, Any]:
    """Train from `model_path` into `out` (`out/model`, then `out/train.json`, written last, marks it finished).
    `data`: the result of `prepare` with the same arguments, when the caller already has it.

    Where the run writes: a new `out` is trained in place, so that a killed run can be resumed (`--resume`): its
    checkpoints stay under `out/checkpoints` with `out/train.started.json` and no `train.json`. `--overwrite` of
    an existing `out` trains in a hidden sibling directory and replaces `out` only once the new run is complete,
    so a failed or interrupted new run leaves the old one as it was. A run that fails (a bad setting, a
    non-finite loss) removes what it created; an interrupted new run keeps `out` only when it holds a checkpoint
    to resume from."""
    out = Path(out)
    check_outside(out, model=model_path, data=data_path, selection=selection_path)
    started_name = "train.started.json"
    finished = (out / "train.json").exists()
    if not out.exists():
        mode = "new"
    elif resume and not finished and (out / started_name).exists():
        mode = "resume"
    elif overwrite:
        mode = "staged"
    elif finished:
        raise T3SError(f"{out} already holds a finished training run; pass --overwrite to replace it")
    elif (out / started_name).exists():
        raise T3SError(f"{out} holds an unfinished training run (it was interrupted); pass --resume to continue "
                       "it or --overwrite to start over")
    else:
        raise T3SError(f"{out} already exists and is not a t3s training run; choose another --out, or pass "
                       "--overwrite to replace it")

    dist.state()  # several processes: join the group (and pick this process's GPU) before loading anything
    plan = plan_for(cfg)
    if progress and dist.is_main():
        import sys

        print(f"training {describe(plan)}", file=sys.stderr)
    data = data or prepare(model_path, data_path, cfg, rcfg, selection_path, diffusion)
    sel = data.selection
    run = {
        "model": model_path,
        "model_fingerprint": model_fingerprint(model_path),
        "data": str(data_path),
        "fingerprints": data.fingerprints,
        "selection": None if sel is None else {k: sel.meta.get(k) for k in ("path", "mode", "threshold", "seed")},
        "config": dataclasses.asdict(cfg),
        "render": dataclasses.asdict(rcfg),
        "objective": "ar" if diffusion is None else "diffusion",
        "diffusion": None if diffusion is None else dataclasses.asdict(diffusion),
    }
    run_fp = sha256_json({k: v for k, v in run.items() if k not in ("model", "data")})

    def begin() -> str:  # several processes: only the main one touches the directories, the others wait
        if mode == "staged":
            work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        else:
            work = out
            work.mkdir(parents=True, exist_ok=True)
        started = work / started_name
        if mode == "resume" and read_json(started).get("run_fingerprint") != run_fp:
            raise T3SError(f"{out}: cannot resume, the unfinished run was started with another model, data or "
                           "config (pass --overwrite to start over)")
        write_json(started, {"run_fingerprint": run_fp, **run})
        return str(work)

    work = Path(dist.on_main(begin))
    try:
        summary = _train_in(work, model_path, cfg, data, plan, run, run_fp, diffusion, progress, callbacks,
                            resume=mode == "resume")
        if mode == "staged":
            dist.on_main(lambda: swap_in(work, out))
    except BaseException as e:
        if dist.is_main():  # no barrier: another process may be the one that failed
            _abandon(out, work, mode, e)
        raise
    return summary


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The Trainer checkpoints under `ckpt_dir`, oldest first, after removing any that a kill cut short (the
    Trainer writes `trainer_state.json` last, and resuming from a checkpoint without it fails)."""
    if not ckpt_dir.is_dir():
        return []
    out, found = [], [p for p in ckpt_dir.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    for p in sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1])):
        if (p / "trainer_state.json").exists():
            out.append(p)
        else:
            shutil.rmtree(p, ignore_errors=True)
    return out


def _abandon(out: Path, work: Path, mode: str, e: BaseException) -> None:
    """Clean up after a failed or interrupted run (see `train`), and say what was kept."""
    interrupted = isinstance(e, KeyboardInterrupt)
    ckpts = complete_checkpoints(work / "checkpoints")
    if mode == "staged":
        shutil.rmtree(work, ignore_errors=True)
        note = f"{out} was left as it was (the new run is discarded)"
    elif mode == "new" and not (interrupted and ckpts):
        shutil.rmtree(out, ignore_errors=True)
        note = f"nothing was kept ({out} removed)"
    elif ckpts:
        note = f"{out} keeps the run's checkpoints (last: {ckpts[-1].name}): rerun with --resume to continue"
    else:
        note = f"{out} has no checkpoint yet (train.save_steps = 0): rerun with --resume to start it again"
    if hasattr(e, "add_note"):
        e.add_note(note)


def _train_in(work: Path, model_path: str, cfg: TrainConfig, data: Prepared, plan: TrainingPlan,
              run: dict[str, Any], run_fp: str, diffusion: Any, progress: bool, callbacks: list | None,
              resume: bool) -> dict[str, Any]:
    """The training run itself, in its working directory `work` (the run directory or its staged copy)."""
    final_dir, ckpt_dir = work / "model", work / "checkpoints"
    have_ckpt = resume and bool(dist.on_main(lambda: [str(p) for p in complete_checkpoints(ckpt_dir)]))
    zero3 = dist.zero3_init_args(training_arguments(cfg, ckpt_dir, progress))  # noqa: F841 -- held while loading
    if diffusion is None:
        model = load_causal_lm(model_path, plan.inference(), cfg.trust_remote_code,
                               place=not dist.launched())  # several processes: the Trainer places it
        trainer = make_trainer(model, data, cfg, ckpt_dir, progress=progress, callbacks=callbacks)
    else:
        from t3s import diffusion as dlm

        model = dlm.load_mask_predictor(model_path, plan.inference(), cfg.trust_remote_code)
        trainer = dlm.make_trainer(model, data, cfg, diffusion, ckpt_dir, progress=progress, callbacks=callbacks)
    tok, report, kept = data.tokenizer, data.report, data.kept_tokens
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if have_ckpt else None)
    seconds = time.perf_counter() - t0
    check_finite_weights(trainer.model, f"training run {work}")

    summary = {
        "kind": "t3s-train",
        "t3s_version": __version__,
        "run_fingerprint": run_fp,
        **run,
        "render_report": report.as_dict(),
        "kept_tokens": kept,
        "forced_tokens": data.forced_tokens,
        "response_tokens": report.response_tokens,
        "precision": plan.name,
        "precision_plan": plan.as_dict(),
        "device": device_info(plan.device),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_seconds": seconds,
        "log_history": trainer.state.log_history,
    }
    # save_model gathers sharded (FSDP / DeepSpeed) weights, so every process calls it; only the main one writes.
    tmp = work / ".model.tmp"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if cfg.lora_r == 0:
        trainer.save_model(str(tmp))
    elif main:
        trainer.model.save_pretrained(work / "adapter")
        trainer.model.merge_and_unload().save_pretrained(tmp)
    if main:
        tok.save_pretrained(tmp)
        write_json(tmp / "t3s_step.json", {"global_step": trainer.state.global_step})
        shutil.rmtree(final_dir, ignore_errors=True)
        tmp.rename(final_dir)
        if not cfg.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        write_json(work / "train.json", summary)  # written last: marks the run finished
        (work / "train.started.json").unlink(missing_ok=True)
    trainer.accelerator.wait_for_everyone()  # every process returns once the run is in place
    return summary
