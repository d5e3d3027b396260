import json
import re

import pytest

from t3s import T3SError
from t3s.graders import extract_answer, is_correct
from t3s.testbed import WorldConfig, build_world, columns, make_rows, student_trace, teacher_trace


def test_world_rows_are_deterministic_per_seed():
    small = dict(n_train=20, n_heldout=10, n_dev=10, n_pretrain=200)
    a, b = make_rows(WorldConfig(seed=3, **small)), make_rows(WorldConfig(seed=3, **small))
    assert a == b
    assert make_rows(WorldConfig(seed=4, **small))["train"] != a["train"]
    ids = [r["id"] for split in a.values() for r in split]
    assert len(ids) == len(set(ids))
    prompts = [r["prompt"] for k in ("train", "heldout", "dev") for r in a[k]]
    assert len(prompts) == len(set(prompts))  # no prompt in two splits


def test_every_trace_is_correct_and_both_styles_agree():
    rows = make_rows(WorldConfig(n_train=200, n_heldout=5, n_dev=5, n_pretrain=500))
    for r in rows["train"]:
        a, b = map(int, re.findall(r"\d+", r["prompt"]))
        assert r["answer"] == str(a + b)
        assert extract_answer(r["response"]) == r["answer"]
        assert extract_answer(student_trace(a, b)) == extract_answer(teacher_trace(a, b)) == str(a + b)
        assert is_correct(extract_answer(r["response"]), r["answer"])
        # every column line of the teacher is true arithmetic
        for x, y, cin, s, d, cout in columns(a, b):
            assert x + y + cin == s and s % 10 == d and s // 10 == cout
            assert f"{x} + {y} + carry {cin} = {s}, write {d}, carry {cout}." in r["response"]
    for r in rows["pretrain"]:
        if r["prompt"].startswith("Add "):
            assert extract_answer(r["response"]) == r["answer"]


def test_build_caches_and_refuses_other_settings(tmp_path):
    tiny = WorldConfig(
        n_train=16,
        n_heldout=8,
        n_dev=8,
        n_pretrain=64,
        layers=1,
        hidden=32,
        heads=2,
        pretrain_max_steps=2,
        pretrain_eval_every=1,
        pretrain_batch=8,
        band=(0.0, 1.0),
        min_other_accuracy=0.0,
        min_steps=1,
    )
    info = build_world(tmp_path / "w", tiny, progress=False, log=lambda *a: None)
    assert info["student"]["step"] == 1
    for f in ("student/config.json", "train.jsonl", "heldout.jsonl", "run.yaml", "world.json"):
        assert (tmp_path / "w" / f).exists(), f
    msgs = []
    assert build_world(tmp_path / "w", tiny, progress=False, log=msgs.append)["fingerprint"] == info["fingerprint"]
    assert "cached" in msgs[0]
    with pytest.raises(T3SError, match="other settings"):
        build_world(tmp_path / "w", WorldConfig(seed=1), progress=False, log=lambda *a: None)
    rows = [json.loads(x) for x in open(tmp_path / "w" / "train.jsonl")]
    assert len(rows) == 16 and all(set(r) == {"id", "prompt", "response", "answer"} for r in rows)


def test_the_shipped_student_belongs_to_the_default_world():
    """t3s ships the default world's pretrained student (make demo must not pretrain for minutes); it is used only
    for exactly the settings and data rows it was built from. Changing WorldConfig's defaults or the row generator
    without re-shipping fails here: rebuild with `t3s testbed build --out DIR --rebuild` and copy DIR/student and
    DIR/world.json into t3s/worlds/arithmetic/ (docs/testbed.md)."""
    from t3s.testbed import SHIPPED, shipped_world

    assert (SHIPPED / "student" / "model.safetensors").exists()
    cfg = WorldConfig()
    info = shipped_world(cfg, make_rows(cfg))
    assert info is not None, "the shipped student does not match the default world: re-ship it (see docstring)"
    assert info["config"]["pretrain_dtype"] == "bfloat16"  # fixed, not auto: one world whatever the CPU
    for other in (WorldConfig(seed=1), WorldConfig(pretrain_dtype="float32")):  # another world: not shipped
        assert shipped_world(other, make_rows(other)) is None


def test_default_build_copies_the_shipped_student_without_pretraining(tmp_path):
    import filecmp

    from t3s.testbed import SHIPPED

    msgs = []
    info = build_world(tmp_path / "w", progress=False, log=msgs.append)
    assert info["source"].startswith("shipped") and "shipped with t3s" in msgs[0]
    assert filecmp.cmp(
        tmp_path / "w" / "student" / "model.safetensors", SHIPPED / "student" / "model.safetensors", shallow=False
    )
    for f in ("train.jsonl", "heldout.jsonl", "run.yaml", "world.json"):
        assert (tmp_path / "w" / f).exists(), f
    with pytest.raises(T3SError, match="--overwrite"):  # --rebuild over an existing world needs --overwrite
        build_world(tmp_path / "w", progress=False, log=lambda *a: None, rebuild=True)


def test_carry_world_student_is_wrong_exactly_on_carry_chains_and_the_teacher_never():
    """World 2: the student's procedure loses a carry into a column whose digits sum to 9; its trace's answer is
    wrong exactly then (checked against plain integer addition), the teacher's never is."""
    import random

    from t3s.graders import extract_answer
    from t3s.testbed import carry_student_trace, carry_teacher_trace, has_chain

    rng, wrong = random.Random(3), 0
    for _ in range(2000):
        a, b = rng.randint(1000, 9999), rng.randint(1000, 9999)
        chain = any(
            (a // 10**i % 10) + (b // 10**i % 10) == 9 and (a % 10**i) + (b % 10**i) >= 10**i for i in range(1, 4)
        )  # a carry arrives at a 9-column
        assert has_chain(a, b) == chain
        assert extract_answer(carry_teacher_trace(a, b)) == str(a + b)
        assert (extract_answer(carry_student_trace(a, b)) == str(a + b)) == (not chain)
        wrong += chain
    assert 0.08 < wrong / 2000 < 0.2  # about one problem in eight: the student's ceiling is near 87%
    assert carry_student_trace(1950, 2059).startswith("Ones: 0 + 9 = 9, write 9, carry 0. Tens: 5 + 5 = 10")
    assert "Hundreds: 9 + 0 + 1 = 10, so I write 0 and carry 1." in carry_teacher_trace(1950, 2059)


def test_carry_world_rows_and_fingerprint_are_its_own():
    from t3s.testbed import CarryWorldConfig, world_fingerprint

    rows = make_rows(CarryWorldConfig())
    assert rows["train"][0]["prompt"].startswith("Compute ") and rows["train"][0]["response"].startswith("Okay, so")
    # the teacher hesitates after every column (the variant that shows the shock, docs/testbed.md)
    assert all(r["response"].count("Hmm, let me make sure.") == 4 for r in rows["train"])
    assert make_rows(CarryWorldConfig(interjection=""))["train"][0]["response"].count("Hmm") == 0
    assert world_fingerprint(CarryWorldConfig()) != world_fingerprint(WorldConfig())
    assert make_rows(CarryWorldConfig()) == rows  # deterministic


def test_carry_world_builds_with_its_own_run_config(tmp_path):
    import yaml

    from t3s.testbed import CarryWorldConfig

    tiny = CarryWorldConfig(
        n_train=16,
        n_heldout=8,
        n_dev=8,
        n_pretrain=64,
        layers=1,
        hidden=32,
        heads=2,
        pretrain_max_steps=2,
        pretrain_eval_every=1,
        pretrain_batch=8,
        band=(0.0, 1.0),
        min_other_accuracy=0.0,
        min_steps=1,
    )
    info = build_world(tmp_path / "w", tiny, progress=False, log=lambda *a: None)
    assert info["config"]["world"] == "carry" and info["source"] == "pretrained here"
    run = yaml.safe_load((tmp_path / "w" / "run.yaml").read_text())
    assert run["probe"]["markers"] == ["Okay, so let me"]
    rows = [json.loads(x) for x in open(tmp_path / "w" / "train.jsonl")]
    assert all(r["response"].startswith("Okay, so let me") for r in rows)


def test_the_shipped_carry_student_belongs_to_world_2():
    """World 2's student ships too (its bf16 pretraining is slow without bf16 hardware): it is used for exactly
    the default CarryWorldConfig and its rows. To re-ship: `t3s testbed build --world carry --out DIR --rebuild`,
    then copy DIR/student and DIR/world.json into t3s/worlds/carry/."""
    from t3s.testbed import SHIPPED_CARRY, CarryWorldConfig, shipped_world

    assert (SHIPPED_CARRY / "student" / "model.safetensors").exists()
    info = shipped_world(CarryWorldConfig(), make_rows(CarryWorldConfig()))
    assert info is not None, "the shipped carry student does not match world 2's defaults: re-ship it"
    assert info["config"]["world"] == "carry" and info["config"]["interjection"] == "Hmm, let me make sure."
    other = CarryWorldConfig(interjection="")  # variant 1: not shipped
    assert shipped_world(other, make_rows(other)) is None
    assert shipped_world(WorldConfig(), make_rows(WorldConfig()))["fingerprint"] != info["fingerprint"]
