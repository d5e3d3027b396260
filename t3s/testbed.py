"""A CPU testbed where the imitation shock can be seen in minutes.

The task is a + b with two 4-digit numbers. A *student style* S writes compact column sums with implicit
carries; a *teacher style* T (R1-like) opens with a lead-in, spells every column with explicit carry-in and
carry-out, adds a "Wait, let me check" move and closes with a sentence. A tiny Llama is pretrained mostly on S
(with some T-style text under other prompts, as a real student has read R1-like text) until it is competent but
imperfect; the training set is a few hundred T traces with gold answers; held-out prompts measure transfer.
Everything is written in t3s's row format, so `t3s run` runs on it unchanged.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from t3s import T3SError
from t3s.tiny import build_tokenizer

PLACES = ["Ones", "Tens", "Hundreds", "Thousands"]
TASK_PROMPT = "Add {a} and {b}."
# Same length and layout as the task prompt: a tiny model reads the digits by relative position, so teacher-style
# skill learned under a prompt of another length does not transfer to the task prompt at all.
OTHER_PROMPT = "Sum {a} and {b}."
CHAT_PROMPT = "Tell me about adding numbers."


def columns(a: int, b: int) -> list[tuple[int, int, int, int, int, int]]:
    """Per column from the ones: (digit of a, digit of b, carry in, column sum, written digit, carry out)."""
    out, carry = [], 0
    for i in range(4):
        x, y = a // 10**i % 10, b // 10**i % 10
        s = x + y + carry
        out.append((x, y, carry, s, s % 10, s // 10))
        carry = s // 10
    return out


def student_trace(a: int, b: int) -> str:
    """Style S: compact column sums, the carry folded into the next column."""
    parts = [f"{x}+{y}" + (f"+{cin}" if cin else "") + f"={s}" for x, y, cin, s, _, _ in columns(a, b)]
    return " ; ".join(parts) + f" . \\boxed{{{a + b}}}"


def teacher_trace(a: int, b: int) -> str:
    """Style T: lead-in, explicit carry-in/carry-out per column, a check move, a closing sentence."""
    cols = columns(a, b)
    lines = ["Okay, let us add column by column."]
    for place, (x, y, cin, s, d, cout) in zip(PLACES, cols):
        lines.append(f"{place}: {x} + {y} + carry {cin} = {s}, write {d}, carry {cout}.")
    if cols[-1][5]:
        lines.append("Finally, write the last carry 1.")
    lines.append("Wait, let me check the carries: " + ", ".join(str(c[5]) for c in cols) + ".")
    lines.append(f"So the answer is \\boxed{{{a + b}}}.")
    return " ".join(lines)


def ungrounded_teacher_text(
    rng: random.Random,
    lead: str = "Okay, let us add column by column.",
    line: str = "{place}: {x} + {y} + carry {cin} = {s}, write {d}, carry {c}.",
    check: str = "Wait, let me check the carries.",
    after: str = "",
) -> str:
    """Teacher-style sentences whose arithmetic is not grounded in any question (random numbers); the defaults are
    world 1's teacher, world 2 passes its own phrasing (`after`: a sentence after every column)."""
    k = rng.randint(1, 3)
    lines = [lead] if rng.random() < 0.7 else []
    for place in rng.sample(PLACES, k):
        x, y, cin = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 1)
        s = rng.randint(0, 19)
        lines.append(line.format(place=place, x=x, y=y, cin=cin, s=s, d=s % 10, c=s // 10))
        if after:
            lines.append(after)
    if rng.random() < 0.5:
        lines.append(check)
    return " ".join(lines)


def pair(rng: random.Random) -> tuple[int, int]:
    return rng.randint(1000, 9999), rng.randint(1000, 9999)


# ----------------------------------------------------------------------------------------------- the world


@dataclass
class WorldConfig:
    """How the testbed world is built. Its fingerprint names the cache."""

    seed: int = field(default=0, metadata={"help": "seed of the data and the student's initialisation"})
    n_train: int = field(default=256, metadata={"help": "teacher traces in the training set"})
    n_heldout: int = field(default=128, metadata={"help": "held-out prompts"})
    n_dev: int = field(default=128, metadata={"help": "prompts used to pick the pretrained student"})
    n_pretrain: int = field(default=24000, metadata={"help": "pretraining rows"})
    share_teacher_other: float = field(default=0.15, metadata={"help": "T traces under another prompt"})
    share_ungrounded: float = field(default=0.15, metadata={"help": "T-style text with ungrounded arithmetic"})
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    vocab_size: int = 400
    pretrain_lr: float = 1e-3
    pretrain_batch: int = 64
    # Explicit, not auto: the student must not depend on the CPU that builds it. bf16 autocast is how the world
    # was tuned (docs/testbed.md; float32 picks another student and tells another story, recorded there); on a CPU
    # without bf16 hardware this precision is slow (hours), which is why the built student ships with t3s.
    pretrain_dtype: str = "bfloat16"
    pretrain_max_steps: int = 700
    pretrain_eval_every: int = 25
    band: tuple[float, float] = (0.65, 0.90)
    min_other_accuracy: float = 0.3
    min_steps: int = 200


# ----------------------------------------------------------------------------------------------- world 2: carry
# The paper's regime: the student already reasons step by step in a format close to the teacher's, and starts
# strong; the teacher differs in surface habits (a lead-in, connectives, a check move: about a fifth of its tokens)
# and in content on one class of problems: the student's procedure drops the carry into a column whose digits sum
# to 9 (a carry chain), so it gets those problems wrong; the teacher carries correctly.

CARRY_PROMPT = "Compute {a} + {b}."
CARRY_OTHER_PROMPT = "Find {a} + {b}."


def buggy_columns(a: int, b: int) -> list[tuple[int, int, int, int, int, int]]:
    """The student's procedure: like `columns`, except that a carry into a column whose digits sum to 9 is lost."""
    out, carry = [], 0
    for i in range(4):
        x, y = a // 10**i % 10, b // 10**i % 10
        cin = 0 if x + y == 9 else carry
        s = x + y + cin
        out.append((x, y, cin, s, s % 10, s // 10))
        carry = s // 10
    return out


def column_value(cols: list[tuple[int, int, int, int, int, int]]) -> int:
    return sum(d * 10**i for i, (*_, d, _c) in enumerate(cols)) + cols[-1][5] * 10**4


def has_chain(a: int, b: int) -> bool:
    """Does the student's procedure get a + b wrong (a carry into a column whose digits sum to 9)?"""
    return column_value(buggy_columns(a, b)) != a + b


def carry_student_trace(a: int, b: int) -> str:
    """World 2, student style: step by step, its own phrasing, its own (buggy) carries, its own answer."""
    cols = buggy_columns(a, b)
    lines = [
        f"{place}: {x} + {y}" + (f" + {cin}" if cin else "") + f" = {s}, write {d}, carry {cout}."
        for place, (x, y, cin, s, d, cout) in zip(PLACES, cols)
    ]
    if cols[-1][5]:
        lines.append("Last carry 1.")
    return " ".join(lines) + f" So the answer is \\boxed{{{column_value(cols)}}}."


def carry_teacher_trace(a: int, b: int, interjection: str = "") -> str:
    """World 2, teacher style (R1-like): a lead-in, the carry-in always written, connectives, a check move, and
    (`interjection`) a hesitation after every column."""
    cols = columns(a, b)
    lines = ["Okay, so let me add these column by column."]
    for place, (x, y, cin, s, d, cout) in zip(PLACES, cols):
        lines.append(f"{place}: {x} + {y} + {cin} = {s}, so I write {d} and carry {cout}.")
        if interjection:
            lines.append(interjection)
    if cols[-1][5]:
        lines.append("Last carry 1.")
    lines.append("Wait, let me double-check the carries: " + ", ".join(str(c[5]) for c in cols) + ". Yes.")
    return " ".join(lines) + f" So the answer is \\boxed{{{a + b}}}."


@dataclass
class CarryWorldConfig(WorldConfig):
    """World 2 (`t3s testbed build --world carry`): the paper's regime (see `buggy_columns`)."""

    world: str = "carry"
    band: tuple[float, float] = (0.60, 0.85)
    min_other_accuracy: float = 0.3
    dev_max_new_tokens: int = 160  # the student's own traces are step by step (about 100 tokens)
    interjection: str = "Hmm, let me make sure."  # after every column of the teacher (docs/testbed.md: variants)


def make_rows(cfg: WorldConfig) -> dict[str, list[dict]]:
    """All data of the world, deterministic per seed."""
    if isinstance(cfg, CarryWorldConfig):
        return _make_rows(
            cfg,
            CARRY_PROMPT,
            CARRY_OTHER_PROMPT,
            carry_student_trace,
            lambda a, b: carry_teacher_trace(a, b, cfg.interjection),
            lambda rng: ungrounded_teacher_text(
                rng,
                "Okay, so let me add these column by column.",
                "{place}: {x} + {y} + {cin} = {s}, so I write {d} and carry {c}.",
                "Wait, let me double-check the carries.",
                cfg.interjection,
            ),
            gold=lambda a, b: a + b,
        )
    return _make_rows(
        cfg, TASK_PROMPT, OTHER_PROMPT, student_trace, teacher_trace, ungrounded_teacher_text, gold=lambda a, b: a + b
    )


def _make_rows(
    cfg: WorldConfig, task_prompt: str, other_prompt: str, student, teacher, ungrounded, gold
) -> dict[str, list[dict]]:
    rng = random.Random(cfg.seed)
    seen: set[tuple[int, int]] = set()

    def fresh() -> tuple[int, int]:
        while True:
            a, b = pair(rng)
            if (a, b) not in seen:
                seen.add((a, b))
                return a, b

    def task_row(kind: str, i: int, a: int, b: int, response: str | None) -> dict:
        row = {"id": f"{kind}-{i:05d}", "prompt": task_prompt.format(a=a, b=b), "answer": str(gold(a, b))}
        if response is not None:
            row["response"] = response
        return row

    train = [task_row("train", i, *(ab := fresh()), teacher(*ab)) for i in range(cfg.n_train)]
    heldout = [task_row("heldout", i, *fresh(), None) for i in range(cfg.n_heldout)]
    dev_pairs = [fresh() for _ in range(cfg.n_dev)]
    dev = [task_row("dev", i, a, b, None) for i, (a, b) in enumerate(dev_pairs)]
    # the same dev problems under the other prompt: how well does the student do teacher-style reasoning?
    dev_other = [
        {"id": f"dev-other-{i:05d}", "prompt": other_prompt.format(a=a, b=b), "answer": str(gold(a, b))}
        for i, (a, b) in enumerate(dev_pairs)
    ]
    pretrain = []
    for i in range(cfg.n_pretrain):
        u = rng.random()
        a, b = fresh()
        if u < cfg.share_ungrounded:
            pretrain.append({"id": f"pre-{i:06d}", "prompt": CHAT_PROMPT, "response": ungrounded(rng)})
        elif u < cfg.share_ungrounded + cfg.share_teacher_other:
            pretrain.append({"id": f"pre-{i:06d}", "prompt": other_prompt.format(a=a, b=b), "response": teacher(a, b)})
        else:
            pretrain.append(
                {
                    "id": f"pre-{i:06d}",
                    "prompt": task_prompt.format(a=a, b=b),
                    "response": student(a, b),
                    "answer": str(gold(a, b)),
                }
            )
    return {"train": train, "heldout": heldout, "dev": dev, "dev_other": dev_other, "pretrain": pretrain}


def _write_jsonl(path, rows) -> None:
    import json

    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def demo_config(world: str, cfg: WorldConfig | None = None) -> dict:
    """The `t3s run` config of the demo (world 1) or of world 2, relative to the world directory."""
    marker = "Okay, so let me" if isinstance(cfg, CarryWorldConfig) else "Okay, let us"
    return {
        "student": f"{world}/student",
        "train_data": f"{world}/train.jsonl",
        "eval_data": f"{world}/heldout.jsonl",
        "modes": ["sft", "t3s", "reverse", "static-high", "static-low", "random"],
        "seeds": [0, 1, 2],
        "threshold": 0.0,
        "rrt": True,
        # float32: at this size bf16 autocast saves no time on a CPU and costs generation speed
        "train": {"learning_rate": 5e-5, "max_steps": 36, "per_device_train_batch_size": 24, "dtype": "float32"},
        "probe": {
            "eval_every": 2,
            "subset": 96,
            "markers": [marker],
            "heldout_subset": -1,
            "keep_all": True,
            "track_every": 9,
            "track_subset": 32,
        },
        "eval": {"max_new_tokens": 160, "batch_size": 128, "dtype": "float32"},
        "score": {"dtype": "float32"},
    }


def _write_run_config(world, cfg: WorldConfig) -> None:
    """run.yaml is derived from the world's path and kind only, so it is (re)written even when the world is
    reused."""
    import yaml

    path = Path(world) / "run.yaml"
    tmp = path.with_name(".run.yaml.tmp")
    tmp.write_text(yaml.safe_dump(demo_config(str(world), cfg), sort_keys=False))
    tmp.replace(path)


# The pretrained student of the default world, shipped with t3s so that `make demo` does not spend minutes
# pretraining it (about four in bf16 on a CPU with bf16 hardware, hours on one without); `t3s testbed build
# --rebuild` pretrains it again.
SHIPPED = Path(__file__).parent / "worlds" / "arithmetic"
SHIPPED_CARRY = Path(__file__).parent / "worlds" / "carry"  # world 2's student, shipped for the same reason


def shipped_dir(cfg: WorldConfig) -> Path:
    return SHIPPED_CARRY if isinstance(cfg, CarryWorldConfig) else SHIPPED


def world_fingerprint(cfg: WorldConfig) -> str:
    import dataclasses

    from t3s.artifacts import sha256_json

    return sha256_json({"world": dataclasses.asdict(cfg), "version": 2})


def rows_fingerprint(rows: dict[str, list[dict]]) -> str:
    from t3s.artifacts import sha256_json

    return sha256_json(rows)


def shipped_world(cfg: WorldConfig, rows: dict[str, list[dict]]) -> dict | None:
    """The shipped world's record when it was built from exactly these settings and rows, else None."""
    import json

    where = shipped_dir(cfg)
    try:
        info = json.loads((where / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("fingerprint") != world_fingerprint(cfg) or info.get("rows_fingerprint") != rows_fingerprint(rows):
        return None
    if not (where / "student" / "config.json").exists():
        return None
    return info


def build_world(
    out,
    cfg: WorldConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
    rebuild: bool = False,
) -> dict:
    """Build (or reuse, when `out` holds a world of the same config) the testbed world. The student is the one
    shipped with t3s when it was built from the same settings (its fingerprint and that of the data rows match),
    unless `rebuild`; otherwise it is pretrained here."""
    import dataclasses
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    from t3s.artifacts import atomic_dir, read_json, write_json
    from t3s.config import GenConfig, load_config
    from t3s.data import load_rows
    from t3s.evaluate import evaluate_model, metrics
    from t3s.models import resolve_precision
    from t3s.train import make_trainer, prepare

    cfg = cfg or WorldConfig()
    out = Path(out)
    fp = world_fingerprint(cfg)
    if (out / "world.json").exists() and not overwrite:
        info = read_json(out / "world.json")
        if info.get("fingerprint") == fp and not rebuild:
            log(f"testbed world in {out} is up to date (cached)")
            _write_run_config(out, cfg)
            return info
        raise T3SError(
            f"{out} holds a testbed world built with other settings (or --rebuild was asked for); pass "
            "--overwrite to replace it"
        )

    rows = make_rows(cfg)
    t0 = time.perf_counter()
    shipped = None if rebuild else shipped_world(cfg, rows)
    if shipped is not None:
        with atomic_dir(out, overwrite=True) as tmp:
            for name in ("train", "heldout", "dev", "dev_other", "pretrain"):
                _write_jsonl(tmp / f"{name}.jsonl", rows[name])
            shutil.copytree(shipped_dir(cfg) / "student", tmp / "student")
            info = {
                **shipped,
                "source": f"shipped with t3s (t3s/worlds/{shipped_dir(cfg).name}; --rebuild pretrains it here)",
                "seconds": time.perf_counter() - t0,
                "files": [
                    "student/",
                    "train.jsonl",
                    "heldout.jsonl",
                    "dev.jsonl",
                    "dev_other.jsonl",
                    "pretrain.jsonl",
                    "run.yaml",
                ],
            }
            write_json(tmp / "world.json", info)
        _write_run_config(out, cfg)
        c = shipped["student"]
        log(
            f"testbed world written to {out} with the student shipped with t3s (pretrained with these settings: "
            f"step {c['step']}, dev accuracy {100 * c['dev_accuracy']:.1f}% in style S, "
            f"{100 * c['dev_other_accuracy']:.1f}% in style T under the other prompt); --rebuild pretrains it here"
        )
        return info

    with atomic_dir(out, overwrite=True) as tmp:
        for name in ("train", "heldout", "dev", "dev_other", "pretrain"):
            _write_jsonl(tmp / f"{name}.jsonl", rows[name])
        texts = [r["prompt"] + "\n" + r.get("response", "") for r in rows["pretrain"] + rows["train"]]
        tok = build_tokenizer(texts, cfg.vocab_size, split_digits=True)
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=cfg.hidden,
                intermediate_size=4 * cfg.hidden,
                num_hidden_layers=cfg.layers,
                num_attention_heads=cfg.heads,
                num_key_value_heads=cfg.heads,
                max_position_embeddings=512,
                tie_word_embeddings=True,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                bos_token_id=None,
            )
        )
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(tmp / "init")
        tok.save_pretrained(tmp / "init")
        log(
            f"pretraining the student ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
            f"{len(rows['pretrain'])} rows until its accuracy is in {cfg.band}"
        )
        rc = load_config(
            None,
            [
                f"learning_rate={cfg.pretrain_lr}",
                f"max_steps={cfg.pretrain_max_steps}",
                f"per_device_train_batch_size={cfg.pretrain_batch}",
                f"seed={cfg.seed}",
                f"logging_steps={cfg.pretrain_eval_every}",
                "lr_scheduler_type=constant",
                f"dtype={cfg.pretrain_dtype}",
            ],
        )
        data = prepare(str(tmp / "init"), str(tmp / "pretrain.jsonl"), rc.train, rc.render)
        precision = resolve_precision("float32")
        dev = load_rows(tmp / "dev.jsonl", need_response=False, need_answer=True)
        dev_other = load_rows(tmp / "dev_other.jsonl", need_response=False, need_answer=True)
        gen = GenConfig(max_new_tokens=getattr(cfg, "dev_max_new_tokens", 64), batch_size=128)
        gen_other = GenConfig(max_new_tokens=160, batch_size=128)
        history: list[dict] = []
        chosen: dict = {}

        class Pick(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kw):
                if state.global_step % cfg.pretrain_eval_every or state.global_step < cfg.min_steps:
                    return control
                acc = metrics(evaluate_model(model, tok, dev, rc.render, gen, precision, progress=False))["accuracy"]
                point = {"step": state.global_step, "dev_accuracy": acc, "dev_other_accuracy": None}
                lo, hi = cfg.band
                if state.global_step >= cfg.min_steps and lo <= acc <= hi:  # only then: generation is slow
                    point["dev_other_accuracy"] = metrics(
                        evaluate_model(model, tok, dev_other, rc.render, gen_other, precision, progress=False)
                    )["accuracy"]
                history.append(point)
                other = point["dev_other_accuracy"]
                log(
                    f"  pretraining step {state.global_step}: dev accuracy {100 * acc:.1f}% (style S)"
                    + ("" if other is None else f", {100 * other:.1f}% in style T under the other prompt")
                )
                if other is not None and other >= cfg.min_other_accuracy:
                    model.save_pretrained(tmp / "student")
                    chosen.update(step=state.global_step, dev_accuracy=acc, dev_other_accuracy=other)
                    control.should_training_stop = True
                return control

        trainer = make_trainer(model, data, rc.train, tmp / "pretrain-trainer", progress=progress, callbacks=[Pick()])
        trainer.train()
        shutil.rmtree(tmp / "pretrain-trainer", ignore_errors=True)
        if not chosen:
            raise T3SError(
                f"the student never reached a dev accuracy in {cfg.band} with at least "
                f"{cfg.min_other_accuracy:.0%} in the teacher's style within {cfg.pretrain_max_steps} steps "
                f"(last: {history[-1] if history else None}); change the world settings"
            )
        tok.save_pretrained(tmp / "student")
        from t3s.models import device_info

        info = {
            "kind": "t3s-testbed",
            "fingerprint": fp,
            "rows_fingerprint": rows_fingerprint(rows),
            "config": dataclasses.asdict(cfg),
            "student": chosen,
            "source": "pretrained here",
            "pretraining": history,
            "seconds": time.perf_counter() - t0,
            "built_on": device_info("cpu"),
            "files": [
                "student/",
                "init/",
                "train.jsonl",
                "heldout.jsonl",
                "dev.jsonl",
                "dev_other.jsonl",
                "pretrain.jsonl",
                "run.yaml",
            ],
        }
        write_json(tmp / "world.json", info)
    _write_run_config(out, cfg)
    log(
        f"testbed world written to {out}: student picked at pretraining step {chosen['step']} (dev accuracy "
        f"{100 * chosen['dev_accuracy']:.1f}% in style S, {100 * chosen['dev_other_accuracy']:.1f}% in style T under "
        f"the other prompt), {info['seconds']:.0f}s"
    )
    return info
