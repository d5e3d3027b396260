"""Stage 0: the probe run. Plain SFT with the run's hyper-parameters, evaluated every `eval_every` steps, to
trace the imitation shock and find the bottleneck θ_b (the checkpoint with the lowest training accuracy).

Each evaluation point records: step, training loss (mean since the previous point), training accuracy (greedy
generation on a fixed seeded subset of the training prompts, graded like `t3s eval`), held-out accuracy, the
mean teacher-forced confidence of the subset's response tokens, the mean generated length and the share of
generations containing a marker phrase (e.g. "Wait": has the student adopted the teacher's style?).

Only θ_0 (the input) and the lowest-accuracy checkpoint so far are kept (ties go to the earliest);
`keep_all` keeps every evaluated checkpoint.

A dip is real when the lowest accuracy is at least `margin` below the accuracy at step 0. `online` stops the
probe only after a real dip: the running minimum is `margin` below step 0 and the last `patience` evaluations
are all at least `margin` above that minimum; a rise or a flat run never stops early. The default margin is sized
against the probe set's noise: 2 standard errors of the step-0 accuracy, 2·sqrt(p(1−p)/n) over n = prompts × k
samples (p clamped to [0.05, 0.95]; at least one sample): ±3 points of standard error at n = 200 and p = 0.7 give
a margin of 6.5 points. The minimum of some fifteen noisy evaluations falls 1.5 to 2 standard errors below their
mean by chance alone, so a smaller margin finds dips in noise.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from t3s import T3SError, __version__, dist
from t3s.artifacts import write_json
from t3s.config import DiffusionConfig, GenConfig, ProbeConfig, RenderConfig, RunConfig
from t3s.data import Row
from t3s.models import Precision, saved_step_record, stored_dtype
from t3s.objectives import Objective, Prepared

# ----------------------------------------------------------------------------------------------- rules


def find_bottleneck(points: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    """θ_b = the trained checkpoint (step > 0) with the lowest training accuracy, ties to the earliest. A dip is
    found when that accuracy is at least `margin` below the accuracy at step 0."""
    if not points or points[0]["step"] != 0:
        raise T3SError("a trajectory starts with the evaluation of θ_0 at step 0")
    start = points[0]["train_accuracy"]
    later = points[1:]
    if not later:
        return {
            "bottleneck_step": None,
            "bottleneck_accuracy": None,
            "start_accuracy": start,
            "dip_found": False,
            "dip_depth": 0.0,
        }
    best = min(later, key=lambda p: (p["train_accuracy"], p["step"]))
    depth = start - best["train_accuracy"]
    return {
        "bottleneck_step": best["step"],
        "bottleneck_accuracy": best["train_accuracy"],
        "start_accuracy": start,
        "dip_found": depth >= margin - 1e-12,
        "dip_depth": depth,
    }


def standard_error(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n samples (binomial)."""
    return float(np.sqrt(p * (1 - p) / max(n, 1)))


def auto_margin(p0: float, n: int) -> float:
    """The default dip margin: 2 standard errors of the step-0 accuracy (p clamped to [0.05, 0.95]), and at least
    one sample (1/n)."""
    return max(2 * standard_error(min(max(p0, 0.05), 0.95), n), 1 / max(n, 1))


def online_should_stop(accuracies: list[float], margin: float, patience: int) -> bool:
    """accuracies[0] is θ_0. Stop only after a real dip: the running minimum of the trained checkpoints is at
    least `margin` below θ_0, and the last `patience` evaluations come after it and are all at least `margin`
    above it. A rise or a flat run never stops."""
    if len(accuracies) < 2 + patience:
        return False
    m = min(range(1, len(accuracies)), key=lambda i: (accuracies[i], i))
    if accuracies[0] - accuracies[m] < margin - 1e-12:  # no dip (yet): keep going, a later shock may come
        return False
    tail = accuracies[-patience:]
    return len(accuracies) - 1 - m >= patience and all(a >= accuracies[m] + margin - 1e-12 for a in tail)


def no_dip_message(b: dict[str, Any], margin: float) -> str:
    return (
        f"no imitation shock: training accuracy never fell {100 * margin:.1f} points below its start "
        f"({100 * b['start_accuracy']:.1f}%; lowest later {100 * (b['bottleneck_accuracy'] or 0):.1f}% "
        f"at step {b['bottleneck_step']}). Without a dip there is no bottleneck to select tokens from; "
        "set probe.continue_without_dip=true to use the lowest checkpoint anyway."
    )


# ----------------------------------------------------------------------------------------------- the run


def subset_indices(n: int, size: int, seed: int) -> list[int]:
    if size <= 0 or size >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), size))


def _save_model(model: Any, tok: Any, path: Path, step: int, trainer: Any = None) -> None:
    """Save a loadable full model atomically (a LoRA model is merged into a copy first). Several processes: the
    main one writes; with sharded parameters (ZeRO-3, FSDP) all take part in the Trainer's gathering save."""
    tmp = path.with_name(f".{path.name}.tmp")
    from t3s.models import check_finite_weights

    check_finite_weights(model, f"probe checkpoint at step {step}")
    lora = hasattr(model, "merge_and_unload")
    if dist.params_sharded(model) or (dist.deepspeed_trained(trainer) and not lora):
        if trainer is None or lora:
            raise T3SError("the probe cannot save LoRA checkpoints under ZeRO-3 / FSDP; use DDP or ZeRO-2")
        dist.on_main(lambda: shutil.rmtree(tmp, ignore_errors=True))
        dist.save_trained(trainer, tmp)  # gathered; DeepSpeed: its fp32 master weights
    elif dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        if lora:
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp)

    def finish() -> None:
        tok.save_pretrained(tmp)
        write_json(tmp / "t3s_step.json", saved_step_record(step, stored_dtype(tmp), dist.master_dtype(trainer, model)))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)

    dist.on_main(finish)


class ProbeRunner:
    """Evaluates the model being trained; used as a TrainerCallback's workhorse."""

    def __init__(
        self,
        out: Path,
        data: Prepared,
        heldout: list[Row] | None,
        cfg: ProbeConfig,
        gen: GenConfig,
        rcfg: RenderConfig,
        precision: Precision,
        max_steps: int,
        progress: bool,
        log: Any = print,
        track: bool = False,
    ):
        self.out, self.cfg, self.rcfg, self.precision, self.progress, self.log = (
            out,
            cfg,
            rcfg,
            precision,
            progress,
            log,
        )
        self.tok = data.tokenizer
        self.track = track  # tracking a trained mode: no checkpoints, no held-out set
        self.objective = data.objective  # how the student generates, and its confidence
        self.every = cfg.track_every if track else cfg.eval_every  # 0: set at the start of training
        if self.every <= 0 and max_steps > 0:
            self.every = max(1, round(max_steps / 15))
        idx = subset_indices(len(data.examples), cfg.track_subset if track else cfg.subset, cfg.subset_seed)
        by_id = {r.id: r for r in data.rows}
        self.examples = [data.examples[i] for i in idx]
        self.train_rows = [by_id[e.id] for e in self.examples]
        for r in self.train_rows:
            if r.answer is None:
                raise T3SError(f"{r.where}: the probe needs a gold 'answer' in every training row")
        self.heldout = []
        if heldout and cfg.reads_heldout and not track:
            self.heldout = [heldout[i] for i in subset_indices(len(heldout), cfg.heldout_subset, cfg.subset_seed)]
        greedy = cfg.k == 1
        self.gen = dataclasses.replace(gen, k=cfg.k, temperature=0.0 if greedy else gen.temperature)
        self.points: list[dict[str, Any]] = []
        self.token_logprobs: dict[int, np.ndarray] = {}
        self.best: tuple[float, int] | None = None
        self.stopped_early = False
        self.t0 = time.perf_counter()
        self.last_step = 0
        # where the probe's time goes besides training (BENCHMARKS.md, pipeline cost)
        self.seconds = {"generation": 0.0, "confidence": 0.0, "checkpoints": 0.0}
        self.trainer = None  # set by run_probe: saving sharded (ZeRO-3 / FSDP) checkpoints goes through it
        self.generator = None  # set by run_probe for probe.backend=vllm (t3s.vllm_backend.ProbeGenerator)
        self.margin = cfg.margin  # resolved at step 0 when auto (None)
        self.noise: dict[str, Any] = {}

    def _settings(self) -> dict[str, Any]:
        # which modes the pipeline tracks is not this evaluation's business (and checkpoints from before the key
        # existed resume)
        probe = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "track_modes"}
        return {"probe": probe, "every": self.every, "track": self.track}

    def save_state(self, ckpt: Path, step: int) -> None:
        """The trajectory so far (points, the step-0 noise margin, the lowest point) into a Trainer checkpoint;
        the confidences beside it. Main process."""
        state = {
            "kind": "t3s-probe-state",
            "t3s_version": __version__,
            "checkpoint_step": step,
            "last_step": self.last_step,
            "settings": self._settings(),
            "points": self.points,
            "margin": self.margin,
            "noise": self.noise,
            "best": None if self.best is None else list(self.best),
            "stopped_early": self.stopped_early,
        }
        if self.token_logprobs:
            tmp = ckpt / ".t3s_probe_logprobs.tmp.npz"
            np.savez(tmp, **{f"step_{s}": v for s, v in self.token_logprobs.items()})
            tmp.replace(ckpt / "t3s_probe_logprobs.npz")
        write_json(ckpt / PROBE_STATE, state)

    def restore(self, ckpt: Path, step: int) -> None:
        """Continue the trajectory saved with the checkpoint a Trainer resumes from (`save_state`), or refuse:
        without its step-0 evaluation the probe has no noise margin and no start to measure a dip from."""
        f = ckpt / PROBE_STATE

        def read() -> dict[str, Any]:
            from t3s.artifacts import read_json, read_npz

            if not f.is_file():
                raise T3SError(
                    f"the Trainer resumes at step {step}, but {f} is missing: the probe's trajectory (its step-0 "
                    "accuracy and noise margin, its points, its lowest checkpoint) cannot be continued. Resume from "
                    "a checkpoint saved with this callback attached (under args.output_dir), or train from step 0"
                )
            saved = read_json(f)
            if saved.get("settings") != self._settings():
                raise T3SError(
                    f"{f}: the probe's settings changed since the checkpoint (saved {saved.get('settings')}, now "
                    f"{self._settings()}); resume with the same settings, or train from step 0"
                )
            if saved.get("checkpoint_step") != step:
                raise T3SError(
                    f"{f}: written at step {saved.get('checkpoint_step')}, but the Trainer resumes at step {step}"
                )
            lp = ckpt / "t3s_probe_logprobs.npz"
            saved["logprobs"] = read_npz(lp) if lp.is_file() else {}
            if not self.track and saved["best"] is not None:
                held = saved_step(self.out / "bottleneck")
                if held is not None and held != saved["best"][1]:
                    # a lower point after the checkpoint replaced it: its weights are gone; the resumed run
                    # retraces those steps and saves its own lowest point again
                    shutil.rmtree(self.out / "bottleneck", ignore_errors=True)
                    saved["dropped"] = held
            points = saved["points"]
            tmp = self.out / ".trajectory.jsonl.tmp"
            tmp.write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
            tmp.replace(self.out / "trajectory.jsonl")  # the points after the checkpoint are retraced
            return saved

        saved = dist.on_main(read)
        self.points = saved["points"]
        self.last_step = saved["last_step"]
        self.margin, self.noise, self.stopped_early = saved["margin"], saved["noise"], saved["stopped_early"]
        self.best = None if saved["best"] is None else (saved["best"][0], saved["best"][1])
        self.token_logprobs = {int(k.split("_")[1]): v for k, v in saved["logprobs"].items()}
        self.log(
            f"probe: resumed at step {step} with its {len(self.points)} points"
            + (f" (lowest so far at step {self.best[1]})" if self.best else "")
        )
        if saved.get("dropped") is not None:
            self.log(
                f"probe: {self.out / 'bottleneck'} held step {saved['dropped']}, saved after the checkpoint; "
                f"removed (the resumed run saves its own lowest point; the lowest before it, step "
                f"{self.best[1]}, has no weights unless it is found again)"
            )

    def evaluate(self, model: Any, step: int, log_history: list[dict[str, Any]]) -> dict[str, Any]:
        from t3s.evaluate import evaluate_model, metrics

        was_training = model.training
        model.eval()
        t_gen = time.perf_counter()
        train_s = evaluate_model(
            model,
            self.tok,
            self.train_rows,
            self.rcfg,
            self.gen,
            self.precision,
            progress=self.progress,
            desc=f"probe step {step}",
            objective=self.objective,
            generator=self.generator,
        )
        m = metrics(train_s)
        held = None
        if self.heldout:
            hs = evaluate_model(
                model,
                self.tok,
                self.heldout,
                self.rcfg,
                self.gen,
                self.precision,
                progress=self.progress,
                desc=f"held-out step {step}",
                objective=self.objective,
                generator=self.generator,
            )
            held = metrics(hs)["accuracy"]
        t_score = time.perf_counter()
        self.seconds["generation"] += t_score - t_gen
        confidence = None
        lps = self.objective.confidence(model, self.examples, self.precision, self.tok.pad_token_id)
        if lps is not None:  # a mask predictor has no teacher-forced confidence
            flat = np.concatenate(lps)
            self.token_logprobs[step] = flat
            confidence = float(flat.mean())
        t_save = time.perf_counter()
        self.seconds["confidence"] += t_save - t_score
        losses = [h["loss"] for h in log_history if "loss" in h and self.last_step < h.get("step", -1) <= step]
        markers = self.cfg.markers
        point = {
            "step": step,
            "loss": float(np.mean(losses)) if losses else None,
            "train_accuracy": m["accuracy"],
            "heldout_accuracy": held,
            "confidence": confidence,
            "length": m["mean_tokens"],
            "marker_rate": (sum(any(k in s.response for k in markers) for s in train_s) / len(train_s))
            if markers
            else None,
            "no_answer_rate": m["no_answer_rate"],
            "time": time.perf_counter() - self.t0,
        }
        self.points.append(point)
        self.last_step = step
        if step == 0 and not self.track:
            n = len(train_s)  # prompts × k samples
            se = standard_error(m["accuracy"], n)
            auto = self.cfg.margin is None
            self.margin = auto_margin(m["accuracy"], n) if auto else self.cfg.margin
            self.noise = {"samples": n, "standard_error": se, "margin": self.margin, "margin_auto": auto}
            self.log(
                f"probe: {len(self.train_rows)} prompts x k={self.gen.k}: accuracy at step 0 "
                f"{100 * m['accuracy']:.1f}% (standard error {100 * se:.1f} points); a dip must be "
                f"{100 * self.margin:.1f} points deep"
                + (" (auto: 2 standard errors; probe.margin sets it)" if auto else " (probe.margin)")
            )
        if dist.is_main():
            with (self.out / "trajectory.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(point) + "\n")
        if step > 0 and not self.track:
            acc = point["train_accuracy"]
            if self.best is None or acc < self.best[0]:  # strict: ties keep the earliest
                self.best = (acc, step)
                _save_model(model, self.tok, self.out / "bottleneck", step, self.trainer)
            if self.cfg.keep_all:
                _save_model(model, self.tok, self.out / "checkpoints" / f"step-{step}", step, self.trainer)
        self.seconds["checkpoints"] += time.perf_counter() - t_save

        def fmt(x: float | None, pct: bool = True) -> str:
            return "-" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:.3f}")

        self.log(
            f"{'track' if self.track else 'probe'} step {step:>5}: loss {fmt(point['loss'], False)}  "
            f"train acc {fmt(point['train_accuracy'])}"
            f"  held-out {fmt(held)}  confidence {fmt(confidence, False)}  length {point['length']:.1f}"
            f"  markers {fmt(point['marker_rate'])}"
        )
        model.train(was_training)
        return point


PROBE_STATE = "t3s_probe.json"  # in each Trainer checkpoint: the probe's trajectory up to it


def saved_step(path: Path) -> int | None:
    f = path / "t3s_step.json"
    return json.loads(f.read_text())["global_step"] if f.is_file() else None


def tracking_callback(
    out: Path, data: Prepared, cfg: RunConfig, precision: Precision, max_steps: int, progress: bool, log: Any = print
) -> ProbeTrainerCallback:
    """A callback that evaluates a training run like the probe (on `probe.track_subset` prompts, every
    `probe.track_every` steps) and appends to `out/trajectory.jsonl` (from the start of training, after
    `t3s.train.train` has cleared `out`; a rerun trains in a staged copy, and the points go there); nothing else
    is saved. `t3s.train.train` hands it the Trainer, through
    which its points reach the `report_to` trackers."""
    runner = ProbeRunner(
        out, data, None, cfg.probe, cfg.eval, cfg.render, precision, max_steps, progress, log, track=True
    )
    return ProbeTrainerCallback(runner)


class ProbeTrainerCallback(TrainerCallback):
    """The probe inside a Trainer: evaluate at step 0 and every `runner.every` steps, and log each point's
    metrics as `t3s/<name>` through `trainer.log`, so that every `report_to` tracker (TensorBoard, W&B, ...)
    receives them next to the Trainer's own loss. `trainer`: set before training (None: nothing is logged)."""

    def __init__(self, runner: ProbeRunner, trainer: Any = None):
        self.runner, self.trainer = runner, trainer
        self._logging = False  # trainer.log calls every callback's on_log, this one included

    def _evaluate(self, model: Any, state: Any) -> None:
        point = self.runner.evaluate(model, state.global_step, state.log_history)
        if self.trainer is None:
            return
        skip = ("step", "loss", "time")  # the Trainer logs its own step and loss
        metrics = {f"t3s/{k}": v for k, v in point.items() if k not in skip and v is not None}
        self._logging = True
        try:
            self.trainer.log(metrics)
        finally:
            self._logging = False

    def on_train_begin(self, args, state, control, model=None, **kw):
        if self.runner.every <= 0:  # epoch-based runs know their length only now
            self.runner.every = max(1, round(state.max_steps / 15))
        if self.runner.track:  # a tracked training run writes where it trains: next to its checkpoints, in the
            self.runner.out = Path(args.output_dir).parent  # staged copy that replaces the run when it is rerun
        if state.global_step > 0:  # trainer.train(resume_from_checkpoint=...): continue the trajectory it saved
            ckpt = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.runner.restore(ckpt, state.global_step)
        elif not self.runner.points:
            dist.on_main(lambda: (self.runner.out / "trajectory.jsonl").unlink(missing_ok=True))
            self._evaluate(model, state)

    def on_save(self, args, state, control, **kw):
        # after the Trainer's checkpoint: the trajectory so far travels with it, for a resume from it
        ckpt = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.should_save and ckpt.is_dir():
            self.runner.save_state(ckpt, state.global_step)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.runner.every == 0 or state.global_step >= state.max_steps:
            control.should_log = True  # so the loss of this step is logged before we evaluate

    def on_log(self, args, state, control, model=None, **kw):
        s, r = state.global_step, self.runner
        if self._logging or not ((s % r.every == 0 or s >= state.max_steps) and s > r.last_step):
            return control
        self._evaluate(model, state)
        if r.cfg.online and online_should_stop([p["train_accuracy"] for p in r.points], r.margin, r.cfg.patience):
            r.stopped_early = True
            control.should_training_stop = True
        return control


def plot_trajectory(points: list[dict[str, Any]], bottleneck_step: int | None, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, [100 * p["train_accuracy"] for p in points], "o-", color="C0", label="train accuracy")
    if any(p.get("heldout_accuracy") is not None for p in points):
        ax.plot(
            steps,
            [None if p["heldout_accuracy"] is None else 100 * p["heldout_accuracy"] for p in points],
            "s-",
            color="C2",
            label="held-out accuracy",
        )
    if any(p.get("marker_rate") is not None for p in points):
        ax.plot(
            steps,
            [None if p["marker_rate"] is None else 100 * p["marker_rate"] for p in points],
            ":",
            color="C4",
            label="marker rate",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax2 = ax.twinx()
    ls = [(p["step"], p["loss"]) for p in points if p.get("loss") is not None]
    if ls:
        ax2.plot([s for s, _ in ls], [v for _, v in ls], "--", color="C3", label="train loss")
    ax2.set_ylabel("loss")
    if bottleneck_step is not None:
        ax.axvline(bottleneck_step, color="k", lw=1, alpha=0.6)
        ax.annotate(
            f"bottleneck (step {bottleneck_step})",
            (bottleneck_step, 96),
            fontsize=8,
            ha="left",
            xytext=(4, 0),
            textcoords="offset points",
        )
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(title or "probe trajectory")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def run_probe(
    model_path: str,
    data_path: str,
    out: str | Path,
    cfg: RunConfig,
    *,
    heldout_path: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Any = print,
    objective: Objective | DiffusionConfig | None = None,
) -> dict[str, Any]:
    """Run the probe into `out` (atomically). `cfg` is a RunConfig; its train, render, probe and eval sections
    are used. `objective` (default: autoregressive): a masked-diffusion student is trained with its own
    objective (the random mask only: its SFT) and evaluated with its sampler."""
    from t3s.data import load_rows
    from t3s.models import describe, device_info, model_fingerprint
    from t3s.objectives import as_objective
    from t3s.objectives.base import plan_for, training_arguments
    from t3s.train import check_lora_sharding, make_trainer, prepare

    pcfg, tcfg = cfg.probe, cfg.train
    objective = as_objective(objective)
    objective.check_backend(pcfg.backend, "probe.backend")  # before any work
    dist.state()  # several processes: join the group (and pick this process's GPU) before loading anything
    check_lora_sharding(tcfg)
    plan = plan_for(tcfg)
    precision = plan.inference()  # the live model is evaluated and scored as it trains
    if dist.is_main():
        log(f"probe training {describe(plan)}")
    data = prepare(model_path, data_path, tcfg, cfg.render, objective=objective)
    read_heldout = heldout_path and pcfg.reads_heldout
    heldout = load_rows(heldout_path, need_response=False, need_answer=True) if read_heldout else None
    with dist.atomic_dir(out, overwrite) as tmp:  # several processes: the main one writes
        args = (data, dataclasses.replace(tcfg, save_steps=0))
        zero3 = dist.zero3_init_args(training_arguments(args[1], tmp / "trainer", progress))  # noqa: F841
        model = objective.load(
            model_path, precision, tcfg.trust_remote_code, place=not dist.launched()
        )  # several processes: the Trainer places it
        trainer = make_trainer(model, *args, tmp / "trainer", progress=progress)
        runner = ProbeRunner(tmp, data, heldout, pcfg, cfg.eval, cfg.render, precision, tcfg.max_steps, progress, log)
        runner.trainer = trainer
        if pcfg.backend == "vllm":
            from t3s.vllm_backend import ProbeGenerator

            runner.generator = ProbeGenerator(trainer, data.tokenizer, cfg.eval, tcfg.trust_remote_code)
        trainer.add_callback(ProbeTrainerCallback(runner, trainer))
        t_train = time.perf_counter()
        trainer.train()
        t_train = time.perf_counter() - t_train
        dist.barrier()  # several processes: all are done with the Trainer's folder before it goes
        dist.on_main(lambda: shutil.rmtree(tmp / "trainer", ignore_errors=True))
        b = find_bottleneck(runner.points, runner.margin)
        completed = trainer.state.global_step >= trainer.state.max_steps
        if completed:  # the probe is a full SFT run: keep its end point (the pipeline reuses it as `sft`)
            _save_model(trainer.model, data.tokenizer, tmp / "final", trainer.state.global_step, trainer)
        if dist.is_main():
            np.savez_compressed(
                tmp / "token_logprobs.npz",
                ids=np.array([e.id for e in runner.examples]),
                lengths=np.array([len(e.response_ids) for e in runner.examples]),
                **{f"step_{s}": v for s, v in runner.token_logprobs.items()},
            )
            plot_trajectory(
                runner.points,
                b["bottleneck_step"] if b["dip_found"] or pcfg.continue_without_dip else None,
                tmp / "trajectory.png",
            )
        usable = b["dip_found"] or (pcfg.continue_without_dip and b["bottleneck_step"] is not None)
        summary = {
            "kind": "t3s-probe",
            "t3s_version": __version__,
            "model": model_path,
            "model_fingerprint": model_fingerprint(model_path),
            "data": str(data_path),
            "fingerprints": data.fingerprints,
            **b,
            "margin": runner.margin,
            "noise": runner.noise,
            "bottleneck": "bottleneck" if usable else None,
            "usable": usable,
            "message": None if b["dip_found"] else no_dip_message(b, runner.margin),
            "stopped_early": runner.stopped_early,
            "completed": completed,
            "steps_run": trainer.state.global_step,
            "eval_every": runner.every,
            "points": len(runner.points),
            # wall time of the Trainer's run, split: optimizer steps vs the evaluations made along the way
            "seconds": {"run": t_train, **runner.seconds, "training": t_train - sum(runner.seconds.values())},
            "objective": objective.name,
            "precision": plan.name,
            "precision_plan": plan.as_dict(),
            "device": device_info(plan.device),
            "probe_config": dataclasses.asdict(pcfg),
            "train_config": dataclasses.asdict(tcfg),
        }
        dist.on_main(lambda: write_json(tmp / "probe.json", summary))
    return summary
