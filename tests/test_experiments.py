"""The SmolLM2 experiment (experiments/smollm.py, `make experiment-smollm`) at smoke size on the tiny model: its
data (verified teacher traces, a held-out split with unseen names and objects), its config, and every step
(prepare, t3s run, t3s report, RESULTS.md) in well under a minute. The real model's conversion is `make bench`'s
(t3s/smollm.py), which needs the bench extra."""

import json
import re

import pytest
import yaml

from experiments.smollm import NAMES, SIZES, SPLIT_NAMES, SPLIT_THINGS, THINGS, main, make_rows, paired
from t3s.config import load_config

MUL = r"(\w+) has (\d) boxes with (\d) (\w+) in each box\. How many \4 does \1 have in total\?"


def test_rows_are_verified_word_problems_with_an_unseen_held_out_split():
    rows = make_rows(SIZES["full"])
    assert len(rows["train"]) == SIZES["full"].train and len(rows["heldout"]) == SIZES["full"].heldout
    for r in rows["train"] + rows["heldout"]:
        # the gold answer recomputed from the prompt's own numbers
        add = re.fullmatch(r"(\w+) has (\d) (\w+) and gets (\d) more\. How many \3 does \1 have now\?", r["prompt"])
        mul = re.fullmatch(MUL, r["prompt"])
        assert add or mul, r["prompt"]
        a, b = (int(add[2]), int(add[4])) if add else (int(mul[2]), int(mul[3]))
        assert r["answer"] == str(a + b if add else a * b)
        name, thing = (add[1], add[3]) if add else (mul[1], mul[4])
        heldout = r["id"].startswith("heldout")
        assert (name in NAMES[SPLIT_NAMES:]) == heldout and (thing in THINGS[SPLIT_THINGS:]) == heldout
        if not heldout:  # R1-style: thinks at length, checks itself, ends in the right boxed answer
            resp = r["response"]
            assert resp.startswith("<think>\n") and "\n</think>\n\n" in resp
            assert re.findall(r"\\boxed\{(\d+)\}", resp) == [r["answer"]]
            assert any(w in resp for w in ("Wait", "Hmm")) and len(resp.split()) > 40
    kinds = [("gets" in r["prompt"]) for r in rows["train"]]
    assert sum(kinds) == len(kinds) // 2  # half addition, half multiplication
    assert make_rows(SIZES["full"]) == rows  # deterministic


def test_paired_difference_and_its_standard_error():
    a = {"1": True, "2": False, "3": True, "4": False}
    b = {"1": True, "2": True, "3": False, "4": True, "5": True}  # "5" is not in both: not counted
    d, se, n = paired(a, b)
    diffs = [0.0, 1.0, -1.0, 1.0]
    mean = sum(diffs) / 4
    sd = (sum((x - mean) ** 2 for x in diffs) / 3) ** 0.5
    assert n == 4 and d == pytest.approx(mean) and se == pytest.approx(sd / 2)


def test_the_experiment_end_to_end_at_smoke_size(tiny, tmp_path):
    out = tmp_path / "exp"
    args = ["--out", str(out), "--size", "smoke", "--student", str(tiny / "model")]
    assert main(["prepare", *args]) == 0
    cfg = load_config(str(out / "run.yaml"))  # the config t3s run reads, validated
    assert cfg.modes == list(SIZES["smoke"].modes) and cfg.seeds == [0] and cfg.rrt
    conf = yaml.safe_load((out / "run.yaml").read_text())
    assert conf["probe"]["subset"] == SIZES["smoke"].probe_subset and conf["train"]["max_steps"] == 2
    before = (out / "train.jsonl").read_text()
    assert main(["prepare", *args]) == 0 and (out / "train.jsonl").read_text() == before  # kept, not redone
    assert main(["all", *args]) == 0
    screened = json.loads((out / "screen.json").read_text())["tasks"]
    assert len(screened) == 8 and all(0 <= r["accuracy"] <= 1 and r["prompts"] == 48 for r in screened.values())
    assert (out / "run" / "report" / "report.html").exists()
    text = (out / "RESULTS.md").read_text()
    summary = json.loads((out / "run" / "summary.json").read_text())
    for row in summary["rows"]:  # the table is the run's own
        assert f"| {row['method']} | {100 * row['accuracy']:.1f}" in text
    probe = json.loads((out / "run" / "seed-0" / "probe" / "probe.json").read_text())
    assert f"{100 * probe['start_accuracy']:.1f}% at step 0" in text
    assert "## Anchors and yet-to-learn tokens" in text and "| anchor token | count | share |" in text
    assert (out / "dip-samples.json").exists() and "(the bottleneck)" in text


def test_the_sampled_teacher_experiment_end_to_end_at_smoke_size(tiny, tmp_path):
    """experiments/sampled.py on the tiny model: the teacher's traces come from `t3s traces` (sampled, several kept
    per prompt, the teacher asked with a system prompt and a worked example the training rows do not hold), then
    t3s run, t3s report and RESULTS.md with the verdict, the regime numbers, paired differences and the cost."""
    from experiments import sampled

    out = tmp_path / "sampled"
    args = ["--out", str(out), "--size", "smoke", "--student", str(tiny / "model")]
    assert sampled.main(["prepare", *args]) == 0
    meta = json.loads((out / "traces" / "traces.json").read_text())
    assert (
        meta["inputs"]["sampling"]["system_prompt"] == sampled.SYSTEM_PROMPT
        and "few_shot" in meta["inputs"]["sampling"]
    )
    assert meta["settings"]["keep"] == 2 and meta["settings"]["temperature"] == sampled.SIZES["smoke"].temperature
    rows = [json.loads(x) for x in (out / "traces" / "train.jsonl").read_text().splitlines()]
    prompts = {json.loads(x)["id"]: json.loads(x)["prompt"] for x in (out / "prompts.jsonl").read_text().splitlines()}
    per = [r["id"].split("#")[0] for r in rows]
    assert rows and len(set(r["id"] for r in rows)) == len(rows) and max(per.count(p) for p in per) <= 2
    assert meta["summary"]["rows"] == len(rows) and meta["seconds"] > 0
    assert all(r["id"].split("#")[0] in prompts and r["prompt"] == prompts[r["id"].split("#")[0]] for r in rows)
    assert not any(sampled.SYSTEM_PROMPT in json.dumps(r) for r in rows)  # the teacher's voice stays teacher side
    cfg = load_config(str(out / "run.yaml"))
    assert cfg.train_data.endswith("traces/train.jsonl") and cfg.seeds == [0] and cfg.rrt
    assert sampled.SIZES["full"].teacher_grader == "math" and len(sampled.SIZES["full"].seeds) >= 3
    assert sampled.main(["all", *args, "seeds=[0]"]) == 0
    text = (out / "RESULTS.md").read_text()
    summary = json.loads((out / "run" / "summary.json").read_text())
    for row in summary["rows"]:
        assert f"| {row['method']} | {100 * row['accuracy']:.1f}" in text
    assert "anchors τ=0 %" in text and "T3S / SFT alone" in text and "| t3s | " in text
    assert not (out / "screen.json").exists()  # the voice screen is its own step, outside `all`
    assert sampled.main(["screen", *args]) == 0 and sampled.main(["results", *args]) == 0
    text = (out / "RESULTS.md").read_text()
    voices = json.loads((out / "screen.json").read_text())["voices"]
    assert list(voices) == list(sampled.VOICES) and "Choosing the voice" in text
    for name, v in voices.items():  # each voice's row is its own `t3s traces` directory's solve rate
        assert f"| {name} | {100 * v['solve_rate']:.1f} |" in text
    verdict = summary["verdicts"]["0"]
    assert verdict["headline"] in text and verdict["anchors_zero"] is not None
    assert (out / "run" / "report" / "report.html").exists()
