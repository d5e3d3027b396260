"""The paper's claims tested on a testbed world: every mode and control, three Δc rules, RRT's sensitivity.

    python -m bench.claims                      # world 1 (runs/testbed-world), about 30 minutes on 2 CPU cores
    python -m bench.claims --kind carry --world runs/carry-world --out runs/claims-carry   # world 2
    python -m bench.claims --render             # re-print the tables from the files the runs wrote
    python -m bench.claims --students RUN...    # one row per student (world seed), from their `t3s run`s

What it runs (each a plain `t3s` command or t3s function; every number it prints is read from their files):
1. `t3s run` on the world with every mode: sft, t3s, reverse, static-high, static-low, random, the claim
   controls t3s-final, t3s-early, excess-loss, and dft; RRT; threshold 0 (RUN/t0).
2. The same probes and scores with `threshold: auto` and with `threshold: 0.01` (copies of RUN/t0 rerun: the
   probes and scores are reused, the selections and everything after them are redone).
3. RRT's sensitivity: θ_0 + (θ_T − θ_k) for every checkpoint θ_k the probe kept (not only the bottleneck),
   evaluated on the held-out set; and the whole SFT + RRT again without gradient clipping
   (`train.max_grad_norm: 0`; the Trainer clips at 1.0 by default) (RUN/noclip).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

MODES = ["sft", "t3s", "reverse", "static-high", "static-low", "random", "t3s-final", "t3s-early", "excess-loss", "dft"]
RULES = {"t0": "0", "auto": "auto", "t001": "0.01"}  # run directory -> threshold
SELECTED = ["t3s", "reverse", "static-high", "static-low", "random", "t3s-final", "t3s-early", "excess-loss"]


def t3s(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "t3s", *args], check=True)


def run_all(world: Path, out: Path, kind: str) -> None:
    t3s("testbed", "build", "--world", kind, "--out", str(world), "--quiet")
    config = str(world / "run.yaml")
    t3s("run", config, "--out", str(out / "t0"), "--quiet", f"modes=[{','.join(MODES)}]", "threshold=0")
    for name, thr in RULES.items():
        if name == "t0":
            continue
        if not (out / name).exists():  # reuse the probes and scores of the threshold-0 run
            shutil.copytree(out / "t0", out / name)
        t3s(
            "run",
            config,
            "--out",
            str(out / name),
            "--quiet",
            f"modes=[{','.join(SELECTED)}]",
            f"threshold={thr}",
            "rrt=false",
        )
    t3s("run", config, "--out", str(out / "noclip"), "--quiet", "modes=[sft]", "train.max_grad_norm=0")
    rrt_sweep(world, out / "t0", out / "rrt-sweep.json")


def rrt_sweep(world: Path, run: Path, path: Path) -> None:
    """Held-out accuracy of θ_0 + (θ_T − θ_k) for every kept probe checkpoint k of every seed."""
    import tempfile

    from t3s.config import load_config
    from t3s.data import load_rows
    from t3s.evaluate import evaluate_model, metrics
    from t3s.models import load_causal_lm, load_tokenizer, resolve_precision
    from t3s.rrt import rrt

    done = json.loads(path.read_text()) if path.exists() else {}
    cfg = load_config(run / "config.yaml", flat=())
    rows = load_rows(cfg.eval_data, need_response=False, need_answer=True)
    fp32 = resolve_precision("float32")
    student = str(world / "student")
    for seed in cfg.seeds:
        probe = run / f"seed-{seed}" / "probe"
        info = json.loads((probe / "probe.json").read_text())
        for ck in sorted((probe / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
            key = f"{seed}/{ck.name}"
            if key in done:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                rrt(student, str(ck), str(probe / "final"), Path(tmp) / "m", progress=False)
                model = load_causal_lm(Path(tmp) / "m", fp32)
                tok = load_tokenizer(Path(tmp) / "m")
                acc = metrics(evaluate_model(model, tok, rows, cfg.render, cfg.eval, fp32, progress=False))["accuracy"]
            done[key] = {
                "seed": seed,
                "step": int(ck.name.split("-")[1]),
                "accuracy": acc,
                "bottleneck": int(ck.name.split("-")[1]) == info["bottleneck_step"],
            }
            print(f"rrt with θ_b = seed {seed} {ck.name}: {100 * acc:.1f}%", flush=True)
            path.write_text(json.dumps(done, indent=1))


def _ms(xs: list[float]) -> str:
    if not xs:
        return "–"
    m = 100 * statistics.fmean(xs)
    return f"{m:.1f} ± {100 * statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{m:.1f}"


def render(out: Path) -> str:
    """The Markdown tables, read from the runs' summary.json, selection.json and rrt-sweep.json."""
    t0 = json.loads((out / "t0" / "summary.json").read_text())
    base = t0["rows"][0]["accuracy"]
    n = len([x for x in open(out / "t0" / "eval-base" / "samples.jsonl")])
    se = math.sqrt(base * (1 - base) / n)
    lines = [
        f"Held-out accuracy %, mean ± sd over seeds {t0['seeds']}; base model {100 * base:.1f}% on n = {n} "
        f"prompts (standard error of one evaluation ≈ {100 * se:.1f} points, sqrt(p(1−p)/n)).",
        "",
        "| mode | " + " | ".join(f"threshold {thr}" for thr in RULES.values()) + " | dropped % (0 / auto / 0.01) |",
        "|---|" + "---|" * (len(RULES) + 1),
    ]
    summaries = {
        name: json.loads((out / name / "summary.json").read_text())
        for name in RULES
        if (out / name / "summary.json").exists()
    }
    for mode in ["sft", *SELECTED, "dft", "rrt"]:
        cells, drops = [], []
        for name in RULES:
            row = next((r for r in summaries.get(name, {}).get("rows", []) if r["method"] == mode), None)
            if row is None and mode in ("sft", "dft", "rrt"):
                row = next((r for r in t0["rows"] if r["method"] == mode), None)
            cells.append(_ms(list(row["per_seed"].values())) if row else "–")
            drops.append(
                "–" if not row or row.get("dropped_fraction") is None else f"{100 * row['dropped_fraction']:.1f}"
            )
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {' / '.join(drops)} |")
    anchors = []
    for name in RULES:
        fr = [json.loads(p.read_text())["stats"] for p in (out / name).glob("seed-*/selections/t3s/selection.json")]
        if fr:
            anchors.append(
                f"threshold {RULES[name]}: anchors {100 * statistics.fmean(s['anchor_fraction'] for s in fr):.1f}%"
                + (
                    f", settled {100 * statistics.fmean(s.get('settled_fraction', 0.0) for s in fr):.1f}%"
                    if name == "auto"
                    else ""
                )
            )
    lines += ["", "Anchor share (mean over seeds): " + "; ".join(anchors) + "."]
    if (out / "noclip" / "summary.json").exists():
        nc = {r["method"]: r for r in json.loads((out / "noclip" / "summary.json").read_text())["rows"]}
        lines += [
            "",
            f"Without gradient clipping (train.max_grad_norm: 0): sft {_ms(list(nc['sft']['per_seed'].values()))}, "
            f"rrt {_ms(list(nc['rrt']['per_seed'].values())) if 'rrt' in nc else '–'}.",
        ]
    if (out / "rrt-sweep.json").exists():
        sweep = json.loads((out / "rrt-sweep.json").read_text())
        steps = sorted({v["step"] for v in sweep.values()})
        lines += [
            "",
            "RRT θ_0 + (θ_T − θ_k) for each probe checkpoint k (held-out accuracy %, per seed; * = that "
            "seed's bottleneck):",
            "",
            "| step k | " + " | ".join(f"seed {s}" for s in t0["seeds"]) + " |",
            "|---|" + "---|" * len(t0["seeds"]),
        ]
        for k in steps:
            cells = []
            for s in t0["seeds"]:
                v = sweep.get(f"{s}/step-{k}")
                cells.append("–" if v is None else f"{100 * v['accuracy']:.1f}" + ("*" if v["bottleneck"] else ""))
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def students_table(runs: list[Path]) -> str:
    """One row per student (a world built with another seed, run with the same config): where the shock and the
    main modes end, read from each run's summary.json and probe records."""
    lines = [
        "| student (world seed) | base % | probe: start → bottleneck (train %) | sft | t3s | reverse | random | "
        "anchors % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        rows = {r["method"]: r for r in s["rows"]}
        world = json.loads((Path(s["config"]["student"]).parent / "world.json").read_text())
        probes = s["probes"].values()
        start = 100 * next(iter(probes))["start_accuracy"]
        low = [100 * p["bottleneck_accuracy"] for p in probes]
        dips = "" if all(p["dip_found"] for p in probes) else " (no dip in every seed)"
        anchors = [
            json.loads(p.read_text())["stats"]["anchor_fraction"]
            for p in run.glob("seed-*/selections/t3s/selection.json")
        ]
        cells = [
            _ms(list(rows[m]["per_seed"].values())) if m in rows else "–" for m in ("sft", "t3s", "reverse", "random")
        ]
        lines.append(
            f"| {world['config']['seed']} | {100 * rows['base']['accuracy']:.1f} | {start:.1f} → "
            f"{min(low):.1f}–{max(low):.1f}{dips} | "
            + " | ".join(cells)
            + f" | {100 * statistics.fmean(anchors):.1f} |"
        )
    return "\n".join(lines) + "\n"


CONTROLS = ["static-high", "static-low", "t3s-final", "t3s-early", "excess-loss", "dft", "rrt"]


def controls_table(runs: list[Path]) -> str:
    """The other modes and controls per student (mean ± sd over seeds), where the runs trained them."""
    lines = ["| student (world seed) | " + " | ".join(CONTROLS) + " |", "|---|" + "---|" * len(CONTROLS)]
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        rows = {r["method"]: r for r in s["rows"]}
        world = json.loads((Path(s["config"]["student"]).parent / "world.json").read_text())
        cells = [_ms(list(rows[m]["per_seed"].values())) if m in rows else "–" for m in CONTROLS]
        lines.append(f"| {world['config']['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.claims", description=__doc__.split("\n")[0])
    p.add_argument("--world", default="runs/testbed-world", help="the world directory (built when missing)")
    p.add_argument(
        "--kind",
        choices=["arithmetic", "carry"],
        default="arithmetic",
        help="which world: 1 (arithmetic, the demo's) or 2 (carry, the paper's regime)",
    )
    p.add_argument("--out", default="runs/claims")
    p.add_argument("--render", action="store_true", help="only print the tables of an earlier run")
    p.add_argument(
        "--students",
        nargs="+",
        metavar="RUN",
        help="only print one row per student from these `t3s run` directories (worlds of other seeds)",
    )
    args = p.parse_args(argv)
    if args.students:
        print(students_table([Path(r) for r in args.students]))
        print(controls_table([Path(r) for r in args.students]))
        return 0
    out = Path(args.out)
    if not args.render:
        run_all(Path(args.world), out, args.kind)
    table = render(out)
    (out / "claims.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
