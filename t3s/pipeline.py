"""`t3s run CONFIG.yaml`: the whole method from one config.

For every seed: probe (plain SFT with evaluation; its end point is that seed's `sft` result) → score θ_0 and
θ_b → select for each masked mode → train each mode from θ_0 with the same budget → RRT from the SFT run →
evaluate the base model and every result → one summary table (Markdown and JSON).

The student's objective (`t3s.objectives`) decides how it loads, trains, generates and which selection applies.
Δc comes from the *selector*: the student itself, or, for a masked-diffusion student, an autoregressive
`selector` model (whose probe is then not the student's SFT: `sft` is trained like every mode, RRT is skipped,
and `probe_student: true` also probes the student itself).

With `teachers:` (a name → training set mapping) the run is a teacher mixture: one single-teacher run per
teacher under `teachers/NAME/`, then the mixtures (`t3s.mixture`).

Resumable (`t3s.ledger`): each stage writes its outputs atomically and then a record under `stages/`; a rerun
skips every stage whose record matches, and `--force KIND` redoes every stage of that kind and everything
downstream.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from t3s import T3SError, __version__
from t3s.ledger import (
    Ledger,
    Session,
    StageDone,
    eval_inputs,
    probe_inputs,
    score_inputs,
    selection_inputs,
    train_inputs,
)
from t3s.modes import SELECTION_MODES, checkpoints_read, keeps_all_checkpoints, mode_of, scores_name
from t3s.summary import base_row, method_row, table, write_summary

if TYPE_CHECKING:
    from t3s.config import RenderConfig, RunConfig
    from t3s.objectives import Objective

NO_DIP_EXIT = 3


def early_checkpoint(probe_dir: Path, bottleneck_step: int) -> Path:
    """The probe's evaluated checkpoint closest to half the bottleneck step (strictly between 0 and it): the
    `t3s-early` control's θ_b."""
    found = {int(p.name.split("-")[1]): p for p in (probe_dir / "checkpoints").glob("step-*") if p.is_dir()}
    before = [k for k in found if 0 < k < bottleneck_step]
    if not before:
        raise T3SError(
            f"{probe_dir}: t3s-early needs an evaluated checkpoint before the bottleneck (step "
            f"{bottleneck_step}); evaluate more often (probe.eval_every)"
        )
    return found[min(before, key=lambda k: (abs(k - bottleneck_step / 2), k))]


def step_checkpoint(probe_dir: Path, step: int) -> Path:
    """The probe's evaluated checkpoint at `step`: the `t3s-step` control's θ_b."""
    found = sorted(int(p.name.split("-")[1]) for p in (probe_dir / "checkpoints").glob("step-*") if p.is_dir())
    if step not in found:
        raise T3SError(
            f"{probe_dir}: t3s-step reads the checkpoint at step {step} (delta_step), but the probe evaluated "
            f"and kept steps {', '.join(map(str, found)) or 'none'}; pick one of them (probe.eval_every), or let "
            "the probe run past it (probe.online: false)"
        )
    return probe_dir / "checkpoints" / f"step-{step}"


def probe_checkpoint(name: str, probe_dir: Path, result: dict, cfg: RunConfig, seed: int) -> Path:
    """The model directory of a probe checkpoint a mode reads (t3s.modes.CHECKPOINTS)."""
    if name == "bottleneck":
        return probe_dir / "bottleneck"
    if name == "final":
        if not result["completed"]:
            readers = [m for m in cfg.modes if "final" in mode_of(m).checkpoints()]
            raise T3SError(
                f"seed {seed}: modes {', '.join(readers)} need the probe's end point θ_T, but the probe stopped "
                "early (probe.online); set probe.online: false"
            )
        return probe_dir / "final"
    if name == "early":
        return early_checkpoint(probe_dir, result["bottleneck_step"])
    if name == "step":
        return step_checkpoint(probe_dir, cfg.delta_step)
    raise T3SError(f"unknown probe checkpoint '{name}'")


def run(
    cfg: RunConfig, out: str | Path, *, force: tuple[str, ...] = (), progress: bool = True, stage: str | None = None
) -> tuple[dict, int]:
    """Run (or resume) the method: a single-teacher run, or with `teachers:` a teacher mixture. Returns
    (summary, exit code). With a launcher (`launch`), the distributed stages run as their own processes
    (`t3s.launch`); `stage`: be one of those, run that stage only (it raises `StageDone`)."""
    from t3s.graders import grader
    from t3s.launch import StageRunner, resolve

    launch = resolve(cfg.launch)  # a bad launch setting stops the run here, before any stage
    grader(cfg.eval.grader, cfg.eval.fallback)  # so does a user grader that does not import
    session = Session(Path(out), target=stage, processes=launch.processes)
    if stage is None:
        ledger = Ledger(session.root, force, session)
        ledger.write_config(cfg)  # what the stages' own processes read
        if launch.kind != "none":
            session.runner = StageRunner(cfg, session.root, progress, ledger.log)
            ledger.log(
                f"launch: probe, score, train and eval under {launch.kind} on {launch.processes} process(es)"
                + (f" over {launch.nodes} nodes" if launch.nodes > 1 else "")
                + "; select, rrt and the summary here"
            )
    if cfg.teachers:
        summary, code = run_mixture(cfg, out, force=force, progress=progress, session=session)
    else:
        summary, code = run_single(cfg, out, force=force, progress=progress, session=session)
    if code == 0 and stage is None:  # the results table to report_to's trackers (t3s.trackers)
        from t3s.trackers import log_summary

        sent = log_summary(cfg.train.report_to, session.root, summary)
        if sent:
            Ledger(session.root, (), session, clean=False).log(f"summary sent to {', '.join(sent)}")
    return summary, code


def run_mixture(
    cfg: RunConfig,
    out: str | Path,
    *,
    force: tuple[str, ...] = (),
    progress: bool = True,
    session: Session | None = None,
) -> tuple[dict, int]:
    """Every teacher alone (an ordinary run each, sharing the base model's evaluation), then the mixtures."""
    from t3s.mixture import check_mixture, train_mixtures

    check_mixture(cfg)
    ledger = Ledger(Path(out), set(force), session)
    names = list(cfg.teachers)
    ledger.log(f"teacher mixture of {', '.join(names)}: each teacher alone, then the mixtures")
    subs = {}
    for name in names:
        sub = dataclasses.replace(cfg, teachers={}, train_data=cfg.teachers[name])
        where = ledger.out / "teachers" / name
        ledger.log(f"teacher {name}: run in {where}")
        if name != names[0]:
            sub_ledger = ledger.sub(where)
            if sub_ledger.adopt(ledger.out / "teachers" / names[0], "eval-base", "eval", "eval-base"):
                ledger.log(f"teacher {name}: the base model's evaluation is shared from teacher {names[0]}")
        summary, code = run_single(sub, where, force=force, progress=progress, session=ledger.session)
        if code != 0:
            return {**summary, "stopped": f"teacher {name}: {summary['stopped']}"}, code
        subs[name] = summary
    return train_mixtures(cfg, ledger, subs, progress), 0


def run_single(
    cfg: RunConfig,
    out: str | Path,
    *,
    force: tuple[str, ...] = (),
    progress: bool = True,
    session: Session | None = None,
) -> tuple[dict, int]:
    """The single-teacher pipeline (see the module docstring). Returns (summary, exit code)."""
    from t3s.data import file_fingerprint, load_rows
    from t3s.evaluate import evaluator
    from t3s.models import model_fingerprint, resolve_model_path
    from t3s.objectives import Autoregressive, objective_for
    from t3s.objectives.base import plan_for
    from t3s.probe import run_probe, tracking_callback
    from t3s.rrt import rrt
    from t3s.score import load_scores, run_score
    from t3s.select import summary_line, write_selection
    from t3s.train import brief, config_for_mode, prepare, train

    if not cfg.student or not cfg.train_data:
        raise T3SError("the config needs `student` (θ_0) and `train_data` (or `teachers` for a mixture)")
    objective = objective_for(cfg)
    # the model whose probe and scores give Δc: the student itself, or an autoregressive selector
    own = not objective.needs_selector
    if not own and not cfg.selector:
        raise T3SError(
            f"objective: {objective.name} needs `selector`: an autoregressive model (ideally with the "
            "student's tokenizer) whose probe and scores give Δc"
        )
    if keeps_all_checkpoints(cfg.modes) and not cfg.probe.keep_all:
        # t3s-early / t3s-step score an evaluated checkpoint other than θ_b: the probe keeps them all
        cfg = dataclasses.replace(cfg, probe=dataclasses.replace(cfg.probe, keep_all=True))
    ledger = Ledger(Path(out), set(force), session)
    out = ledger.out
    student, train_data, eval_data = cfg.student, cfg.train_data, cfg.eval_data or cfg.train_data
    selector = student if own else cfg.selector
    if cfg.rrt and own and not Path(resolve_model_path(student)).is_dir():
        raise T3SError(
            f"rrt needs the student as a local directory ({student} is not); download it first or set rrt: false"
        )
    ledger.write_config(cfg)
    ledger.log(f"t3s {__version__} run in {out}: modes {', '.join(cfg.modes)}; seeds {cfg.seeds}")

    base = {
        "student": model_fingerprint(student),
        "train_data": file_fingerprint(train_data, True),
        "render": dataclasses.asdict(cfg.render),
    }
    sel_base = base if own else {**base, "student": model_fingerprint(selector)}
    eval_fp = file_fingerprint(eval_data, False)
    heldout_fp = eval_fp if cfg.eval_data else None
    if not cfg.eval_data:
        ledger.log("no eval_data: the summary reports accuracy on the training prompts")
    train_cfg = {s: dataclasses.replace(cfg.train, seed=s) for s in cfg.seeds}
    probe_cfg = {s: dataclasses.replace(cfg.train if own else cfg.selector_train_config(), seed=s) for s in cfg.seeds}
    selector_objective = objective if own else Autoregressive()

    # 1. probes (one per seed; each is that seed's SFT run of the selector: the student itself, or its selector)
    probes, student_probes = {}, {}
    for s in cfg.seeds:
        scfg = dataclasses.replace(cfg, train=probe_cfg[s])
        probes[s] = ledger.stage(
            f"seed-{s}/probe",
            "probe",
            out / f"seed-{s}" / "probe",
            {**sel_base, **probe_inputs(cfg, selector_objective, probe_cfg[s]), "heldout": heldout_fp},
            lambda path, scfg=scfg: run_probe(
                selector,
                train_data,
                path,
                scfg,
                heldout_path=cfg.eval_data,
                overwrite=True,
                progress=progress,
                log=ledger.log,
                objective=selector_objective,
            ),
        )
        if not own and cfg.probe_student:  # does the student itself show the shock?
            scfg = dataclasses.replace(cfg, train=train_cfg[s])
            student_probes[s] = ledger.stage(
                f"seed-{s}/probe-student",
                "probe",
                out / f"seed-{s}" / "probe-student",
                {**base, **probe_inputs(cfg, objective, train_cfg[s]), "heldout": heldout_fp},
                lambda path, scfg=scfg: run_probe(
                    student,
                    train_data,
                    path,
                    scfg,
                    heldout_path=cfg.eval_data,
                    overwrite=True,
                    progress=progress,
                    log=ledger.log,
                    objective=objective,
                ),
            )["result"]
            r = student_probes[s]
            ledger.log(
                f"seed {s}: the student's own probe: training accuracy {100 * r['start_accuracy']:.1f}% -> "
                f"lowest {100 * (r['bottleneck_accuracy'] or 0):.1f}% at step {r['bottleneck_step']}"
                + ("" if r["dip_found"] else " (no dip)")
            )
        r = probes[s]["result"]
        if r["dip_found"]:
            ledger.log(
                f"seed {s}: bottleneck at step {r['bottleneck_step']}: training accuracy "
                f"{100 * r['start_accuracy']:.1f}% -> {100 * r['bottleneck_accuracy']:.1f}%"
            )
        else:
            ledger.log(f"seed {s}: {r['message']}")
    unusable = [s for s in cfg.seeds if not probes[s]["result"]["usable"]]
    if unusable:
        msg = (
            f"stopped after the probe: no usable bottleneck for seed(s) {unusable}. "
            + probes[unusable[0]]["result"]["message"]
        )
        summary = {
            "kind": "t3s-run",
            "stopped": msg,
            "probes": {s: probes[s]["result"] for s in cfg.seeds},
            "markdown": f"**{msg}**\n",
        }
        if ledger.end():
            write_summary(out, summary, "t3s run")
        ledger.log(msg)
        return summary, NO_DIP_EXIT

    # 2. scores: θ_0 once, then per seed every checkpoint the modes read (t3s.modes: θ_b always; θ_T for
    #    t3s-final / excess-loss, a checkpoint halfway to θ_b for t3s-early, the one at delta_step for t3s-step)
    score_in = {**sel_base, **score_inputs(cfg)}

    def scorer(model: str) -> Callable[[Path], dict]:
        return lambda path: run_score(model, train_data, path, cfg.render, cfg.score, overwrite=True, progress=progress)

    scores = {"init": ledger.stage("scores-init", "score", out / "scores-init", score_in, scorer(selector))}
    for s in cfg.seeds:
        probe_dir = out / f"seed-{s}" / "probe"
        ckpts = {c: probe_checkpoint(c, probe_dir, probes[s]["result"], cfg, s) for c in checkpoints_read(cfg.modes)}
        for name, model in ckpts.items():  # every checkpoint found (or refused) before any is scored
            where = scores_name(name, cfg.delta_step)
            scores[(s, name)] = ledger.stage(
                f"seed-{s}/{where}",
                "score",
                out / f"seed-{s}" / where,
                {**score_in, "probe": probes[s]["produced"]},
                scorer(str(model)),
            )

    # 3. selections (the objective's kind: keep-masks, or forced sets projected onto the student's tokens)
    project = (
        None if own else _projector(selector, student, train_data, cfg.render, ledger.log, cfg.train.trust_remote_code)
    )
    sels: dict[tuple[int, str], dict] = {}
    for s in cfg.seeds:
        for mode in cfg.modes:
            if mode not in SELECTION_MODES:
                continue
            reads = mode_of(mode).reads()  # which scores stand in θ_b's place, and the reference

            def do_select(path: Path, s: int = s, mode: str = mode, reads: dict = reads) -> dict:
                got = {k: load_scores(out / f"seed-{s}" / scores_name(v, cfg.delta_step)) for k, v in reads.items()}
                step = probes[s]["result"]["bottleneck_step"] if reads["bottleneck"] == "bottleneck" else None
                sel = objective.select(
                    load_scores(out / "scores-init"),
                    got["bottleneck"],
                    mode,
                    threshold=cfg.threshold,
                    seed=s,
                    bottleneck_step=step,
                    reference=got.get("reference"),
                    project=project,
                )
                write_selection(sel, path, overwrite=True)
                ledger.log(f"seed {s}: {summary_line(sel.meta)}")
                return {"stats": sel.meta["stats"]}

            sels[(s, mode)] = ledger.stage(
                f"seed-{s}/select-{mode}",
                "select",
                out / f"seed-{s}" / "selections" / mode,
                {
                    "init": scores["init"]["produced"],
                    "bottleneck": scores[(s, "bottleneck")]["produced"],
                    # the other scores only where this mode reads them
                    **{
                        scores_name(v, cfg.delta_step): scores[(s, v)]["produced"]
                        for v in set(reads.values())
                        if v != "bottleneck"
                    },
                    **selection_inputs(cfg, objective, mode, base["student"]),
                },
                do_select,
            )

    # 4. training (same budget for every mode; `sft` is the probe's own end point when the probe is the
    #    student's and ran to the end)
    models: dict[tuple[int, str], tuple[str, str]] = {}  # (seed, method) -> (model path, produced)
    diverged: dict[tuple[int, str], dict] = {}  # (seed, mode) -> where its loss diverged (trained on regardless)
    for s in cfg.seeds:
        for mode in cfg.modes:
            if mode == "sft" and own and probes[s]["result"]["completed"]:
                models[(s, mode)] = (str(out / f"seed-{s}" / "probe" / "final"), probes[s]["produced"])
                continue
            sel_rec = sels.get((s, mode))
            mode_cfg = config_for_mode(train_cfg[s], mode)
            sel_path = None if sel_rec is None else str(out / f"seed-{s}" / "selections" / mode)

            def do_train(path: Path, s: int = s, mode: str = mode, mode_cfg=mode_cfg, sel_path=sel_path) -> dict:
                data = prepare(student, train_data, mode_cfg, cfg.render, sel_path, objective)  # rendered once
                callbacks = []
                if cfg.probe.track_every > 0:  # accuracy along the way, like the probe's (on the training prompts)

                    def log(m: str, mode: str = mode, s: int = s) -> None:
                        ledger.log(f"seed {s} {mode}: {m}")

                    callbacks.append(
                        tracking_callback(
                            path,
                            data,
                            dataclasses.replace(cfg, train=mode_cfg),
                            plan_for(mode_cfg).inference(),
                            mode_cfg.max_steps,
                            progress,
                            log=log,
                        )
                    )
                return brief(
                    train(
                        student,
                        train_data,
                        path,
                        mode_cfg,
                        cfg.render,
                        sel_path,
                        overwrite=True,
                        progress=progress,
                        callbacks=callbacks,
                        data=data,
                    )
                )

            rec = ledger.stage(
                f"seed-{s}/train-{mode}",
                "train",
                out / f"seed-{s}" / "train" / mode,
                {
                    "student": base["student"],
                    "train_data": base["train_data"],
                    **train_inputs(cfg, objective, mode_cfg),
                    "selection": None if sel_rec is None else sel_rec["produced"],
                },
                do_train,
            )
            models[(s, mode)] = (str(out / f"seed-{s}" / "train" / mode / "model"), rec["produced"])
            if (rec.get("result") or {}).get("diverged"):  # train.stop_on_divergence=false: trained on, marked
                diverged[(s, mode)] = rec["result"]["diverged"]

    # 5. RRT from each seed's SFT run and its own bottleneck (the probe must be the student's)
    if cfg.rrt and not own:
        ledger.log("rrt needs the student's own bottleneck (its probe); with a separate selector it is skipped")
    elif cfg.rrt:
        for s in cfg.seeds:
            if (s, "sft") not in models:
                ledger.log("rrt needs the sft mode; skipped")
                break
            final, produced = models[(s, "sft")]
            bottleneck = str(out / f"seed-{s}" / "probe" / "bottleneck")
            rec = ledger.stage(
                f"seed-{s}/rrt",
                "rrt",
                out / f"seed-{s}" / "rrt",
                {"student": base["student"], "probe": probes[s]["produced"], "final": produced},
                lambda path, final=final, b=bottleneck: rrt(student, b, final, path, overwrite=True, progress=progress),
            )
            models[(s, "rrt")] = (str(out / f"seed-{s}" / "rrt"), rec["produced"])

    # 6. evaluation of the base model and every result
    evaluate = evaluator(
        load_rows(eval_data, need_response=False, need_answer=True),
        eval_data,
        cfg.eval,
        cfg.render,
        objective,
        trust_remote_code=cfg.train.trust_remote_code,
        progress=progress,
        log=ledger.log,
    )
    ev_in = {**eval_inputs(cfg, objective), "data": eval_fp}
    evals: dict[tuple[int | None, str], dict] = {
        (None, "base"): ledger.stage(
            "eval-base", "eval", out / "eval-base", {**ev_in, "model": base["student"]}, evaluate(student, "base")
        )["result"]
    }
    for (s, method), (path, produced) in models.items():
        evals[(s, method)] = ledger.stage(
            f"seed-{s}/eval-{method}",
            "eval",
            out / f"seed-{s}" / "eval" / method,
            {**ev_in, "model": produced},
            evaluate(path, f"seed {s} {method}"),
        )["result"]

    summary = summarize(
        cfg,
        objective,
        out,
        probes,
        sels,
        evals,
        eval_on_train=not cfg.eval_data,
        student_probes=student_probes,
        selector_probed=not own,
        write=ledger.end(),
        diverged=diverged,
    )
    ledger.log("summary:\n" + summary["markdown"], console=False)
    return summary, 0


def _projector(
    selector: str,
    student: str,
    data: str,
    rcfg: RenderConfig,
    log: Callable[[str], None],
    trust_remote_code: bool = False,
):
    """None when the selector and the student tokenize alike (Δc applies as is), else the offset projection."""
    from t3s.data import load_rows, tokenizer_fingerprint
    from t3s.models import load_tokenizer
    from t3s.objectives.projection import projector

    sel_tok, stu_tok = load_tokenizer(selector, trust_remote_code), load_tokenizer(student, trust_remote_code)
    if tokenizer_fingerprint(sel_tok) == tokenizer_fingerprint(stu_tok):
        return None
    log(
        "the selector's tokenizer differs from the student's: Δc is projected onto the student's tokens through "
        "character offsets (minimum over overlapping selector tokens)"
    )
    return projector(load_rows(data), stu_tok, sel_tok, rcfg)


def summarize(
    cfg: RunConfig,
    objective: Objective,
    out: Path,
    probes: dict,
    sels: dict,
    evals: dict,
    eval_on_train: bool,
    student_probes: dict | None = None,
    selector_probed: bool = False,
    write: bool = True,
    diverged: dict | None = None,
) -> dict[str, Any]:
    """The comparison table: every number is read from the eval/selection/probe records of this run.
    `diverged`: {(seed, mode): divergence record} of training runs whose loss diverged and that trained on."""
    base = evals[(None, "base")]
    stat = objective.selection_stat  # what a selection does to the loss
    methods = [
        m for m in ("sft", *[x for x in cfg.modes if x != "sft"], "rrt") if any((s, m) in evals for s in cfg.seeds)
    ]
    rows = [base_row(base, stat)]
    for m in methods:
        per = {s: evals[(s, m)] for s in cfg.seeds if (s, m) in evals}
        fractions = [sels[(s, m)]["result"]["stats"][stat] for s in per if (s, m) in sels]
        rows.append(method_row(m, m, per, fractions, stat, base["accuracy"]))
    k = base["k"]
    where = "training prompts" if eval_on_train else "held-out prompts"
    note = f" {objective.name} student, {objective.samples_with}; Δc from the AR selector." if selector_probed else ""
    lines = [
        f"Accuracy (avg@{k}) on the {where}, mean ± sd over seeds {cfg.seeds}.{note}",
        "",
        *table(rows, stat, objective.selection_header, k),
        "",
        f"Probe (plain SFT{' of the AR selector' if selector_probed else ''}): training accuracy at θ_0 → at "
        "the bottleneck",
    ]
    for s in cfg.seeds:
        r = probes[s]["result"]
        lines.append(
            f"- seed {s}: {100 * r['start_accuracy']:.1f}% → {100 * r['bottleneck_accuracy']:.1f}% at step "
            f"{r['bottleneck_step']}" + ("" if r["dip_found"] else " (no dip: continued anyway)")
        )
    if student_probes:
        lines += [
            "",
            f"Probe of the {objective.name} student itself (its SFT, {objective.samples_with}): training "
            "accuracy at θ_0 → lowest later",
        ]
        for s, r in student_probes.items():
            lines.append(
                f"- seed {s}: {100 * r['start_accuracy']:.1f}% → {100 * (r['bottleneck_accuracy'] or 0):.1f}% "
                f"at step {r['bottleneck_step']}" + ("" if r["dip_found"] else " (no dip)")
            )
    if diverged:
        lines += ["", "DIVERGED (train.stop_on_divergence=false; these rows come from diverged runs):"]
        for (s, m), d in sorted(diverged.items()):
            lines.append(
                f"- seed {s} {m}: loss {d['loss']:.4g} at step {d['step']}, up from {d['start_loss']:.4g} at step "
                f"{d['start_step']}"
            )
    md = "\n".join(lines) + "\n"
    summary = {
        "kind": "t3s-run",
        "t3s_version": __version__,
        "config": cfg.as_dict(),
        "eval_on": where,
        "k": k,
        "objective": objective.name,
        "student_probes": {
            str(s): {kk: r[kk] for kk in ("start_accuracy", "bottleneck_step", "bottleneck_accuracy", "dip_found")}
            for s, r in (student_probes or {}).items()
        },
        "seeds": cfg.seeds,
        "rows": rows,
        "diverged": [{"seed": s, "mode": m, **d} for (s, m), d in sorted((diverged or {}).items())],
        "probes": {
            str(s): {
                kk: probes[s]["result"][kk]
                for kk in ("start_accuracy", "bottleneck_step", "bottleneck_accuracy", "dip_found", "stopped_early")
            }
            for s in cfg.seeds
        },
        "sources": {
            "evaluations": "eval-base/ and seed-*/eval/*/metrics.json",
            "selections": "seed-*/selections/*/selection.json",
            "probes": "seed-*/probe/probe.json",
        },
        "markdown": md,
    }
    if write:
        write_summary(out, summary, "t3s run summary")
    return summary


def plan_stages(cfg: RunConfig, prefix: str = "") -> list[tuple[str, str]]:
    """Every stage of the run in the order `run` takes them, as (stage id, kind), without running anything. It
    assumes what only running tells: every probe finds a usable bottleneck and runs to its end. (A test holds it
    to the stages a real run records.)"""
    from t3s.objectives import objective_for

    if cfg.teachers:
        out: list[tuple[str, str]] = []
        for name, data in cfg.teachers.items():
            out += plan_stages(dataclasses.replace(cfg, teachers={}, train_data=data), f"teachers/{name}/")
        out.append(("mixture/data", "select"))
        for s in cfg.seeds:
            for mode in cfg.modes:
                if mode in SELECTION_MODES:
                    out.append((f"mixture/seed-{s}/select-{mode}", "select"))
                out += [(f"mixture/seed-{s}/train-{mode}", "train"), (f"mixture/seed-{s}/eval-{mode}", "eval")]
        return out
    own = not objective_for(cfg).needs_selector
    stages = []
    for s in cfg.seeds:
        stages.append((f"seed-{s}/probe", "probe"))
        if not own and cfg.probe_student:
            stages.append((f"seed-{s}/probe-student", "probe"))
    stages.append(("scores-init", "score"))
    for s in cfg.seeds:
        stages += [(f"seed-{s}/{scores_name(c, cfg.delta_step)}", "score") for c in checkpoints_read(cfg.modes)]
    stages += [(f"seed-{s}/select-{m}", "select") for s in cfg.seeds for m in cfg.modes if m in SELECTION_MODES]
    methods = [(s, m) for s in cfg.seeds for m in cfg.modes]
    stages += [(f"seed-{s}/train-{m}", "train") for s, m in methods if not (m == "sft" and own)]
    if cfg.rrt and own and "sft" in cfg.modes:
        stages += [(f"seed-{s}/rrt", "rrt") for s in cfg.seeds]
        methods += [(s, "rrt") for s in cfg.seeds]
    stages.append(("eval-base", "eval"))
    stages += [(f"seed-{s}/eval-{m}", "eval") for s, m in methods]
    return [(prefix + key, kind) for key, kind in stages]


def plan_text(cfg: RunConfig, out: Path, progress: bool = True) -> str:
    """`t3s run --plan`: the stages in order with the exact command of each, the launch, the global batch, the
    precision plan and, for a known model, the estimate. Runs and writes nothing."""
    import shlex

    from t3s.estimate import KNOWN, for_run
    from t3s.launch import Launch, accelerate_settings, one_process, resolve, stage_command
    from t3s.ledger import DISTRIBUTED_KINDS
    from t3s.models import default_device, training_plan

    launch: Launch = resolve(cfg.launch)
    t = cfg.train
    batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * launch.processes
    stages = plan_stages(cfg)
    lines = [f"t3s run --plan: {len(stages)} stages into {out} (nothing is run or written)"]
    if launch.kind == "none":
        lines.append("launch: every stage in this process (launch.num_processes: 1)")
    else:
        lines.append(
            f"launch: probe, score, train and eval under {launch.kind} on {launch.processes} process(es)"
            + (f" over {launch.nodes} nodes ({launch.per_node} each)" if launch.nodes > 1 else "")
            + (f", accelerate config {cfg.launch.config_file}" if cfg.launch.config_file else "")
            + "; select, rrt and the summary in this process"
        )
    steps = f"{t.max_steps} steps" if t.max_steps else f"{t.num_train_epochs:g} epoch(s)"
    lines.append(
        f"training: global batch {batch} = {t.per_device_train_batch_size} rows per device × "
        f"{t.gradient_accumulation_steps} accumulation step(s) × {launch.processes} process(es); {steps}; "
        f"lr {t.learning_rate:g}; seeds {cfg.seeds}; modes {', '.join(cfg.modes)}"
    )
    here = default_device()
    for where, plan in (
        (f"here ({here})", training_plan(t.dtype, here, pure_bf16=t.pure_bf16, lora=t.lora_r > 0)),
        ("on a bf16 GPU", training_plan(t.dtype, "cuda", pure_bf16=t.pure_bf16, lora=t.lora_r > 0, gpu_bf16=True)),
    ):
        lines.append(f"precision (train.dtype {t.dtype}) {where}: {plan.name}")
    zero = 0
    if cfg.launch.config_file:
        body = accelerate_settings(cfg.launch.config_file)
        zero = (
            3
            if body.get("distributed_type") == "FSDP"
            else int((body.get("deepspeed_config") or {}).get("zero_stage", 0))
        )
    setup = cfg.launch.config_file or launch.kind
    est = for_run(
        str(cfg.student),
        launch.processes,
        zero,
        setup,
        batch * t.max_steps if t.max_steps else None,
    )
    lines += [x.replace("# estimate:", "estimate:") for x in est or []]
    if est is None:
        lines.append(f"estimate: none for {cfg.student} (bench/estimate.py knows {', '.join(KNOWN)})")
    lines += ["", "stages, in order (assuming every probe finds a usable bottleneck):"]
    config = out / "config.yaml"
    for i, (sid, kind) in enumerate(stages, 1):
        lines.append(f"{i:3d}. {sid}  [{kind}]")
        if launch.kind == "none" or kind not in DISTRIBUTED_KINDS:
            lines.append("       in this process")
            continue
        by_hand = launch.nodes > 1 and not cfg.launch.prefix and not one_process(kind, cfg)
        for rank in range(launch.nodes if by_hand else 1):
            cmd = stage_command(launch, kind, cfg, config, out, sid, not progress, node_rank=rank if by_hand else None)
            lines.append(f"       {'node ' + str(rank) + ': ' if by_hand else ''}{shlex.join(cmd)}")
    lines += [
        "",
        f"The commands read {config}, which `t3s run` writes first; each stage's logs go to {out}/logs/STAGE/.",
    ]
    return "\n".join(lines) + "\n"


def main_run(
    config_path: str,
    out: str | None,
    overrides: list[str],
    force: list[str],
    progress: bool,
    stage: str | None = None,
    plan: bool = False,
) -> int:
    from t3s.config import load_config, read_resolved

    target = out or Path(config_path).with_suffix("").name
    if out is None:
        target = str(Path("runs") / target)
    if stage is not None:  # one stage's own process: it reads the run's resolved config, as the orchestrator wrote it
        own = Path(target) / "config.yaml"
        if not own.exists() or Path(config_path).resolve() != own.resolve() or overrides:
            raise T3SError(
                f"--stage reads the run's own config: `t3s run {own} --out {target} --stage {stage}` without "
                "overrides (`t3s run CONFIG --plan` prints every stage's command; `t3s run` writes that file)"
            )
        cfg = read_resolved(own)
    else:
        cfg = load_config(config_path, overrides, flat=())
    if plan:
        print(plan_text(cfg, Path(target), progress), end="")
        return 0
    if stage is not None:
        try:
            run(cfg, target, force=tuple(force), progress=progress, stage=stage)
        except StageDone:
            return 0
        raise T3SError(f"--stage {stage}: not reached")  # `Ledger.end` raises first; kept as a guard
    summary, code = run(cfg, target, force=tuple(force), progress=progress)
    if code == 0:
        print("\n" + summary["markdown"])
        print(f"run directory: {target} (summary.md, summary.json, run.log)")
    else:
        print(summary["stopped"], file=sys.stderr)
    return code
