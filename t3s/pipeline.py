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
from typing import TYPE_CHECKING, Any

from t3s import T3SError, __version__
from t3s.ledger import Ledger, PlanLedger, Session, StageDone
from t3s.modes import keeps_all_checkpoints
from t3s.stages import Run, eval_stages, probe_stages, rrt_stages, score_stages, select_stages, train_stages
from t3s.summary import base_row, method_row, table, write_summary
from t3s.verdict import Verdict, probe_verdict

if TYPE_CHECKING:
    from t3s.config import RunConfig
    from t3s.objectives import Objective

NO_DIP_EXIT = 3


def run(
    cfg: RunConfig,
    out: str | Path,
    *,
    force: tuple[str, ...] = (),
    progress: bool = True,
    stage: str | None = None,
    verdict: bool = False,
) -> tuple[dict, int]:
    """Run (or resume) the method: a single-teacher run, or with `teachers:` a teacher mixture. Returns
    (summary, exit code). With a launcher (`launch`), the distributed stages run as their own processes
    (`t3s.launch`); `stage`: be one of those, run that stage only (it raises `StageDone`). `verdict`: run the
    probes alone and say whether T3S is expected to pay (`run_verdicts`; a later full run reuses the probes)."""
    from t3s.graders import grader
    from t3s.launch import StageRunner, resolve
    from t3s.objectives import objective_for

    launch = resolve(cfg.launch)  # a bad launch setting stops the run here, before any stage
    grader(cfg.eval.grader, cfg.eval.fallback)  # so does a user grader that does not import
    objective_for(cfg)  # and a run the student's objective cannot carry out (Objective.check)
    session = Session(Path(out), target=stage, processes=launch.processes)
    ledger = Ledger(session.root, force, session)
    if stage is None:
        ledger.write_config(cfg)  # what the stages' own processes read
        if launch.kind != "none":
            session.runner = StageRunner(cfg, session.root, progress, ledger.log)
            ledger.log(
                f"launch: probe, score, train and eval under {launch.kind} on {launch.processes} process(es)"
                + (f" over {launch.nodes} nodes" if launch.nodes > 1 else "")
                + "; select, rrt and the summary here"
            )
    if verdict:
        return run_verdicts(cfg, ledger, progress), 0
    summary, code = (run_mixture if cfg.teachers else run_single)(cfg, ledger, progress)
    if code == 0 and stage is None:  # the results table to report_to's trackers (t3s.trackers)
        from t3s.trackers import log_summary

        sent = log_summary(cfg.train.report_to, session.root, summary)
        if sent:
            Ledger(session.root, (), session, clean=False).log(f"summary sent to {', '.join(sent)}")
    return summary, code


def run_mixture(cfg: RunConfig, ledger: Ledger | PlanLedger, progress: bool = True) -> tuple[dict, int]:
    """Every teacher alone (an ordinary run each, sharing the base model's evaluation), then the mixtures."""
    from t3s.mixture import check_mixture, train_mixtures

    check_mixture(cfg)
    names = list(cfg.teachers)
    ledger.log(f"teacher mixture of {', '.join(names)}: each teacher alone, then the mixtures")
    subs = {}
    for name in names:
        sub = dataclasses.replace(cfg, teachers={}, train_data=cfg.teachers[name])
        where = ledger.out / "teachers" / name
        ledger.log(f"teacher {name}: run in {where}")
        sub_ledger = ledger.sub(where)
        if name != names[0] and sub_ledger.adopt(ledger.out / "teachers" / names[0], "eval-base", "eval", "eval-base"):
            ledger.log(f"teacher {name}: the base model's evaluation is shared from teacher {names[0]}")
        summary, code = run_single(sub, sub_ledger, progress)
        if code != 0:
            return {**summary, "stopped": f"teacher {name}: {summary['stopped']}"}, code
        subs[name] = summary
    return train_mixtures(cfg, ledger, subs, progress), 0


def run_single(cfg: RunConfig, ledger: Ledger | PlanLedger, progress: bool = True) -> tuple[dict, int]:
    """The single-teacher pipeline (see the module docstring), one stage builder after another
    (`t3s.stages`). Returns (summary, exit code); with a `PlanLedger` it only lists the stages."""
    from t3s.models import resolve_model_path
    from t3s.objectives import objective_for

    if not cfg.student or not cfg.train_data:
        raise T3SError("the config needs `student` (θ_0) and `train_data` (or `teachers` for a mixture)")
    objective = objective_for(cfg)
    selector = objective.selector(cfg)  # the model whose probe and scores give Δc
    cfg = as_run(cfg)
    if cfg.rrt and selector.is_student and not ledger.planning and not Path(resolve_model_path(cfg.student)).is_dir():
        raise T3SError(
            f"rrt needs the student as a local directory ({cfg.student} is not); download it first or set rrt: false"
        )
    run = Run(cfg, ledger, objective, selector, progress)
    ledger.write_config(cfg)
    ledger.log(f"t3s {__version__} run in {ledger.out}: modes {', '.join(cfg.modes)}; seeds {cfg.seeds}")
    if not cfg.eval_data:
        ledger.log("no eval_data: the summary reports accuracy on the training prompts")
    elif not ledger.planning:
        run.eval_rows  # noqa: B018 (a malformed eval file stops the run here, before hours of probe and training)

    probes, student_probes = probe_stages(run)
    verdicts = seed_verdicts(run, probes)  # will T3S pay? from the probes alone, before any mode trains
    unusable = [s for s in cfg.seeds if not probes[s]["result"]["usable"]]
    if unusable:
        return stop_after_the_probe(ledger, probes, unusable), NO_DIP_EXIT
    scores = score_stages(run, probes)
    sels = select_stages(run, probes, scores)
    models, diverged = train_stages(run, probes, sels)
    rrt_stages(run, probes, models)
    evals = eval_stages(run, models)
    if ledger.planning:
        return {}, 0

    summary = summarize(
        cfg,
        objective,
        ledger.out,
        probes,
        sels,
        evals,
        eval_on_train=not cfg.eval_data,
        student_probes=student_probes,
        selector_probed=not selector.is_student,
        write=ledger.end(),
        diverged=diverged,
        verdicts=verdicts,
    )
    ledger.log("summary:\n" + summary["markdown"], console=False)
    return summary, 0


def as_run(cfg: RunConfig) -> RunConfig:
    """The config as the run's stages read it: t3s-early, t3s-step and t3s-recovery score an evaluated checkpoint
    other than θ_b, so the probe keeps them all (`probe.keep_all`, part of the probe's fingerprint)."""
    if keeps_all_checkpoints(cfg.modes) and not cfg.probe.keep_all:
        return dataclasses.replace(cfg, probe=dataclasses.replace(cfg.probe, keep_all=True))
    return cfg


def seed_verdicts(run: Run, probes: dict) -> dict[int, Verdict]:
    """Per seed, the verdict of its probe (`t3s.verdict`), logged; none in a plan or a stage's own process."""
    if not run.ledger.summarises:
        return {}
    where = "" if run.selector.is_student else " (from the selector's probe)"
    out = {}
    for s, rec in probes.items():
        try:
            out[s] = probe_verdict(run.out / f"seed-{s}" / "probe", rec["result"], run.cfg.threshold)
        except T3SError as e:  # the verdict informs; a probe whose files are gone still leaves a usable run
            run.log(f"seed {s}: no verdict: {e}")
            continue
        run.log(f"seed {s}: verdict{where}: {out[s].line()}")
    return out


def verdict_lines(verdicts: dict[int, Verdict]) -> list[str]:
    """The summary's verdict section (Markdown)."""
    if not verdicts:
        return []
    lines = ["", 'Verdict, from the probe before any mode trained (docs/method.md, "Will T3S pay on this run?"):']
    return lines + [f"- seed {s}: **{v.headline}** ({v.reason()})" for s, v in verdicts.items()]


def run_verdicts(cfg: RunConfig, ledger: Ledger, progress: bool = True) -> dict[str, Any]:
    """`t3s run --verdict`: the probes alone (the stages a full run starts with: it reuses them), then each seed's
    verdict, in verdict.md and verdict.json (and per teacher for a mixture). Returns the record."""
    from t3s.artifacts import write_json
    from t3s.objectives import objective_for

    if cfg.teachers:
        parts = {
            name: run_verdicts(
                dataclasses.replace(cfg, teachers={}, train_data=path),
                ledger.sub(ledger.out / "teachers" / name),
                progress,
            )
            for name, path in cfg.teachers.items()
        }
        md = "\n".join(f"## teacher {name}\n\n{p['markdown']}" for name, p in parts.items())
        record = {"kind": "t3s-verdict", "teachers": parts, "markdown": md}
    else:
        objective = objective_for(cfg)
        cfg = as_run(cfg)
        run = Run(cfg, ledger, objective, objective.selector(cfg), progress)
        verdicts = seed_verdicts(run, probe_stages(run)[0])
        md = "\n".join(verdict_lines(verdicts)).lstrip("\n") + "\n"
        record = {
            "kind": "t3s-verdict",
            "t3s_version": __version__,
            "verdicts": {str(s): v.as_dict() for s, v in verdicts.items()},
            "markdown": md,
        }
    if ledger.summarises:
        write_json(ledger.out / "verdict.json", record)
        tmp = ledger.out / ".verdict.md.tmp"
        tmp.write_text("# t3s run --verdict\n\n" + md, encoding="utf-8")
        tmp.replace(ledger.out / "verdict.md")
    return record


def stop_after_the_probe(ledger: Ledger, probes: dict, unusable: list[int]) -> dict[str, Any]:
    """The summary of a run that stops because a seed's probe found no usable bottleneck."""
    msg = (
        f"stopped after the probe: no usable bottleneck for seed(s) {unusable}. "
        + probes[unusable[0]]["result"]["message"]
    )
    summary = {
        "kind": "t3s-run",
        "stopped": msg,
        "probes": {s: r["result"] for s, r in probes.items()},
        "markdown": f"**{msg}**\n",
    }
    if ledger.end():
        write_summary(ledger.out, summary, "t3s run")
    ledger.log(msg)
    return summary


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
    verdicts: dict[int, Verdict] | None = None,
) -> dict[str, Any]:
    """The comparison table: every number is read from the eval/selection/probe records of this run.
    `diverged`: {(seed, mode): divergence record} of training runs whose loss diverged and that trained on.
    `verdicts`: each seed's verdict (`t3s.verdict`), from its probe."""
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
    lines += verdict_lines(verdicts or {})
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
        "verdicts": {str(s): v.as_dict() for s, v in (verdicts or {}).items()},
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


def plan_stages(cfg: RunConfig) -> list[tuple[str, str]]:
    """Every stage of the run in the order `run` takes them, as (stage id, kind), without running or writing
    anything: the pipeline itself, with a ledger that lists its stages (`t3s.ledger.PlanLedger`). It assumes
    what only running tells: every probe finds a usable bottleneck and runs to its end."""
    ledger = PlanLedger(Path("."))
    (run_mixture if cfg.teachers else run_single)(cfg, ledger, progress=False)
    return ledger.stages


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
    d = cfg.diffusion  # a diffusion student's sampler (for_run reads it only for a recipe that samples so)
    sampler = {"block_length": d.block_length, "attention": d.attention, "cache": d.cache}
    sampler["commit_threshold"] = d.commit_threshold
    est = for_run(
        str(cfg.student),
        launch.processes,
        zero,
        setup,
        batch * t.max_steps if t.max_steps else None,
        sampler,
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
    verdict: bool = False,
) -> int:
    from t3s.config import load_config, read_resolved
    from t3s.objectives import objective_for

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
        try:  # the objective's checks of the run, with the file they are about (`run` repeats them)
            objective_for(cfg)
        except T3SError as e:
            raise T3SError(f"{config_path}: {e}") from None
    if plan:
        print(plan_text(cfg, Path(target), progress), end="")
        return 0
    if stage is not None:
        try:
            run(cfg, target, force=tuple(force), progress=progress, stage=stage)
        except StageDone:
            return 0
        raise T3SError(f"--stage {stage}: not reached")  # `Ledger.end` raises first; kept as a guard
    if verdict:
        record, _ = run(cfg, target, force=tuple(force), progress=progress, verdict=True)
        print("\n" + record["markdown"])
        print(f"verdict: {target}/verdict.md (`t3s run` without --verdict trains every mode, reusing the probes)")
        return 0
    summary, code = run(cfg, target, force=tuple(force), progress=progress)
    if code == 0:
        print("\n" + summary["markdown"])
        print(f"run directory: {target} (summary.md, summary.json, run.log)")
    else:
        print(summary["stopped"], file=sys.stderr)
    return code
