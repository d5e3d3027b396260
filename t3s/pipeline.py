"""`t3s run CONFIG.yaml`: the whole method from one config.

For every seed: probe (plain SFT with evaluation; its end point is that seed's `sft` result) → score θ_0 and
θ_b → select for each masked mode → train each mode from θ_0 with the same budget → RRT from the SFT run →
evaluate the base model and every result → one summary table (Markdown and JSON).

`objective: diffusion` (a masked-diffusion student): the probe, the scores and Δc come from the AR `selector`;
the selections are forced sets (`t3s`, `random`; `sft` has none); every mode trains the student with the
diffusion objective; evaluation uses the diffusion sampler; no RRT. `probe_student: true` also probes the student.

Resumable: each stage writes its outputs atomically and then a record under `stages/` with a fingerprint of
its config and inputs (including when each input was produced). A rerun skips every stage whose record matches;
a stage interrupted midway has no record and is redone from scratch; `--force KIND` redoes every stage of that
kind and, because their outputs are newly produced, everything downstream.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from t3s import T3SError, __version__
from t3s.artifacts import read_json, sha256_json, write_json
from t3s.modes import SELECTION_MODES

STAGE_KINDS = ("probe", "score", "select", "train", "rrt", "eval")
MASKED_MODES = SELECTION_MODES  # the modes that need a selection
# the scores each control needs besides θ_0's and θ_b's: θ_T (the probe's end point), a checkpoint before θ_b
NEEDS_FINAL = ("t3s-final", "excess-loss")
NEEDS_EARLY = ("t3s-early",)
NO_DIP_EXIT = 3


class Pipeline:
    def __init__(self, out: Path, force: set[str]):
        self.out, self.force = out, force
        self.logfile = out / "run.log"

    def log(self, msg: str, console: bool = True) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if console:
            print(line, flush=True)
        with self.logfile.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def stage(self, key: str, kind: str, path: Path, inputs: dict[str, Any], fn: Callable[[Path], Any]) -> dict:
        """Run `fn(path)` unless a matching record says it is done. Returns the stage record."""
        fp = sha256_json({"key": key, "inputs": inputs, "t3s": __version__})
        rec_path = self.out / "stages" / (key.replace("/", "__") + ".json")
        if kind not in self.force and rec_path.exists() and path.exists():
            rec = read_json(rec_path)
            if rec.get("fingerprint") == fp:
                self.log(f"{key}: done earlier, skipped")
                return rec
        rec_path.unlink(missing_ok=True)
        self.log(f"{key}: running")
        t0 = time.perf_counter()
        result = fn(path)
        rec = {"key": key, "kind": kind, "path": str(path.relative_to(self.out)), "fingerprint": fp,
               "produced": uuid.uuid4().hex, "seconds": time.perf_counter() - t0, "result": result}
        write_json(rec_path, rec)
        self.log(f"{key}: finished in {rec['seconds']:.1f}s")
        return rec


def early_checkpoint(probe_dir: Path, bottleneck_step: int) -> Path:
    """The probe's evaluated checkpoint closest to half the bottleneck step (strictly between 0 and it): the
    `t3s-early` control's θ_b."""
    found = {int(p.name.split("-")[1]): p for p in (probe_dir / "checkpoints").glob("step-*") if p.is_dir()}
    before = [k for k in found if 0 < k < bottleneck_step]
    if not before:
        raise T3SError(f"{probe_dir}: t3s-early needs an evaluated checkpoint before the bottleneck (step "
                       f"{bottleneck_step}); evaluate more often (probe.eval_every)")
    return found[min(before, key=lambda k: (abs(k - bottleneck_step / 2), k))]


def _clean_stale(out: Path) -> None:
    """Temporary files and directories left by a run that was killed (atomic writes that never finished)."""
    for p in [*out.rglob(".*.tmp"), *out.rglob(".*.old"), *out.rglob(".*.tmp.png")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _data_fp(path: str, need_response: bool) -> str:
    from t3s.data import data_fingerprint, load_rows

    return data_fingerprint(load_rows(path, need_response=need_response, need_answer=not need_response))


def run(cfg: Any, out: str | Path, *, force: tuple[str, ...] = (), progress: bool = True) -> tuple[dict, int]:
    """Run (or resume) the pipeline. Returns (summary, exit code)."""
    from t3s.models import model_fingerprint, resolve_model_path
    from t3s.probe import run_probe, tracking_callback
    from t3s.rrt import rrt
    from t3s.score import load_scores, run_score
    from t3s.select import select, select_forced, summary_line, write_selection
    from t3s.train import config_for_mode, plan_for, prepare, train

    bad = set(force) - set(STAGE_KINDS)
    if bad:
        raise T3SError(f"--force takes stage kinds {', '.join(STAGE_KINDS)}; got {', '.join(sorted(bad))}")
    if cfg.teachers:  # the debiased teacher mixture: one run per teacher, then the mixtures
        from t3s.mixture import run_mixture

        return run_mixture(cfg, out, force, progress)
    if not cfg.student or not cfg.train_data:
        raise T3SError("the config needs `student` (θ_0) and `train_data` (or `teachers` for a mixture)")
    diffusion = cfg.diffusion if cfg.objective == "diffusion" else None
    if diffusion is not None and not cfg.selector:
        raise T3SError("objective: diffusion needs `selector`: an autoregressive model (ideally with the student's "
                       "tokenizer) whose probe and scores give Δc")
    if any(m in NEEDS_EARLY for m in cfg.modes) and not cfg.probe.keep_all:
        # t3s-early scores an evaluated checkpoint before the bottleneck: the probe keeps them all
        cfg = dataclasses.replace(cfg, probe=dataclasses.replace(cfg.probe, keep_all=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    if cfg.rrt and diffusion is None and not Path(resolve_model_path(cfg.student)).is_dir():
        raise T3SError(f"rrt needs the student as a local directory ({cfg.student} is not); download it first "
                       "or set rrt: false")
    p = Pipeline(out, set(force))
    tmp = out / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
    tmp.replace(out / "config.yaml")
    p.log(f"t3s {__version__} run in {out}: modes {', '.join(cfg.modes)}; seeds {cfg.seeds}")

    student, train_data, eval_data = cfg.student, cfg.train_data, cfg.eval_data or cfg.train_data
    base = {"student": model_fingerprint(student), "train_data": _data_fp(train_data, True),
            "render": dataclasses.asdict(cfg.render)}
    # the model whose probe and scores give Δc: the student itself, or a diffusion student's AR selector
    selector = cfg.selector if diffusion is not None else student
    sel_base = base if diffusion is None else {**base, "student": model_fingerprint(selector)}
    dif_in = None if diffusion is None else dataclasses.asdict(diffusion)
    eval_fp = _data_fp(eval_data, False)
    if not cfg.eval_data:
        p.log("no eval_data: the summary reports accuracy on the training prompts")
    train_cfg = {s: dataclasses.replace(cfg.train, seed=s) for s in cfg.seeds}
    probe_cfg = {s: dataclasses.replace(cfg.selector_train_config() if diffusion else cfg.train, seed=s)
                 for s in cfg.seeds}
    # the generation settings the probe (and the tracking of every mode) reads: greedy unless probe.k > 1
    probe_gen = {k: getattr(cfg.eval, k) for k in ("max_new_tokens", "batch_size", "fallback", "model_defaults")}
    if cfg.probe.k > 1:
        probe_gen.update(temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, seed=cfg.eval.seed)
    probe_keys = {k: v for k, v in dataclasses.asdict(cfg.probe).items() if not k.startswith("track_")}
    track_in = None
    if cfg.probe.track_every > 0:
        track_in = {"every": cfg.probe.track_every, "subset": cfg.probe.track_subset, "gen": probe_gen,
                    **{k: probe_keys[k] for k in ("subset_seed", "k", "markers")}}

    # 1. probes (one per seed; each is that seed's SFT run of the student, or of the diffusion student's selector)
    probes, student_probes = {}, {}
    for s in cfg.seeds:
        scfg = dataclasses.replace(cfg, train=probe_cfg[s])
        probes[s] = p.stage(
            f"seed-{s}/probe", "probe", out / f"seed-{s}" / "probe",
            {**sel_base, "train": dataclasses.asdict(probe_cfg[s]), "probe": probe_keys, "gen": probe_gen,
             "heldout": eval_fp if cfg.eval_data else None},
            lambda path, scfg=scfg: run_probe(selector, train_data, path, scfg, heldout_path=cfg.eval_data,
                                              overwrite=True, progress=progress, log=p.log),
        )
        if diffusion is not None and cfg.probe_student:  # does the diffusion student itself show the shock?
            scfg = dataclasses.replace(cfg, train=train_cfg[s])
            student_probes[s] = p.stage(
                f"seed-{s}/probe-student", "probe", out / f"seed-{s}" / "probe-student",
                {**base, "train": dataclasses.asdict(train_cfg[s]), "probe": probe_keys, "gen": probe_gen,
                 "heldout": eval_fp if cfg.eval_data else None, "diffusion": dif_in},
                lambda path, scfg=scfg: run_probe(student, train_data, path, scfg, heldout_path=cfg.eval_data,
                                                  overwrite=True, progress=progress, log=p.log, diffusion=diffusion),
            )["result"]
            r = student_probes[s]
            p.log(f"seed {s}: diffusion student probe: training accuracy {100 * r['start_accuracy']:.1f}% -> "
                  f"lowest {100 * (r['bottleneck_accuracy'] or 0):.1f}% at step {r['bottleneck_step']}"
                  + ("" if r["dip_found"] else " (no dip)"))
        r = probes[s]["result"]
        if r["dip_found"]:
            p.log(f"seed {s}: bottleneck at step {r['bottleneck_step']}: training accuracy "
                  f"{100 * r['start_accuracy']:.1f}% -> {100 * r['bottleneck_accuracy']:.1f}%")
        else:
            p.log(f"seed {s}: {r['message']}")
    unusable = [s for s in cfg.seeds if not probes[s]["result"]["usable"]]
    if unusable:
        msg = (f"stopped after the probe: no usable bottleneck for seed(s) {unusable}. "
               + probes[unusable[0]]["result"]["message"])
        summary = {"kind": "t3s-run", "stopped": msg, "probes": {s: probes[s]["result"] for s in cfg.seeds}}
        write_json(out / "summary.json", summary)
        tmp = out / ".summary.md.tmp"
        tmp.write_text(f"# t3s run\n\n**{msg}**\n")
        tmp.replace(out / "summary.md")
        p.log(msg)
        return summary, NO_DIP_EXIT

    # 2. scores: θ_0 once, θ_b per seed
    score_in = {**sel_base, "score": dataclasses.asdict(cfg.score)}
    init_scores = p.stage("scores-init", "score", out / "scores-init", score_in,
                          lambda path: run_score(selector, train_data, path, cfg.render, cfg.score,
                                                 overwrite=True, progress=progress))
    b_scores, bottleneck = {}, {}
    for s in cfg.seeds:
        bottleneck[s] = str(out / f"seed-{s}" / "probe" / "bottleneck")
        b_scores[s] = p.stage(
            f"seed-{s}/scores-bottleneck", "score", out / f"seed-{s}" / "scores-bottleneck",
            {**score_in, "probe": probes[s]["produced"]},
            lambda path, s=s: run_score(bottleneck[s], train_data, path, cfg.render, cfg.score,
                                        overwrite=True, progress=progress),
        )

    # 2b. the controls' scores: θ_T (t3s-final, excess-loss) and a checkpoint halfway to θ_b (t3s-early)
    other_scores: dict[tuple[int, str], dict] = {}
    for s in cfg.seeds:
        r = probes[s]["result"]
        if any(m in NEEDS_FINAL for m in cfg.modes):
            if not r["completed"]:
                raise T3SError(f"seed {s}: modes {', '.join(m for m in cfg.modes if m in NEEDS_FINAL)} need the probe's "
                               "end point θ_T, but the probe stopped early (probe.online); set probe.online: false")
            other_scores[(s, "final")] = p.stage(
                f"seed-{s}/scores-final", "score", out / f"seed-{s}" / "scores-final",
                {**score_in, "probe": probes[s]["produced"]},
                lambda path, s=s: run_score(str(out / f"seed-{s}" / "probe" / "final"), train_data, path,
                                            cfg.render, cfg.score, overwrite=True, progress=progress))
        if any(m in NEEDS_EARLY for m in cfg.modes):
            early = early_checkpoint(out / f"seed-{s}" / "probe", r["bottleneck_step"])
            other_scores[(s, "early")] = p.stage(
                f"seed-{s}/scores-early", "score", out / f"seed-{s}" / "scores-early",
                {**score_in, "probe": probes[s]["produced"]},
                lambda path, early=early: run_score(str(early), train_data, path, cfg.render, cfg.score,
                                                    overwrite=True, progress=progress))

    # 3. selections (keep-masks; for a diffusion student, forced sets)
    project = None if diffusion is None else _projector(selector, student, train_data, cfg.render, p.log,
                                                               cfg.train.trust_remote_code)
    sels: dict[tuple[int, str], dict] = {}
    for s in cfg.seeds:
        for mode in cfg.modes:
            if mode not in MASKED_MODES or (diffusion is not None and mode == "sft"):
                continue

            def do_select(path: Path, s: int = s, mode: str = mode) -> dict:
                init, bn = load_scores(out / "scores-init"), load_scores(out / f"seed-{s}" / "scores-bottleneck")
                step = probes[s]["result"]["bottleneck_step"]
                if mode == "t3s-final":  # the t3s rule at θ_T instead of θ_b
                    bn, step = load_scores(out / f"seed-{s}" / "scores-final"), None
                elif mode == "t3s-early":  # ... at the checkpoint halfway to θ_b
                    bn, step = load_scores(out / f"seed-{s}" / "scores-early"), None
                ref = load_scores(out / f"seed-{s}" / "scores-final") if mode == "excess-loss" else None
                if diffusion is None:
                    sel = select(init, bn, mode, cfg.threshold, seed=s, bottleneck_step=step, reference=ref)
                else:
                    sel = select_forced(init, bn, mode, diffusion.tau, seed=s, bottleneck_step=step,
                                        project=project)
                write_selection(sel, path, overwrite=True)
                p.log(f"seed {s}: {summary_line(sel.meta)}")
                return {"stats": sel.meta["stats"]}

            sels[(s, mode)] = p.stage(
                f"seed-{s}/select-{mode}", "select", out / f"seed-{s}" / "selections" / mode,
                {"init": init_scores["produced"], "bottleneck": b_scores[s]["produced"], "mode": mode,
                 "threshold": cfg.threshold,  # the other scores only where this mode reads them
                 **{f"scores-{k}": other_scores[(s, k)]["produced"] for k, needs in
                    (("final", NEEDS_FINAL), ("early", NEEDS_EARLY)) if mode in needs}, "diffusion": None if diffusion is None else
                 {"tau": diffusion.tau, "student": base["student"]}}, do_select)

    # 4. training (same budget for every mode; `sft` is the probe's own end point when the probe ran to the end)
    models: dict[tuple[int, str], tuple[str, str]] = {}  # (seed, method) -> (model path, produced)
    for s in cfg.seeds:
        for mode in cfg.modes:
            probe_res = probes[s]["result"]
            if mode == "sft" and probe_res["completed"] and diffusion is None:
                models[(s, mode)] = (str(out / f"seed-{s}" / "probe" / "final"), probes[s]["produced"])
                continue
            sel_rec = sels.get((s, mode))
            mode_cfg = config_for_mode(train_cfg[s], mode)

            def do_train(path: Path, s: int = s, mode: str = mode, mode_cfg=mode_cfg) -> dict:
                sel_path = None if sel_rec is None else str(out / f"seed-{s}" / "selections" / mode)
                data = prepare(student, train_data, mode_cfg, cfg.render, sel_path, diffusion)  # rendered once
                callbacks = []
                if cfg.probe.track_every > 0:  # accuracy along the way, like the probe's (on the training prompts)
                    tcfg = dataclasses.replace(cfg, train=mode_cfg)
                    callbacks.append(tracking_callback(
                        path, data, tcfg, plan_for(mode_cfg).inference(), mode_cfg.max_steps, progress,
                        log=lambda m, mode=mode, s=s: p.log(f"seed {s} {mode}: {m}")))
                return _slim(train(student, train_data, path, mode_cfg, cfg.render, sel_path, overwrite=True,
                                   progress=progress, callbacks=callbacks, data=data, diffusion=diffusion))

            rec = p.stage(
                f"seed-{s}/train-{mode}", "train", out / f"seed-{s}" / "train" / mode,
                {**base, "train": dataclasses.asdict(mode_cfg), "track": track_in, "diffusion": dif_in,
                 "selection": None if sel_rec is None else sel_rec["produced"]},
                do_train,
            )
            models[(s, mode)] = (str(out / f"seed-{s}" / "train" / mode / "model"), rec["produced"])

    # 5. RRT from each seed's SFT run and its own bottleneck
    if cfg.rrt and diffusion is not None:
        p.log("rrt is defined for the autoregressive path (it needs the student's own bottleneck); skipped")
    elif cfg.rrt:
        for s in cfg.seeds:
            if (s, "sft") not in models:
                p.log("rrt needs the sft mode; skipped")
                break
            final, produced = models[(s, "sft")]
            rec = p.stage(f"seed-{s}/rrt", "rrt", out / f"seed-{s}" / "rrt",
                          {"student": base["student"], "probe": probes[s]["produced"], "final": produced},
                          lambda path, final=final, s=s: rrt(student, bottleneck[s], final, path, overwrite=True,
                                                             progress=progress))
            models[(s, "rrt")] = (str(out / f"seed-{s}" / "rrt"), rec["produced"])

    # 6. evaluation of the base model and every result
    evaluator = _evaluator(cfg, p, eval_data, progress)
    ev_in = {"eval": dataclasses.asdict(cfg.eval), "data": eval_fp, "render": base["render"], "diffusion": dif_in}
    evals: dict[tuple[int | None, str], dict] = {
        (None, "base"): p.stage("eval-base", "eval", out / "eval-base", {**ev_in, "model": base["student"]},
                                evaluator(student, "base"))["result"]}
    for (s, method), (path, produced) in models.items():
        evals[(s, method)] = p.stage(f"seed-{s}/eval-{method}", "eval", out / f"seed-{s}" / "eval" / method,
                                     {**ev_in, "model": produced}, evaluator(path, f"seed {s} {method}"))["result"]

    summary = summarize(cfg, out, probes, sels, evals, eval_on_train=not cfg.eval_data,
                        student_probes=student_probes)
    p.log("summary:\n" + summary["markdown"], console=False)
    return summary, 0


def _evaluator(cfg: Any, p: Pipeline, eval_data: str, progress: bool) -> Callable[[str, str], Callable[[Path], dict]]:
    """evaluator(model_path, name) -> a stage function that evaluates the model on `eval_data` into its path."""
    from t3s.data import load_rows
    from t3s.evaluate import evaluate_model, format_metrics, write_eval
    from t3s.models import describe, device_info, load_causal_lm, load_tokenizer, resolve_precision

    precision = resolve_precision(cfg.eval.dtype)
    p.log(f"evaluation {describe(precision)}")
    eval_rows = load_rows(eval_data, need_response=False, need_answer=True)
    diffusion = cfg.diffusion if cfg.objective == "diffusion" else None

    def evaluator(model_path: str, name: str) -> Callable[[Path], dict]:
        def fn(path: Path) -> dict:
            tok = load_tokenizer(model_path, cfg.train.trust_remote_code)
            if diffusion is None:
                model = load_causal_lm(model_path, precision, cfg.train.trust_remote_code)
            else:
                from t3s.diffusion import load_mask_predictor

                model = load_mask_predictor(model_path, precision, cfg.train.trust_remote_code)
            samples = evaluate_model(model, tok, eval_rows, cfg.render, cfg.eval, precision, progress,
                                     desc=f"eval {name}", diffusion=diffusion)
            m = write_eval(path, samples, {"model": model_path, "data": eval_data,
                                           "generation": dataclasses.asdict(cfg.eval), "precision": precision.name,
                                           "device": device_info(precision.device)},
                           overwrite=True)
            p.log(f"{name}: {format_metrics(m['metrics'])}")
            return m["metrics"]

        return fn

    return evaluator


def _projector(selector: str, student: str, data: str, rcfg: Any, log: Callable[[str], None],
               trust_remote_code: bool = False):
    """None when the selector and the student tokenize alike (Δc applies as is), else the offset projection."""
    from t3s.data import load_rows, tokenizer_fingerprint
    from t3s.diffusion import projector
    from t3s.models import load_tokenizer

    sel_tok, stu_tok = load_tokenizer(selector, trust_remote_code), load_tokenizer(student, trust_remote_code)
    if tokenizer_fingerprint(sel_tok) == tokenizer_fingerprint(stu_tok):
        return None
    log("the selector's tokenizer differs from the student's: Δc is projected onto the student's tokens through "
        "character offsets (minimum over overlapping selector tokens)")
    return projector(load_rows(data), stu_tok, sel_tok, rcfg)


def _slim(summary: dict) -> dict:
    return {k: summary.get(k) for k in ("global_step", "train_loss", "kept_tokens", "forced_tokens", "response_tokens",
                                        "train_seconds")}


def _ms(xs: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def _pct(mean: float, sd: float | None) -> str:
    return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def summarize(cfg: Any, out: Path, probes: dict, sels: dict, evals: dict, eval_on_train: bool,
              student_probes: dict | None = None) -> dict[str, Any]:
    """The comparison table: every number is read from the eval/selection/probe records of this run."""
    base = evals[(None, "base")]
    diffusion = cfg.objective == "diffusion"
    frac = "forced_fraction" if diffusion else "dropped_fraction"  # what a selection does to the loss
    methods = [m for m in ("sft", *[x for x in cfg.modes if x != "sft"], "rrt")
               if any((s, m) in evals for s in cfg.seeds)]
    rows = [{"method": "base", "accuracy": base["accuracy"], "accuracy_sd": None, "delta": 0.0,
             "pass_at_k": base["pass_at_k"], "mean_tokens": base["mean_tokens"], frac: None,
             "per_seed": {}}]
    for m in methods:
        per = {s: evals[(s, m)] for s in cfg.seeds if (s, m) in evals}
        acc, sd = _ms([v["accuracy"] for v in per.values()])
        drop = [sels[(s, m)]["result"]["stats"][frac] for s in per if (s, m) in sels]
        rows.append({
            "method": m, "accuracy": acc, "accuracy_sd": sd, "delta": acc - base["accuracy"],
            "pass_at_k": statistics.fmean(v["pass_at_k"] for v in per.values()),
            "mean_tokens": statistics.fmean(v["mean_tokens"] for v in per.values() if v["mean_tokens"] is not None),
            frac: statistics.fmean(drop) if drop else (0.0 if m in ("sft", "dft") else None),
            "per_seed": {str(s): v["accuracy"] for s, v in per.items()},
        })
    k = base["k"]
    where = "training prompts" if eval_on_train else "held-out prompts"
    col = "forced (always masked) tokens %" if diffusion else "dropped tokens %"
    lines = [f"Accuracy (avg@{k}) on the {where}, mean ± sd over seeds {cfg.seeds}."
             + (" Diffusion student, diffusion sampler; Δc from the AR selector." if diffusion else ""), "",
             f"| method | accuracy % | Δ vs base | pass@{k} % | mean tokens | {col} |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        drop = "–" if r[frac] is None else f"{100 * r[frac]:.1f}"
        lines.append(f"| {r['method']} | {_pct(r['accuracy'], r['accuracy_sd'])} | {100 * r['delta']:+.1f} | "
                     f"{100 * r['pass_at_k']:.1f} | {r['mean_tokens']:.1f} | {drop} |")
    lines += ["", f"Probe (plain SFT{' of the AR selector' if diffusion else ''}): training accuracy at θ_0 → at the "
                  "bottleneck"]
    for s in cfg.seeds:
        r = probes[s]["result"]
        lines.append(f"- seed {s}: {100 * r['start_accuracy']:.1f}% → {100 * r['bottleneck_accuracy']:.1f}% at step "
                     f"{r['bottleneck_step']}" + ("" if r["dip_found"] else " (no dip: continued anyway)"))
    if student_probes:
        lines += ["", "Probe of the diffusion student itself (its SFT, diffusion sampler): training accuracy at θ_0 → "
                      "lowest later"]
        for s, r in student_probes.items():
            lines.append(f"- seed {s}: {100 * r['start_accuracy']:.1f}% → {100 * (r['bottleneck_accuracy'] or 0):.1f}% "
                         f"at step {r['bottleneck_step']}" + ("" if r["dip_found"] else " (no dip)"))
    md = "\n".join(lines) + "\n"
    summary = {
        "kind": "t3s-run", "t3s_version": __version__, "config": cfg.as_dict(), "eval_on": where, "k": k,
        "objective": cfg.objective,
        "student_probes": {str(s): {kk: r[kk] for kk in ("start_accuracy", "bottleneck_step", "bottleneck_accuracy",
                                                         "dip_found")} for s, r in (student_probes or {}).items()},
        "seeds": cfg.seeds, "rows": rows,
        "probes": {str(s): {kk: probes[s]["result"][kk] for kk in
                            ("start_accuracy", "bottleneck_step", "bottleneck_accuracy", "dip_found", "stopped_early")}
                   for s in cfg.seeds},
        "sources": {"evaluations": "eval-base/ and seed-*/eval/*/metrics.json",
                    "selections": "seed-*/selections/*/selection.json", "probes": "seed-*/probe/probe.json"},
        "markdown": md,
    }
    write_json(out / "summary.json", summary)
    tmp = out / ".summary.md.tmp"
    tmp.write_text("# t3s run summary\n\n" + md)
    tmp.replace(out / "summary.md")
    return summary


def main_run(config_path: str, out: str | None, overrides: list[str], force: list[str], progress: bool) -> int:
    from t3s.config import load_config

    cfg = load_config(config_path, overrides, flat=())
    target = out or Path(config_path).with_suffix("").name
    if out is None:
        target = str(Path("runs") / target)
    summary, code = run(cfg, target, force=tuple(force), progress=progress)
    if code == 0:
        print("\n" + summary["markdown"])
        print(f"run directory: {target} (summary.md, summary.json, run.log)")
    else:
        print(summary["stopped"], file=sys.stderr)
    return code
