"""The debiased teacher mixture: `t3s run` with `teachers:` (a name → training set mapping) instead of
`train_data`.

Each teacher's set is one ordinary `t3s run` (its own probe, bottleneck, Δc, selections, and every mode trained
on that teacher alone) under `teachers/NAME/`. The mixture then trains, for every seed and mode, on the union of
the per-teacher sets with each teacher's own selection applied (ids become `NAME/id`; the Trainer's seeded sampler
shuffles the union), for `train.max_steps × mixture_budget` steps (default: × the number of teachers, the paper's
budget). `sft` on the union is the plain mixture. The summary table shows the base model, every teacher alone
and every mixture. The base model is evaluated once (the first teacher's run) and shared with the others.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from t3s import T3SError, __version__
from t3s.artifacts import atomic_dir, write_json


def union_data(teachers: dict[str, str], out: Path) -> None:
    """`out/train.jsonl`: every teacher's rows, ids prefixed with the teacher's name, a `teacher` field added."""
    from t3s.data import load_rows

    with atomic_dir(out, overwrite=True) as tmp, (tmp / "train.jsonl").open("w", encoding="utf-8") as fh:
        for name, path in teachers.items():
            for r in load_rows(path):
                fh.write(json.dumps({"id": f"{name}/{r.id}", "prompt": r.prompt, "response": r.response,
                                     "answer": r.answer, "teacher": name}, ensure_ascii=False) + "\n")


def union_selection(selections: dict[str, str], data_path: str, mode: str, out: Path) -> dict[str, Any]:
    """One selection over the union data from the per-teacher selections (keep-masks or forced sets)."""
    from t3s.data import data_fingerprint, load_rows
    from t3s.select import Selection, load_selection, write_selection

    sels = {name: load_selection(p) for name, p in selections.items()}
    first = next(iter(sels.values()))
    for name, sel in sels.items():
        for key in ("tokenizer", "template"):
            if sel.meta["fingerprints"][key] != first.meta["fingerprints"][key]:
                raise T3SError(f"teacher '{name}': its selection was made with another {key} than the others'")
    ids = [f"{name}/{i}" for name, sel in sels.items() for i in sel.ids]
    cat = lambda attr: [x for sel in sels.values() for x in getattr(sel, attr)]  # noqa: E731
    forced = None if first.forced is None else cat("forced")
    keep = cat("keep")
    n = sum(len(k) for k in keep)
    stats = {"rows": len(ids), "tokens": n,
             "kept_tokens": int(sum(k.sum() for k in keep)),
             "per_teacher": {name: sel.meta["stats"] for name, sel in sels.items()}}
    stats["dropped_tokens"] = n - stats["kept_tokens"]
    stats["dropped_fraction"] = stats["dropped_tokens"] / n
    if forced is not None:
        stats["forced_tokens"] = int(sum(f.sum() for f in forced))
        stats["forced_fraction"] = stats["forced_tokens"] / n
    meta = {**first.meta, "mode": mode, "teachers": {name: sel.meta.get("path") for name, sel in sels.items()},
            "fingerprints": {**first.meta["fingerprints"], "data": data_fingerprint(load_rows(data_path))},
            "stats": stats}
    meta.pop("path", None)
    sel = Selection(meta, ids, cat("response_ids"), keep, [np.asarray(d) for d in cat("delta")], forced)
    write_selection(sel, out, overwrite=True)
    return {"stats": stats}


def share_base_eval(src: Path, dst: Path) -> bool:
    """Every teacher run evaluates the same base model on the same prompts: give a later run the first run's
    evaluation (just run or validated) and its stage record, unless it already has the same one. The record
    carries the fingerprint of the stage's inputs, so a run whose inputs differ still redoes it."""
    rec, dst_rec = src / "stages" / "eval-base.json", dst / "stages" / "eval-base.json"
    if not rec.exists() or not (src / "eval-base").exists():
        return False
    if dst_rec.exists() and (dst / "eval-base").exists() and (
            json.loads(dst_rec.read_text())["fingerprint"] == json.loads(rec.read_text())["fingerprint"]):
        return False
    dst_rec.unlink(missing_ok=True)  # from here until the copy is in place, the stage counts as not done
    tmp = dst / ".eval-base.tmp"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(dst / "eval-base", ignore_errors=True)  # a base evaluation without a record is unfinished
    shutil.copytree(src / "eval-base", tmp)
    tmp.rename(dst / "eval-base")
    dst_rec.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rec, dst / "stages" / ".eval-base.json.tmp")
    (dst / "stages" / ".eval-base.json.tmp").replace(dst_rec)
    return True


def run_mixture(cfg: Any, out: str | Path, force: tuple[str, ...], progress: bool) -> tuple[dict, int]:
    from t3s.models import model_fingerprint
    from t3s.pipeline import MASKED_MODES, Pipeline, _clean_stale, _data_fp, _evaluator, _ms, _pct, _slim, run
    from t3s.train import config_for_mode, prepare, train

    names = list(cfg.teachers)
    if len(names) < 2:
        raise T3SError("teachers: a mixture needs at least two teachers (for one, use train_data)")
    if cfg.train_data:
        raise T3SError("give either train_data or teachers, not both")
    if not cfg.eval_data:
        raise T3SError("a teacher mixture compares its teachers on one set of prompts: set eval_data")
    for name, path in cfg.teachers.items():
        if not isinstance(path, str) or "/" in name or not name.strip():
            raise T3SError(f"teachers: '{name}' must map a plain name (no '/') to a training-set path")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    p = Pipeline(out, set(force))
    p.log(f"teacher mixture of {', '.join(names)}: each teacher alone, then the mixtures")

    # 1. every teacher alone: an ordinary run each (its own probe, bottleneck and selections)
    subs = {}
    for name in names:
        sub = dataclasses.replace(cfg, teachers={}, train_data=cfg.teachers[name])
        p.log(f"teacher {name}: run in {out / 'teachers' / name}")
        if name != names[0] and "eval" not in force and share_base_eval(out / "teachers" / names[0],
                                                                       out / "teachers" / name):
            p.log(f"teacher {name}: the base model's evaluation is shared from teacher {names[0]}")
        summary, code = run(sub, out / "teachers" / name, force=force, progress=progress)
        if code != 0:
            summary = {**summary, "stopped": f"teacher {name}: {summary['stopped']}"}
            return summary, code
        subs[name] = summary

    # 2. the mixtures: union of the per-teacher masked sets, budget × number of teachers
    scale = cfg.mixture_budget or len(names)
    mix_dir = out / "mixture"
    data = p.stage("mixture/data", "select", mix_dir / "data",
                   {name: _data_fp(cfg.teachers[name], True) for name in names},
                   lambda path: union_data(cfg.teachers, path) or {})
    data_path = str(mix_dir / "data" / "train.jsonl")
    student_fp = model_fingerprint(cfg.student)
    diffusion = cfg.diffusion if cfg.objective == "diffusion" else None
    evaluator = _evaluator(cfg, p, cfg.eval_data, progress)
    eval_fp = _data_fp(cfg.eval_data, False)
    evals, sels = {}, {}
    for s in cfg.seeds:
        tcfg = dataclasses.replace(cfg.train, seed=s)
        if tcfg.max_steps > 0:
            tcfg = dataclasses.replace(tcfg, max_steps=max(1, round(tcfg.max_steps * scale)))
        else:  # epochs over a union n times larger already take n times the steps
            tcfg = dataclasses.replace(tcfg, num_train_epochs=tcfg.num_train_epochs * scale / len(names))
        for mode in cfg.modes:
            sel_path = None
            if mode in MASKED_MODES:
                per = {name: str(out / "teachers" / name / f"seed-{s}" / "selections" / mode) for name in names}
                produced = {name: json.loads((out / "teachers" / name / "stages" /
                                              f"seed-{s}__select-{mode}.json").read_text())["produced"]
                            for name in names}
                rec = p.stage(f"mixture/seed-{s}/select-{mode}", "select", mix_dir / f"seed-{s}" / "selections" / mode,
                              {"data": data["produced"], "selections": produced},
                              lambda path, per=per, mode=mode: union_selection(per, data_path, mode, path))
                sels[(s, mode)] = rec
                sel_path = str(mix_dir / f"seed-{s}" / "selections" / mode)

            def do_train(path: Path, sel_path=sel_path, tcfg=config_for_mode(tcfg, mode)) -> dict:
                prepared = prepare(cfg.student, data_path, tcfg, cfg.render, sel_path, diffusion)
                return _slim(train(cfg.student, data_path, path, tcfg, cfg.render, sel_path, overwrite=True,
                                   progress=progress, data=prepared, diffusion=diffusion))

            trained = p.stage(
                f"mixture/seed-{s}/train-{mode}", "train", mix_dir / f"seed-{s}" / "train" / mode,
                {"student": student_fp, "data": data["produced"],
                 "train": dataclasses.asdict(config_for_mode(tcfg, mode)),
                 "render": dataclasses.asdict(cfg.render), "diffusion": dataclasses.asdict(cfg.diffusion)
                 if diffusion else None, "selection": sels[(s, mode)]["produced"] if (s, mode) in sels else None},
                do_train)
            evals[(s, mode)] = p.stage(
                f"mixture/seed-{s}/eval-{mode}", "eval", mix_dir / f"seed-{s}" / "eval" / mode,
                {"model": trained["produced"], "eval": dataclasses.asdict(cfg.eval), "data": eval_fp,
                 "render": dataclasses.asdict(cfg.render)},
                evaluator(str(mix_dir / f"seed-{s}" / "train" / mode / "model"), f"seed {s} mixture {mode}"))["result"]

    # 3. one table: base, every teacher alone, every mixture
    base = subs[names[0]]["rows"][0]
    frac = "forced_fraction" if diffusion else "dropped_fraction"
    rows = [dict(base, method="base")]
    for name in names:
        rows += [dict(r, method=f"{name}: {r['method']}") for r in subs[name]["rows"][1:]]
    for mode in cfg.modes:
        per = {s: evals[(s, mode)] for s in cfg.seeds}
        acc, sd = _ms([v["accuracy"] for v in per.values()])
        fr = [sels[(s, mode)]["result"]["stats"].get(frac, 0.0) for s in cfg.seeds if (s, mode) in sels]
        rows.append({"method": f"mixture: {mode}" + (" (plain mixture)" if mode == "sft" else ""),
                     "accuracy": acc, "accuracy_sd": sd, "delta": acc - base["accuracy"],
                     "pass_at_k": float(np.mean([v["pass_at_k"] for v in per.values()])),
                     "mean_tokens": float(np.mean([v["mean_tokens"] for v in per.values()
                                                   if v["mean_tokens"] is not None] or [np.nan])),
                     frac: float(np.mean(fr)) if fr else 0.0,
                     "per_seed": {str(s): v["accuracy"] for s, v in per.items()}})
    k = subs[names[0]]["k"]
    where = subs[names[0]]["eval_on"]
    col = "forced (always masked) tokens %" if diffusion else "dropped tokens %"
    lines = [f"Accuracy (avg@{k}) on the {where}, mean ± sd over seeds {cfg.seeds}. Teachers: {', '.join(names)}; "
             f"each mixture trains {scale:g}× the single-teacher budget on the union of the per-teacher selections.",
             "", f"| method | accuracy % | Δ vs base | pass@{k} % | mean tokens | {col} |", "|---|---|---|---|---|---|"]
    for r in rows:
        drop = "–" if r.get(frac) is None else f"{100 * r[frac]:.1f}"
        lines.append(f"| {r['method']} | {_pct(r['accuracy'], r['accuracy_sd'])} | {100 * r['delta']:+.1f} | "
                     f"{100 * r['pass_at_k']:.1f} | {r['mean_tokens']:.1f} | {drop} |")
    lines += ["", "Per-teacher runs (probes, selections, summaries): teachers/NAME/summary.md"]
    md = "\n".join(lines) + "\n"
    summary = {"kind": "t3s-run", "t3s_version": __version__, "mixture": names, "mixture_budget": scale,
               "config": cfg.as_dict(), "eval_on": where, "k": k, "seeds": cfg.seeds, "objective": cfg.objective,
               "rows": rows, "probes": {name: subs[name]["probes"] for name in names}, "markdown": md}
    write_json(out / "summary.json", summary)
    tmp = out / ".summary.md.tmp"
    tmp.write_text("# t3s run summary (teacher mixture)\n\n" + md)
    tmp.replace(out / "summary.md")
    p.log("summary:\n" + md, console=False)
    return summary, 0
