"""The command line as a user runs it: errors, exit codes, no partial artifacts, and the whole chain."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import t3s_here, write_jsonl


def t3s(*args):
    return subprocess.run([sys.executable, "-m", "t3s", *map(str, args)], capture_output=True, text=True)


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"prompt": "q", "response": "r"', "bad.jsonl:2: bad JSON"),
        ('{"prompt": "q"}', "bad.jsonl:2: missing field 'response'"),
        ('{"prompt": "q", "response": ""}', "bad.jsonl:2: field 'response' is empty"),
        ('{"prompt": ["q"], "response": "r"}', "bad.jsonl:2: prompt message 0 must be an object"),
    ],
)
def test_score_bad_input_one_clear_error_and_no_output(tiny, tmp_path, bad, message):
    data = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "What is 1 + 1?", "response": "2"}', bad])
    r = t3s_here("score", "--model", tiny / "model", "--data", data, "--out", tmp_path / "s", "--quiet")
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("error:") == 1
    assert not (tmp_path / "s").exists() and leftovers(tmp_path) == []


def test_train_and_rrt_bad_input(tiny, tmp_path):
    r = t3s_here("train", "--model", tiny / "model", "--data", tiny / "train.jsonl", "--out", tmp_path / "t", "lr=1")
    assert r.returncode == 2 and "unknown config key 'lr'" in r.stderr and not (tmp_path / "t").exists()
    r = t3s_here("train", "--model", tmp_path / "nope", "--data", tiny / "train.jsonl", "--out", tmp_path / "t")
    assert r.returncode == 2 and "nope: no such model directory" in r.stderr and not (tmp_path / "t").exists()
    r = t3s_here(
        "rrt",
        "--init",
        tiny / "model",
        "--bottleneck",
        tiny / "model",
        "--final",
        tmp_path / "nope",
        "--out",
        tmp_path / "r",
    )
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "r").exists()
    r = t3s_here("score", "--model", tiny / "model", "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "s")
    assert r.returncode == 2 and "missing.jsonl: no such file" in r.stderr
    r = t3s_here(
        "score",
        "--model",
        tiny / "model",
        "--data",
        tiny / "train.jsonl",
        "--out",
        tmp_path / "s",
        "--dtype",
        "float16",
    )
    assert r.returncode == 2 and "float16 is not supported on CPU" in r.stderr and not (tmp_path / "s").exists()


def test_whole_chain_score_select_train_rrt(tiny, tmp_path):
    m, d = tiny / "model", tiny / "train.jsonl"
    r = t3s(
        "train",
        "--model",
        m,
        "--data",
        d,
        "--out",
        tmp_path / "sft",
        "--quiet",
        "max_steps=4",
        "save_steps=2",
        "keep_checkpoints=true",
        "learning_rate=1e-2",
        "per_device_train_batch_size=4",
    )
    assert r.returncode == 0, r.stderr
    theta_b = tmp_path / "sft" / "checkpoints" / "checkpoint-2"
    for name, model in (("s0", m), ("sb", theta_b)):
        r = t3s_here("score", "--model", model, "--data", d, "--out", tmp_path / name, "--quiet", "--dtype", "float32")
        assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "s0" / "meta.json").read_text())
    assert meta["self_check_max_abs_diff"] < 1e-4 and set(meta["fingerprints"]) == {"data", "tokenizer", "template"}
    counts = {}
    for mode in ("t3s", "reverse", "static-high", "static-low", "random", "none"):
        r = t3s_here(  # select reads score files only: in this process (train, score and rrt run as commands)
            "select",
            "--init",
            tmp_path / "s0",
            "--bottleneck",
            tmp_path / "sb",
            "--mode",
            mode,
            "--out",
            tmp_path / f"sel-{mode}",
        )
        assert r.returncode == 0, r.stderr
        sel = json.loads((tmp_path / f"sel-{mode}" / "selection.json").read_text())
        counts[mode] = sel["stats"]["dropped_tokens"]
        assert sel["bottleneck_step"] == 2
    n = sel["stats"]["tokens"]
    assert counts["t3s"] == counts["static-high"] == counts["static-low"] == counts["random"]
    assert counts["reverse"] == n - counts["t3s"] and counts["none"] == 0
    r = t3s_here(
        "select",
        "--init",
        tmp_path / "s0",
        "--bottleneck",
        tmp_path / "sb",
        "--mode",
        "t3s",
        "--out",
        tmp_path / "sel-t3s",
    )
    assert r.returncode == 2 and "already exists" in r.stderr
    r = t3s(
        "train",
        "--model",
        m,
        "--data",
        d,
        "--out",
        tmp_path / "t3s",
        "--selection",
        tmp_path / "sel-t3s",
        "--quiet",
        "max_steps=2",
        "per_device_train_batch_size=4",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "t3s" / "train.json").read_text())["kept_tokens"] == n - counts["t3s"]
    r = t3s_here(
        "rrt", "--init", m, "--bottleneck", theta_b, "--final", tmp_path / "sft", "--out", tmp_path / "rrt", "--quiet"
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rrt" / "model.safetensors").exists() and (tmp_path / "rrt" / "tokenizer.json").exists()


def test_help_and_version():
    r = t3s("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("score", "select", "train", "rrt", "tiny"))
    script = Path(sys.executable).parent / "t3s"  # the installed console script
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("t3s ")
