"""The debiased teacher mixture: `t3s run` with `teachers:` (a name → training set mapping) instead of
`train_data`.

Each teacher's set is one ordinary single-teacher run (its own probe, bottleneck, Δc, selections, and every mode
trained on that teacher alone) under `teachers/NAME/`, which `t3s.pipeline` runs first. The mixture then trains, for
every seed and mode, on the union of the per-teacher sets with each teacher's own selection applied (ids become
`NAME/id`; the Trainer's seeded sampler shuffles the union), for `train.max_steps × mixture_budget` steps (default:
× the number of teachers, the paper's budget). `sft` on the union is the plain mixture. The summary table shows the
base model, every teacher alone and every mixture. The base model is evaluated once (the first teacher's run) and
shared with the others.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from t3s import T3SError, __version__
from t3s.artifacts import atomic_dir
from t3s.modes import mode_of
from t3s.stages import Run, eval_stage, train_stage
from t3s.summary import method_row, table, write_summary

if TYPE_CHECKING:
    from t3s.config import RunConfig, TrainConfig
    from t3s.ledger import Ledger, PlanLedger


def union_data(teachers: dict[str, str], out: Path) -> None:
    """`out/train.jsonl`: every teacher's rows, ids prefixed with the teacher's name, a `teacher` field added."""
    from t3s.data import load_rows

    with atomic_dir(out, overwrite=True) as tmp, (tmp / "train.jsonl").open("w", encoding="utf-8") as fh:
        for name, path in teachers.items():
            for r in load_rows(path):
                fh.write(
                    json.dumps(
                        {
                            "id": f"{name}/{r.id}",
                            "prompt": r.prompt,
                            "response": r.response,
                            "answer": r.answer,
                            "teacher": name,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )


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

    def cat(attr: str) -> list:
        return [x for sel in sels.values() for x in getattr(sel, attr)]

    forced = None if first.forced is None else cat("forced")
    keep = cat("keep")
    n = sum(len(k) for k in keep)
    stats = {
        "rows": len(ids),
        "tokens": n,
        "kept_tokens": int(sum(k.sum() for k in keep)),
        "per_teacher": {name: sel.meta["stats"] for name, sel in sels.items()},
    }
    stats["dropped_tokens"] = n - stats["kept_tokens"]
    stats["dropped_fraction"] = stats["dropped_tokens"] / n
    if forced is not None:
        stats["forced_tokens"] = int(sum(f.sum() for f in forced))
        stats["forced_fraction"] = stats["forced_tokens"] / n
    meta = {
        **first.meta,
        "mode": mode,
        "teachers": {name: sel.meta.get("path") for name, sel in sels.items()},
        "fingerprints": {**first.meta["fingerprints"], "data": data_fingerprint(load_rows(data_path))},
        "stats": stats,
    }
    meta.pop("path", None)
    sel = Selection(meta, ids, cat("response_ids"), keep, [np.asarray(d) for d in cat("delta")], forced)
    write_selection(sel, out, overwrite=True)
    return {"stats": stats}


def check_mixture(cfg: RunConfig) -> None:
    """A mixture config's own rules, checked before any work."""
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


def mixture_train_config(train: TrainConfig, scale: float, teachers: int) -> TrainConfig:
    """The budget of a mixture: `train.max_steps × scale` steps (epochs over a union `teachers` times larger
    already take that many times the steps)."""
    if train.max_steps > 0:
        return dataclasses.replace(train, max_steps=max(1, round(train.max_steps * scale)))
    return dataclasses.replace(train, num_train_epochs=train.num_train_epochs * scale / teachers)


def train_mixtures(
    cfg: RunConfig, ledger: Ledger | PlanLedger, subs: dict[str, dict], progress: bool
) -> dict[str, Any]:
    """After every teacher's own run (`subs`: their summaries, under `teachers/NAME/`): for every seed and mode,
    the union of the per-teacher selections, trained for the mixture budget and evaluated (the single-teacher
    run's own builders, `t3s.stages.train_stage` / `eval_stage`); then one table with the base model, every
    teacher alone and every mixture. Returns the summary (nothing for a plan)."""
    from t3s.data import file_fingerprint
    from t3s.objectives import objective_for

    names, out = list(cfg.teachers), ledger.out
    objective = objective_for(cfg)
    run = Run(cfg, ledger, objective, objective.selector(cfg), progress)
    scale = cfg.mixture_budget or len(names)
    mix_dir = out / "mixture"
    if ledger.summarises:
        run.evaluate  # the evaluation prompts are read (and refused) before the mixtures train
    data = ledger.stage(
        "mixture/data",
        "select",
        mix_dir / "data",
        lambda: {name: file_fingerprint(cfg.teachers[name], True) for name in names},
        lambda path: union_data(cfg.teachers, path) or {},
    )
    data_path = str(mix_dir / "data" / "train.jsonl")
    teachers = {name: ledger.sub(out / "teachers" / name) for name in names}
    evals, sels = {}, {}
    for s in cfg.seeds:
        tcfg = mixture_train_config(dataclasses.replace(cfg.train, seed=s), scale, len(names))
        for mode in cfg.modes:
            selection = None
            if mode_of(mode).selects:
                per = {name: str(out / "teachers" / name / f"seed-{s}" / "selections" / mode) for name in names}
                sel_dir = mix_dir / f"seed-{s}" / "selections" / mode
                sels[(s, mode)] = ledger.stage(
                    f"mixture/seed-{s}/select-{mode}",
                    "select",
                    sel_dir,
                    lambda s=s, mode=mode: {
                        "data": data["produced"],
                        "selections": {n: t.record(f"seed-{s}/select-{mode}")["produced"] for n, t in teachers.items()},
                    },
                    lambda path, per=per, mode=mode: union_selection(per, data_path, mode, path),
                )
                selection = (str(sel_dir), sels[(s, mode)])
            where = mix_dir / f"seed-{s}"
            trained = train_stage(
                run,
                f"mixture/seed-{s}/train-{mode}",
                where / "train" / mode,
                data_path,
                lambda: {"data": data["produced"]},
                mode,
                tcfg,
                selection,
                f"seed {s} mixture {mode}",
                tracked=False,  # the mixtures are not tracked
            )
            evals[(s, mode)] = eval_stage(
                run,
                f"mixture/seed-{s}/eval-{mode}",
                where / "eval" / mode,
                str(where / "train" / mode / "model"),
                lambda trained=trained: trained["produced"],
                f"seed {s} mixture {mode}",
            )
    if ledger.planning:
        return {}

    # one table: base, every teacher alone, every mixture
    ledger.end()
    base = subs[names[0]]["rows"][0]
    stat = objective.selection_stat
    rows = [dict(base, method="base")]
    for name in names:
        rows += [dict(r, method=f"{name}: {r['method']}") for r in subs[name]["rows"][1:]]
    for mode in cfg.modes:
        per = {s: evals[(s, mode)] for s in cfg.seeds}
        fractions = [sels[(s, mode)]["result"]["stats"].get(stat, 0.0) for s in cfg.seeds if (s, mode) in sels]
        method = f"mixture: {mode}" + (" (plain mixture)" if mode == "sft" else "")
        rows.append(method_row(method, mode, per, fractions, stat, base["accuracy"]))
    k, where = subs[names[0]]["k"], subs[names[0]]["eval_on"]
    lines = [
        f"Accuracy (avg@{k}) on the {where}, mean ± sd over seeds {cfg.seeds}. Teachers: {', '.join(names)}; "
        f"each mixture trains {scale:g}× the single-teacher budget on the union of the per-teacher selections.",
        "",
        *table(rows, stat, objective.selection_header, k),
        "",
        "Per-teacher runs (probes, selections, summaries): teachers/NAME/summary.md",
    ]
    md = "\n".join(lines) + "\n"
    summary = {
        "kind": "t3s-run",
        "t3s_version": __version__,
        "mixture": names,
        "mixture_budget": scale,
        "config": cfg.as_dict(),
        "eval_on": where,
        "k": k,
        "seeds": cfg.seeds,
        "objective": objective.name,
        "rows": rows,
        "probes": {name: subs[name]["probes"] for name in names},
        "markdown": md,
    }
    write_summary(out, summary, "t3s run summary (teacher mixture)")
    ledger.log("summary:\n" + md, console=False)
    return summary
