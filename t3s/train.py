"""Stage 4: fine-tune the student on teacher traces with a selection applied.

What the selection does to the loss, and which Trainer runs, is the objective's (`t3s.objectives`): an
autoregressive student trains on the tokens its keep-mask keeps (labels −100 elsewhere, TRL's SFTTrainer), a
masked-diffusion student always masks its forced set. This module renders the data once, checks that the
selection was made on the same tokens, and owns the run directory: new, resumed or staged runs, atomic
completion, and what a failed or interrupted run leaves behind.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from t3s import T3SError, __version__, dist
from t3s.artifacts import check_outside, read_json, sha256_json, swap_in, write_json
from t3s.config import DiffusionConfig, RenderConfig, TrainConfig
from t3s.data import fingerprints, load_rows, render_rows
from t3s.ledger import OWN
from t3s.models import (
    TrainingPlan,
    check_finite_weights,
    describe,
    device_info,
    load_tokenizer,
    model_fingerprint,
    saved_step_record,
    stored_dtype,
)
from t3s.modes import mode_of
from t3s.objectives import Objective, Prepared, as_objective
from t3s.objectives.base import divergence_of, plan_for, training_arguments
from t3s.select import MATCH_KEYS, load_selection


def prepare(
    model_path: str,
    data_path: str,
    cfg: TrainConfig,
    rcfg: RenderConfig,
    selection_path: str | None = None,
    objective: Objective | DiffusionConfig | None = None,
) -> Prepared:
    """Render the training data and apply a selection as the objective's training columns (default: an
    autoregressive student; a DiffusionConfig stands for a masked-diffusion one)."""
    import datasets

    objective = as_objective(objective)
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
    columns = objective.columns(examples, sel, selection_path or "", cfg)
    return Prepared(tok, rows, examples, report, fps, sel, datasets.Dataset.from_dict(columns), objective)


def make_trainer(
    model: Any,
    data: Prepared,
    cfg: TrainConfig,
    output_dir: str | Path,
    *,
    progress: bool = True,
    callbacks: list | None = None,
    reference: Any = None,
) -> Any:
    """The Trainer of the objective the data was prepared for (TRL's SFTTrainer for an autoregressive student);
    `reference`: θ_0 for a per-token loss that reads it (`TrainConfig.needs_reference`).

    Trackers: TensorBoard writes next to `output_dir` (`<its parent>/tensorboard`: the probe's or training run's
    own directory, kept when the Trainer's working folder goes; TENSORBOARD_LOGGING_DIR still wins), and callbacks
    with a `trainer` attribute (t3s.probe's) get the Trainer, through which their metrics reach every tracker."""
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    from t3s.trackers import end_stage

    class EndStage(TrainerCallback):  # each stage its own W&B run (t3s.trackers)
        def on_train_end(self, args, state, control, **kw):
            end_stage()

    callbacks = [*(callbacks or []), EndStage()]
    trainer = data.objective.trainer(
        model, data, cfg, output_dir, progress=progress, callbacks=callbacks, reference=reference
    )
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = str(Path(output_dir).parent / "tensorboard")
        if getattr(cb, "trainer", False) is None:
            cb.trainer = trainer
    return trainer


def config_for_mode(cfg: TrainConfig, mode: str) -> TrainConfig:
    """The training settings of a run mode: its per-token loss (`train.loss`: eaft, memft, asft; nll for the
    others) and the SFTConfig settings its entry in t3s.modes adds (`dft`: TRL's loss_type=dft, every token
    weighted by its detached probability); the selecting modes train with the settings as they are (their
    selection does the rest)."""
    m = mode_of(mode)
    if m.trainer:
        cfg = dataclasses.replace(cfg, trainer={**cfg.trainer, **m.trainer})
    return cfg if cfg.loss == m.loss else dataclasses.replace(cfg, loss=m.loss)


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
    objective: Objective | DiffusionConfig | None = None,
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

    def decide() -> str:
        finished = (out / "train.json").exists()
        if not out.exists():
            return "new"
        if resume and not finished and (out / started_name).exists():
            return "resume"
        if overwrite:
            return "staged"
        if finished:
            raise T3SError(f"{out} already holds a finished training run; pass --overwrite to replace it")
        if (out / started_name).exists():
            raise T3SError(
                f"{out} holds an unfinished training run (it was interrupted); pass --resume to continue "
                "it or --overwrite to start over"
            )
        raise T3SError(
            f"{out} already exists and is not a t3s training run; choose another --out, or pass "
            "--overwrite to replace it"
        )

    # several processes: the main one decides and tells the others, before any of them creates anything (a
    # process that looked after the main one had made `out` would take another branch, and the collectives of
    # the two branches would no longer pair up)
    mode = dist.on_main(decide)

    dist.state()  # several processes: join the group (and pick this process's GPU) before loading anything
    check_lora_sharding(cfg)
    plan = plan_for(cfg)
    if progress and dist.is_main():
        import sys

        print(f"training {describe(plan)}", file=sys.stderr)
    data = data or prepare(model_path, data_path, cfg, rcfg, selection_path, objective)
    objective = data.objective
    sel = data.selection
    run = {
        "model": model_path,
        "model_fingerprint": model_fingerprint(model_path),
        "data": str(data_path),
        "fingerprints": data.fingerprints,
        "selection": None if sel is None else {k: sel.meta.get(k) for k in ("path", "mode", "threshold", "seed")},
        "config": dataclasses.asdict(cfg),
        "render": dataclasses.asdict(rcfg),
        "objective": objective.name,
        OWN: objective.training_inputs(),  # the objective's own settings that training reads
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
            raise T3SError(
                f"{out}: cannot resume, the unfinished run was started with another model, data or "
                "config (pass --overwrite to start over)"
            )
        write_json(started, {"run_fingerprint": run_fp, **run})
        return str(work)

    work = Path(dist.on_main(begin))
    try:
        summary = _train_in(
            work, model_path, cfg, data, plan, run, run_fp, progress, callbacks, resume=mode == "resume"
        )
        if mode == "staged":
            dist.on_main(lambda: swap_in(work, out))
    except BaseException as e:
        if dist.is_main():  # no barrier: another process may be the one that failed
            _abandon(out, work, mode, e)
        raise
    return summary


def check_lora_sharding(cfg: TrainConfig) -> None:
    """LoRA saves (the probe's checkpoints, the trained model) merge the adapters into the base on one process,
    which needs the whole parameters; under ZeRO-3 or FSDP that process holds only its shards. Refused before
    anything is loaded, not after the run."""
    if cfg.lora_r <= 0 or not dist.launched():
        return
    from t3s.objectives.base import training_arguments

    how = dist.planned_sharding(training_arguments(cfg, ".", False))
    if how:
        raise T3SError(
            f"train.lora_r={cfg.lora_r} under {how}: merging the adapters needs the whole parameters, which {how} "
            "splits across processes; train LoRA with DDP or DeepSpeed ZeRO-2 (examples/accelerate/ddp.yaml, "
            "deepspeed-zero2.yaml: the base is frozen, so it fits where full training does not), or set "
            "train.lora_r=0"
        )


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    """The part of a training run's summary that `t3s run` keeps in its stage record."""
    return {
        k: summary.get(k)
        for k in (
            "global_step",
            "train_loss",
            "kept_tokens",
            "forced_tokens",
            "response_tokens",
            "train_seconds",
            "diverged",
        )
    }


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


def _train_in(
    work: Path,
    model_path: str,
    cfg: TrainConfig,
    data: Prepared,
    plan: TrainingPlan,
    run: dict[str, Any],
    run_fp: str,
    progress: bool,
    callbacks: list | None,
    resume: bool,
) -> dict[str, Any]:
    """The training run itself, in its working directory `work` (the run directory or its staged copy)."""
    final_dir, ckpt_dir = work / "model", work / "checkpoints"
    have_ckpt = resume and bool(dist.on_main(lambda: [str(p) for p in complete_checkpoints(ckpt_dir)]))
    zero3 = dist.zero3_init_args(training_arguments(cfg, ckpt_dir, progress))  # noqa: F841 -- held while loading
    model = data.objective.load(
        model_path, plan.inference(), cfg.trust_remote_code, place=not dist.launched()
    )  # several processes: the Trainer places it
    reference = (  # θ_0 again, frozen: asft's KL term without LoRA (under LoRA: the adapter-disabled model)
        data.objective.load(model_path, plan.inference(), cfg.trust_remote_code) if cfg.needs_reference else None
    )
    trainer = make_trainer(model, data, cfg, ckpt_dir, progress=progress, callbacks=callbacks, reference=reference)
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
        "diverged": divergence_of(trainer),  # None, or where the loss left its start (train.stop_on_divergence)
    }
    # save_model gathers sharded (FSDP / DeepSpeed) weights, so every process calls it; only the main one writes.
    tmp = work / ".model.tmp"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if cfg.lora_r == 0:
        dist.save_trained(trainer, tmp)  # gathered; DeepSpeed: its fp32 master weights, not the 16-bit module
    elif main:
        trainer.model.save_pretrained(work / "adapter")
        trainer.model.merge_and_unload().save_pretrained(tmp)
    if main:
        tok.save_pretrained(tmp)
        master = dist.master_dtype(trainer, trainer.model)
        write_json(tmp / "t3s_step.json", saved_step_record(trainer.state.global_step, stored_dtype(tmp), master))
        shutil.rmtree(final_dir, ignore_errors=True)
        tmp.rename(final_dir)
        if not cfg.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        write_json(work / "train.json", summary)  # written last: marks the run finished
        (work / "train.started.json").unlink(missing_ok=True)
    trainer.accelerator.wait_for_everyone()  # every process returns once the run is in place
    return summary
