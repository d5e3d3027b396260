"""`t3s run` end to end on the tiny model: outputs, summary, resume after a kill, --force."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

CONFIG = {
    "modes": ["sft", "t3s", "random"],
    "seeds": [0],
    "train": {"learning_rate": 3e-3, "max_steps": 6, "per_device_train_batch_size": 8, "dtype": "float32"},
    "probe": {"eval_every": 2, "continue_without_dip": True, "markers": ["Ones"], "track_every": 3,
              "track_subset": 4},
    "eval": {"max_new_tokens": 16, "dtype": "float32"},
    "score": {"dtype": "float32"},
}


@pytest.fixture()
def config(tiny, tmp_path):
    cfg = {**CONFIG, "student": str(tiny / "model"), "train_data": str(tiny / "train.jsonl"),
           "eval_data": str(tiny / "train.jsonl")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def t3s_run(config, out, *extra):
    return subprocess.run([sys.executable, "-m", "t3s", "run", str(config), "--out", str(out), "--quiet", *extra],
                          capture_output=True, text=True)


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}


def test_run_end_to_end_then_rerun_skips_everything(config, tmp_path):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    r = t3s_run(config, out)
    assert r.returncode == 0, r.stderr + r.stdout
    assert time.perf_counter() - t0 < 180
    s = json.loads((out / "summary.json").read_text())
    assert [row["method"] for row in s["rows"]] == ["base", "sft", "t3s", "random", "rrt"]
    assert "| method | accuracy % |" in r.stdout and (out / "summary.md").exists() and (out / "run.log").exists()
    # every number in the table comes from a file in the run directory
    for row in s["rows"][1:]:
        m = json.loads((out / "seed-0" / "eval" / row["method"] / "metrics.json").read_text())["metrics"]
        assert row["accuracy"] == m["accuracy"] and row["mean_tokens"] == m["mean_tokens"]
        lines = [json.loads(x) for x in open(out / "seed-0" / "eval" / row["method"] / "samples.jsonl")]
        assert m["accuracy"] == sum(x["correct"] for x in lines) / len(lines)
    sel = json.loads((out / "seed-0" / "selections" / "t3s" / "selection.json").read_text())
    assert s["rows"][2]["dropped_fraction"] == sel["stats"]["dropped_fraction"]
    assert (out / "seed-0" / "probe" / "trajectory.png").exists()
    tracked = [json.loads(x) for x in open(out / "seed-0" / "train" / "t3s" / "trajectory.jsonl")]
    assert [p["step"] for p in tracked] == [0, 3, 6]  # every trained mode is evaluated along the way
    before = records(out)
    t0 = time.perf_counter()
    r = t3s_run(config, out)
    assert r.returncode == 0 and "running" not in r.stdout and r.stdout.count("done earlier, skipped") == len(before)
    assert records(out) == before
    # --force select redoes the selections and what depends on them, nothing upstream
    r = t3s_run(config, out, "--force", "select")
    assert r.returncode == 0, r.stderr
    after = records(out)
    redone = {k for k in after if after[k]["produced"] != before[k]["produced"]}
    assert redone == {"seed-0__select-t3s", "seed-0__select-random", "seed-0__train-t3s", "seed-0__train-random",
                      "seed-0__eval-t3s", "seed-0__eval-random"}


def test_killed_run_resumes_without_redoing_finished_stages(config, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "t3s", "run", str(config), "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = out / "stages" / "scores-init.json"
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists()
    done = records(out)
    assert "seed-0__probe" in done and not any("__train-" in k or "__eval-" in k for k in done)
    r = t3s_run(config, out)
    assert r.returncode == 0, r.stderr + r.stdout
    for key in done:
        assert records(out)[key]["produced"] == done[key]["produced"], key  # not redone
    assert r.stdout.count("done earlier, skipped") >= len(done)
    assert (out / "summary.json").exists()
    assert not [p for p in out.rglob(".*.tmp")]


def test_no_dip_stops_with_an_explanation(config, tmp_path):
    r = t3s_run(config, tmp_path / "run", "probe.continue_without_dip=false")
    # the random-init tiny student starts at 0% accuracy: no dip is possible
    assert r.returncode == 3
    assert "no imitation shock" in r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "stopped after the probe" in s["stopped"]
    assert not (tmp_path / "run" / "scores-init").exists()
    # the report of a stopped run says so plainly
    from t3s.report import build_report

    page = build_report(tmp_path / "run", gradients=False, log=lambda *a: None).read_text()
    assert "<h2>Stopped</h2>" in page and "no imitation shock" in page
