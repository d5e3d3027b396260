import json
import re

import pytest

from t3s import T3SError
from t3s.evaluate import extract_answer, is_correct
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
    tiny = WorldConfig(n_train=16, n_heldout=8, n_dev=8, n_pretrain=64, layers=1, hidden=32, heads=2,
                       pretrain_max_steps=2, pretrain_eval_every=1, pretrain_batch=8, band=(0.0, 1.0), min_other_accuracy=0.0, min_steps=1)
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
    assert filecmp.cmp(tmp_path / "w" / "student" / "model.safetensors", SHIPPED / "student" / "model.safetensors",
                       shallow=False)
    for f in ("train.jsonl", "heldout.jsonl", "run.yaml", "world.json"):
        assert (tmp_path / "w" / f).exists(), f
    with pytest.raises(T3SError, match="--overwrite"):  # --rebuild over an existing world needs --overwrite
        build_world(tmp_path / "w", progress=False, log=lambda *a: None, rebuild=True)
