"""The stages of a `t3s run`, one builder each: probe, score, select, train, rrt, eval.

A builder takes the `Run` (the config, the ledger, the student's objective and where Δc comes from: the
objective's `Selector` record) and the records of the stages it reads, and hands each of its stages to the ledger:
the stage's id, kind and output directory, a function giving the fingerprint of its inputs (called only when the
ledger needs it) and the work. The single-teacher pipeline (`t3s.pipeline.run_single`) calls them in order, the
teacher mixture (`t3s.mixture`) calls `train_stage` and `eval_stage` for its own stages, and `t3s run --plan`
runs the whole pipeline with a ledger that only lists the stages (`t3s.ledger.PlanLedger`): what the plan shows
is what runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from t3s import T3SError
from t3s.ledger import eval_inputs, probe_inputs, score_inputs, selection_inputs, train_inputs
from t3s.modes import CHECKPOINTS, checkpoints_read, mode_of, scores_name

if TYPE_CHECKING:
    from t3s.config import RunConfig, TrainConfig
    from t3s.ledger import Ledger, PlanLedger
    from t3s.objectives import Objective
    from t3s.objectives.base import Selector

Record = dict[str, Any]  # a stage record: "produced" (when), "result" (what its work returned), ...


@dataclass
class Run:
    """One single-teacher run (or a mixture's own stages) as the builders see it. The fingerprints, the evaluator
    and the Δc projection are built once, on first use (a plan uses none of them)."""

    cfg: RunConfig
    ledger: Ledger | PlanLedger
    objective: Objective  # the student's
    selector: Selector  # whose probe and scores give Δc
    progress: bool = True

    @property
    def out(self) -> Path:
        return self.ledger.out

    def log(self, msg: str) -> None:
        self.ledger.log(msg)

    def train_config(self, seed: int) -> TrainConfig:
        return dataclasses.replace(self.cfg.train, seed=seed)

    @cached_property
    def student_fp(self) -> str:
        from t3s.models import model_fingerprint

        return model_fingerprint(self.cfg.student)

    @cached_property
    def base(self) -> dict[str, Any]:
        """What every stage of the student reads: the student, the training set, the rendering."""
        from t3s.data import file_fingerprint

        return {
            "student": self.student_fp,
            "train_data": file_fingerprint(self.cfg.train_data, True),
            "render": dataclasses.asdict(self.cfg.render),
        }

    @cached_property
    def selector_base(self) -> dict[str, Any]:
        """... and of the selector's stages (its probe and scores)."""
        from t3s.models import model_fingerprint

        return (
            self.base if self.selector.is_student else {**self.base, "student": model_fingerprint(self.selector.model)}
        )

    @property
    def eval_data(self) -> str:
        return self.cfg.eval_data or self.cfg.train_data

    @cached_property
    def eval_fp(self) -> str:
        from t3s.data import file_fingerprint

        return file_fingerprint(self.eval_data, False)

    @cached_property
    def heldout_fp(self) -> str | None:
        return self.eval_fp if self.cfg.eval_data else None

    @cached_property
    def eval_rows(self) -> list:
        """The evaluation prompts, read (and checked) once: `run_single` reads them before the first stage, so that a
        malformed row stops the run at its start, not after the probe and the trainings."""
        from t3s.data import load_rows

        return load_rows(self.eval_data, need_response=False, need_answer=True)

    @cached_property
    def evaluate(self) -> Callable[[str, str], Callable[[Path], dict]]:
        from t3s.evaluate import evaluator

        cfg = self.cfg
        return evaluator(
            self.eval_rows,
            self.eval_data,
            cfg.eval,
            cfg.render,
            self.objective,
            trust_remote_code=cfg.train.trust_remote_code,
            progress=self.progress,
            log=self.log,
        )

    @cached_property
    def project(self) -> Any:
        """How Δc moves onto the student's tokens: None when the selector is the student or tokenizes alike."""
        if self.selector.is_student:
            return None
        return projector_between(self.selector.model, self.cfg, self.log)


def projector_between(selector: str, cfg: RunConfig, log: Callable[[str], None]) -> Any:
    """None when the selector and the student tokenize alike (Δc applies as is), else the offset projection."""
    from t3s.data import load_rows, tokenizer_fingerprint
    from t3s.models import load_tokenizer
    from t3s.objectives.projection import projector

    trust = cfg.train.trust_remote_code
    sel_tok, stu_tok = load_tokenizer(selector, trust), load_tokenizer(cfg.student, trust)
    if tokenizer_fingerprint(sel_tok) == tokenizer_fingerprint(stu_tok):
        return None
    log(
        "the selector's tokenizer differs from the student's: Δc is projected onto the student's tokens through "
        "character offsets (minimum over overlapping selector tokens)"
    )
    return projector(load_rows(cfg.train_data), stu_tok, sel_tok, cfg.render)


# ----------------------------------------------------------------------------------------------- the probe


def probe_heldout_fp(run: Run) -> str | None:
    """The held-out file's fingerprint as a probe input: None when the probe evaluates no held-out prompt."""
    return run.heldout_fp if run.cfg.probe.reads_heldout else None


def probe_stage(
    run: Run, key: str, model: str, objective: Objective, train: TrainConfig, base: Callable[[], dict]
) -> Record:
    """One probe: plain SFT of `model` with evaluation along the way (`t3s.probe`)."""
    from t3s.probe import run_probe

    cfg = run.cfg
    scfg = dataclasses.replace(cfg, train=train)
    return run.ledger.stage(
        key,
        "probe",
        run.out / key,
        # the held-out file only when the probe reads it (probe.heldout_subset -1: it does not)
        lambda: {**base(), **probe_inputs(cfg, objective, train), "heldout": probe_heldout_fp(run)},
        lambda path: run_probe(
            model,
            cfg.train_data,
            path,
            scfg,
            heldout_path=cfg.eval_data,
            overwrite=True,
            progress=run.progress,
            log=run.log,
            objective=objective,
        ),
    )


def probe_stages(run: Run) -> tuple[dict[int, Record], dict[int, dict]]:
    """Per seed, the selector's probe (that seed's SFT run when the selector is the student), and with
    `probe_student` the student's own. Returns (probe records, the student's probe results)."""
    cfg, sel = run.cfg, run.selector
    probes, student_probes = {}, {}
    for s in cfg.seeds:
        probes[s] = probe_stage(
            run,
            f"seed-{s}/probe",
            sel.model,
            sel.objective,
            dataclasses.replace(sel.train, seed=s),
            lambda: run.selector_base,
        )
        if sel.probe_student:  # does the student itself show the shock?
            r = student_probes[s] = probe_stage(
                run, f"seed-{s}/probe-student", cfg.student, run.objective, run.train_config(s), lambda: run.base
            )["result"]
            run.log(
                f"seed {s}: the student's own probe: training accuracy {100 * r['start_accuracy']:.1f}% -> "
                f"lowest {100 * (r['bottleneck_accuracy'] or 0):.1f}% at step {r['bottleneck_step']}"
                + ("" if r["dip_found"] else " (no dip)")
            )
        r = probes[s]["result"]
        if r["dip_found"]:
            run.log(
                f"seed {s}: bottleneck at step {r['bottleneck_step']}: training accuracy "
                f"{100 * r['start_accuracy']:.1f}% -> {100 * r['bottleneck_accuracy']:.1f}%"
            )
        else:
            run.log(f"seed {s}: {r['message']}")
    return probes, student_probes


# ----------------------------------------------------------------------------------------------- scores


def evaluated_steps(probe_dir: Path) -> dict[int, Path]:
    """The probe's kept evaluated checkpoints by step (checkpoints/step-N, with `probe.keep_all`)."""
    return {int(p.name.split("-")[1]): p for p in (probe_dir / "checkpoints").glob("step-*") if p.is_dir()}


def nearest_checkpoint(
    probe_dir: Path, bottleneck_step: int, times: float, name: str = "early", readers: str = "a mode"
) -> Path:
    """The evaluated checkpoint closest to `times` × the bottleneck step, strictly before the bottleneck when
    `times` < 1 and after it when > 1 (ties: the earlier). `t3s-early`'s θ_b (½), `t3s-recovery`'s (2×)."""
    found = evaluated_steps(probe_dir)
    side = [k for k in found if (0 < k < bottleneck_step if times < 1 else k > bottleneck_step)]
    if not side:
        where = "before" if times < 1 else "after"
        raise T3SError(
            f"{probe_dir}: {readers} reads the {name} checkpoint, an evaluated one {where} the bottleneck (step "
            f"{bottleneck_step}), "
            f"and the probe kept none there (steps {', '.join(map(str, sorted(found))) or 'none'}); evaluate more "
            "often (probe.eval_every)" + ("" if times < 1 else ", and let the probe run on (probe.online: false)")
        )
    target = times * bottleneck_step
    return found[min(side, key=lambda k: (abs(k - target), k))]


def early_checkpoint(probe_dir: Path, bottleneck_step: int) -> Path:
    """The probe's evaluated checkpoint closest to half the bottleneck step: the `t3s-early` control's θ_b."""
    return nearest_checkpoint(probe_dir, bottleneck_step, CHECKPOINTS["early"].of_bottleneck)


def step_checkpoint(probe_dir: Path, step: int, key: str = "delta_step", readers: str = "t3s-step") -> Path:
    """The probe's evaluated checkpoint at `step` (the run config's `key`): the `t3s-step` control's θ_b."""
    found = sorted(evaluated_steps(probe_dir))
    if step not in found:
        raise T3SError(
            f"{probe_dir}: {readers} reads the checkpoint at step {step} ({key}), but the probe evaluated and kept "
            f"steps {', '.join(map(str, found)) or 'none'}; pick one of them (probe.eval_every), or let the probe "
            "run past it (probe.online: false)"
        )
    return probe_dir / "checkpoints" / f"step-{step}"


def probe_checkpoint(name: str, probe_dir: Path, result: dict, cfg: RunConfig, seed: int) -> Path:
    """The model directory of a probe checkpoint a mode reads, where `t3s.modes.CHECKPOINTS` says it lies."""
    if name not in CHECKPOINTS:
        raise T3SError(f"unknown probe checkpoint '{name}'")
    c = CHECKPOINTS[name]
    readers = ", ".join(m for m in cfg.modes if name in mode_of(m).checkpoints())
    if c.needs_end and not result["completed"]:
        raise T3SError(
            f"seed {seed}: modes {readers} need the probe to run to its end ({name}), but the probe stopped early "
            "(probe.online); set probe.online: false"
        )
    if c.directory is not None:
        return probe_dir / c.directory
    if c.of_bottleneck is not None:
        return nearest_checkpoint(probe_dir, result["bottleneck_step"], c.of_bottleneck, name, readers)
    return step_checkpoint(probe_dir, getattr(cfg, c.at_step), c.at_step, readers)


def score_stages(run: Run, probes: dict[int, Record]) -> dict[Any, Record]:
    """θ_0's scores once, then per seed every probe checkpoint the modes read (`t3s.modes.CHECKPOINTS`: θ_b always;
    θ_T for t3s-final / excess-loss, ...), each scored by the selector. Keys: "init", (seed, checkpoint)."""
    from t3s.score import run_score

    cfg = run.cfg

    def inputs() -> dict:
        return {**run.selector_base, **score_inputs(cfg)}

    def scorer(model: str) -> Callable[[Path], dict]:
        return lambda path: run_score(
            model, cfg.train_data, path, cfg.render, cfg.score, overwrite=True, progress=run.progress
        )

    scores = {
        "init": run.ledger.stage("scores-init", "score", run.out / "scores-init", inputs, scorer(run.selector.model))
    }
    for s in cfg.seeds:
        probe_dir = run.out / f"seed-{s}" / "probe"
        # every checkpoint found (or refused) before any is scored; a plan has no probe directory to look in
        ckpts = {
            c: None if run.ledger.planning else probe_checkpoint(c, probe_dir, probes[s]["result"], cfg, s)
            for c in checkpoints_read(cfg.modes)
        }
        for name, model in ckpts.items():
            where = scores_name(name, cfg)
            scores[(s, name)] = run.ledger.stage(
                f"seed-{s}/{where}",
                "score",
                run.out / f"seed-{s}" / where,
                lambda s=s: {**inputs(), "probe": probes[s]["produced"]},
                scorer(str(model)),
            )
    return scores


# ----------------------------------------------------------------------------------------------- selections


def select_stages(run: Run, probes: dict[int, Record], scores: dict[Any, Record]) -> dict[tuple[int, str], Record]:
    """Per seed and selecting mode, the selection the objective applies (keep-masks, or forced sets projected
    onto the student's tokens), from the scores the mode reads (`t3s.modes.Mode.reads`)."""
    from t3s.score import load_scores
    from t3s.select import summary_line, write_selection

    cfg, out = run.cfg, run.out
    sels: dict[tuple[int, str], Record] = {}
    for s in cfg.seeds:
        for mode in (m for m in cfg.modes if mode_of(m).selects):
            reads = mode_of(mode).reads()  # which scores stand in θ_b's place, and the reference

            def do_select(path: Path, s: int = s, mode: str = mode, reads: dict = reads) -> dict:
                got = {k: load_scores(out / f"seed-{s}" / scores_name(v, cfg)) for k, v in reads.items()}
                step = probes[s]["result"]["bottleneck_step"] if reads["bottleneck"] == "bottleneck" else None
                sel = run.objective.select(
                    load_scores(out / "scores-init"),
                    got["bottleneck"],
                    mode,
                    threshold=cfg.threshold,
                    seed=s,
                    bottleneck_step=step,
                    reference=got.get("reference"),
                    project=run.project,
                )
                write_selection(sel, path, overwrite=True)
                run.log(f"seed {s}: {summary_line(sel.meta)}")
                return {"stats": sel.meta["stats"]}

            def inputs(s: int = s, mode: str = mode, reads: dict = reads) -> dict:
                return {
                    "init": scores["init"]["produced"],
                    "bottleneck": scores[(s, "bottleneck")]["produced"],
                    # the other scores only where this mode reads them
                    **{
                        scores_name(v, cfg): scores[(s, v)]["produced"]
                        for v in set(reads.values())
                        if v != "bottleneck"
                    },
                    **selection_inputs(cfg, run.objective, mode, run.student_fp),
                }

            sels[(s, mode)] = run.ledger.stage(
                f"seed-{s}/select-{mode}", "select", out / f"seed-{s}" / "selections" / mode, inputs, do_select
            )
    return sels


# ----------------------------------------------------------------------------------------------- training


def train_stage(
    run: Run,
    key: str,
    path: Path,
    data_path: str,
    data_input: Callable[[], dict],
    mode: str,
    train: TrainConfig,
    selection: tuple[str, Record] | None,
    label: str,
    tracked: bool = True,
) -> Record:
    """One training run of the student from θ_0 on `data_path` with the mode's settings and `selection` (its
    directory and record; None: every token). `data_input`: the data's part of the fingerprint. `tracked`: the
    mode is evaluated along the way when `probe.track_every` and `probe.track_modes` ask (a mixture's runs are
    not)."""
    from t3s.objectives.base import plan_for
    from t3s.probe import tracking_callback
    from t3s.train import brief, config_for_mode, prepare
    from t3s.train import train as train_run

    cfg = run.cfg
    mode_cfg = config_for_mode(train, mode)
    sel_path = None if selection is None else selection[0]
    tracked = tracked and cfg.probe.tracks(mode)

    def work(out: Path) -> dict:
        data = prepare(cfg.student, data_path, mode_cfg, cfg.render, sel_path, run.objective)  # rendered once
        callbacks = []
        if tracked:  # accuracy along the way, like the probe's (training prompts)
            callbacks.append(
                tracking_callback(
                    out,
                    data,
                    dataclasses.replace(cfg, train=mode_cfg),
                    plan_for(mode_cfg).inference(),
                    mode_cfg.max_steps,
                    run.progress,
                    log=lambda m: run.log(f"{label}: {m}"),
                )
            )
        summary = train_run(
            cfg.student,
            data_path,
            out,
            mode_cfg,
            cfg.render,
            sel_path,
            overwrite=True,
            progress=run.progress,
            callbacks=callbacks,
            data=data,
        )
        return brief(summary)

    def inputs() -> dict:
        return {
            "student": run.student_fp,
            **data_input(),
            **train_inputs(cfg, run.objective, mode_cfg),
            **({} if tracked else {"track": None}),
            "selection": None if selection is None else selection[1]["produced"],
        }

    return run.ledger.stage(key, "train", path, inputs, work)


def train_stages(
    run: Run, probes: dict[int, Record], sels: dict[tuple[int, str], Record]
) -> tuple[dict[tuple[int, str], tuple[str, str]], dict[tuple[int, str], dict]]:
    """Every mode of every seed, with the same budget. When the selector is the student and its probe ran to its
    end, `sft` is the probe's own end point. Returns ({(seed, method): (model path, produced)}, {(seed, mode):
    where its loss diverged, for runs that trained on regardless})."""
    cfg, out = run.cfg, run.out
    models: dict[tuple[int, str], tuple[str, str]] = {}
    diverged: dict[tuple[int, str], dict] = {}
    for s in cfg.seeds:
        for mode in cfg.modes:
            if mode == "sft" and run.selector.is_student and probes[s]["result"]["completed"]:
                models[(s, mode)] = (str(out / f"seed-{s}" / "probe" / "final"), probes[s]["produced"])
                continue
            sel = sels.get((s, mode))
            rec = train_stage(
                run,
                f"seed-{s}/train-{mode}",
                out / f"seed-{s}" / "train" / mode,
                cfg.train_data,
                lambda: {"train_data": run.base["train_data"]},
                mode,
                run.train_config(s),
                None if sel is None else (str(out / f"seed-{s}" / "selections" / mode), sel),
                f"seed {s} {mode}",
            )
            models[(s, mode)] = (str(out / f"seed-{s}" / "train" / mode / "model"), rec["produced"])
            if (rec.get("result") or {}).get("diverged"):  # train.stop_on_divergence=false: trained on, marked
                diverged[(s, mode)] = rec["result"]["diverged"]
    return models, diverged


def rrt_stages(run: Run, probes: dict[int, Record], models: dict[tuple[int, str], tuple[str, str]]) -> None:
    """RRT from each seed's SFT run and its own bottleneck (the probe must be the student's): added to `models`."""
    from t3s.rrt import rrt

    cfg, out = run.cfg, run.out
    if not cfg.rrt:
        return
    if not run.selector.is_student:
        run.log("rrt needs the student's own bottleneck (its probe); with a separate selector it is skipped")
        return
    for s in cfg.seeds:
        if (s, "sft") not in models:
            run.log("rrt needs the sft mode; skipped")
            return
        final, produced = models[(s, "sft")]
        bottleneck = str(out / f"seed-{s}" / "probe" / "bottleneck")
        rec = run.ledger.stage(
            f"seed-{s}/rrt",
            "rrt",
            out / f"seed-{s}" / "rrt",
            lambda s=s, produced=produced: {
                "student": run.student_fp,
                "probe": probes[s]["produced"],
                "final": produced,
            },
            lambda path, final=final, b=bottleneck: rrt(
                cfg.student, b, final, path, overwrite=True, progress=run.progress
            ),
        )
        models[(s, "rrt")] = (str(out / f"seed-{s}" / "rrt"), rec["produced"])


# ----------------------------------------------------------------------------------------------- evaluation


def eval_stage(run: Run, key: str, path: Path, model: str, produced: Callable[[], str], label: str) -> dict:
    """One evaluation of `model` on the run's evaluation prompts. `produced`: the model's part of the
    fingerprint (a training stage's record, or the student's fingerprint). Returns its result."""
    return run.ledger.stage(
        key,
        "eval",
        path,
        lambda: {**eval_inputs(run.cfg, run.objective), "data": run.eval_fp, "model": produced()},
        lambda out: run.evaluate(model, label)(out),
    )["result"]


def eval_stages(run: Run, models: dict[tuple[int, str], tuple[str, str]]) -> dict[tuple[int | None, str], dict]:
    """The base model, then every result. Keys: (None, "base"), (seed, method)."""
    evals = {
        (None, "base"): eval_stage(
            run, "eval-base", run.out / "eval-base", run.cfg.student, lambda: run.student_fp, "base"
        )
    }
    for (s, method), (path, produced) in models.items():
        evals[(s, method)] = eval_stage(
            run,
            f"seed-{s}/eval-{method}",
            run.out / f"seed-{s}" / "eval" / method,
            path,
            lambda produced=produced: produced,
            f"seed {s} {method}",
        )
    return evals
