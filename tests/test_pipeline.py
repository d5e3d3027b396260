"""`t3s run` end to end on the tiny model: outputs, summary, resume after a kill, --force."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import scalars, started, t3s_here

from t3s.config import load_config
from t3s.pipeline import plan_stages

CONFIG = {
    "modes": ["sft", "t3s", "random"],
    "seeds": [0],
    "train": {"learning_rate": 3e-3, "max_steps": 6, "per_device_train_batch_size": 8, "dtype": "float32"},
    "probe": {"eval_every": 2, "continue_without_dip": True, "markers": ["Ones"], "track_every": 3, "track_subset": 4},
    "eval": {"max_new_tokens": 16, "dtype": "float32"},
    "score": {"dtype": "float32"},
}


@pytest.fixture()
def config(tiny, tmp_path):
    cfg = {
        **CONFIG,
        "student": str(tiny / "model"),
        "train_data": str(tiny / "train.jsonl"),
        "eval_data": str(tiny / "train.jsonl"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def t3s_run(config, out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "t3s", "run", str(config), "--out", str(out), "--quiet", *extra],
        capture_output=True,
        text=True,
    )


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}


def test_run_end_to_end_then_rerun_skips_everything(config, tmp_path):
    out = tmp_path / "run"
    # --verdict first: the probe alone, then what it says; the full run below reuses that probe
    r = t3s_here("run", config, "--out", out, "--quiet", "--verdict")
    assert r.returncode == 0 and "no imitation shock: use SFT" in r.stdout, r.stderr + r.stdout
    assert (out / "verdict.md").exists() and not (out / "seed-0" / "train").exists()
    assert json.loads((out / "verdict.json").read_text())["verdicts"]["0"]["outcome"] == "no-dip"
    t0 = time.perf_counter()
    r = t3s_run(config, out)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "seed-0/probe: done earlier, skipped" in r.stdout
    assert "Verdict, from the probe" in (out / "summary.md").read_text()
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
    # bench.verdict reads the verdict and the outcome back from the run's files
    from bench.verdict import render, seeds_of

    (rec,) = seeds_of(out)
    assert (rec["outcome"], rec["predicts"]) == ("no-dip", False)
    assert (rec["sft"], rec["t3s"]) == (s["rows"][1]["accuracy"], s["rows"][2]["accuracy"])
    assert "Hit rate: " + ("1/1" if rec["t3s"] <= rec["sft"] else "0/1") in render([rec], [])
    # the cost of T3S against SFT alone reads this run's own stage records
    from t3s.cost import run_costs

    (c,) = run_costs(out)["seeds"]
    stage = records(out)
    assert c["t3s"] == pytest.approx(
        sum(
            stage[k]["seconds"]
            for k in ("seed-0__probe", "seed-0__select-t3s", "seed-0__train-t3s", "seed-0__eval-t3s")
        )
        + stage["scores-init"]["seconds"]
        + stage["seed-0__scores-bottleneck"]["seconds"]
    )
    assert 0 < c["sft_alone"] < c["sft_watched"]  # the probe's evaluations are the difference
    # T3S is the whole probe and more (not compared with sft_watched: on a tiny model the evaluation of SFT alone can
    # outlast T3S's training and evaluation together when another job shares the CPU)
    assert c["t3s"] > stage["seed-0__probe"]["seconds"] + stage["seed-0__train-t3s"]["seconds"]
    assert (out / "seed-0" / "probe" / "trajectory.png").exists()
    tracked = [json.loads(x) for x in open(out / "seed-0" / "train" / "t3s" / "trajectory.jsonl")]
    assert [p["step"] for p in tracked] == [0, 3, 6]  # every trained mode is evaluated along the way
    before = records(out)
    r = t3s_here("run", config, "--out", out, "--quiet")  # reruns that skip every stage: in this process
    assert r.returncode == 0 and "running" not in r.stdout and r.stdout.count("done earlier, skipped") == len(before)
    assert records(out) == before
    # trackers change no result: with report_to added nothing is redone, and the table goes to TensorBoard
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["report_to"] = "tensorboard"
    config.write_text(yaml.safe_dump(cfg))
    r = t3s_here("run", config, "--out", out, "--quiet")
    assert r.returncode == 0 and "running" not in r.stdout and "summary sent to tensorboard" in r.stdout, r.stdout
    assert records(out) == before
    table = scalars(out / "tensorboard" / "summary")
    assert table["summary/t3s/accuracy"] == [(0, pytest.approx(s["rows"][2]["accuracy"], rel=1e-5))]
    assert table["summary/t3s/dropped_fraction"] == [(0, pytest.approx(s["rows"][2]["dropped_fraction"], rel=1e-5))]
    # --force select redoes the selections and what depends on them, nothing upstream; the retrained modes log
    # their loss and their tracked accuracy to TensorBoard, in their own directories
    r = t3s_run(config, out, "--force", "select")
    assert r.returncode == 0, r.stderr
    after = records(out)
    redone = {k for k in after if after[k]["produced"] != before[k]["produced"]}
    assert redone == {
        "seed-0__select-t3s",
        "seed-0__select-random",
        "seed-0__train-t3s",
        "seed-0__train-random",
        "seed-0__eval-t3s",
        "seed-0__eval-random",
    }
    events = scalars(out / "seed-0" / "train" / "t3s" / "tensorboard")
    assert [step for step, _ in events["train/loss"]] == list(range(1, 7))
    tracked = [json.loads(x) for x in open(out / "seed-0" / "train" / "t3s" / "trajectory.jsonl")]
    assert events["train/t3s/train_accuracy"] == [
        (p["step"], pytest.approx(p["train_accuracy"], rel=1e-5)) for p in tracked
    ]
    assert not (out / "seed-0" / "train" / "sft" / "tensorboard").exists()  # not retrained
    # probe.track_modes: the controls whose path nobody reads stop paying for it. Only the untracked mode is
    # retrained (its fingerprint is that of a run with tracking off), and it writes no trajectory
    before = records(out)
    r = t3s_here("run", config, "--out", out, "--quiet", "probe.track_modes=[t3s]")
    assert r.returncode == 0, r.stderr + r.stdout
    after = records(out)
    assert {k for k in after if after[k]["produced"] != before[k]["produced"]} == {
        "seed-0__train-random",
        "seed-0__eval-random",
    }
    assert not (out / "seed-0" / "train" / "random" / "trajectory.jsonl").exists()
    assert (out / "seed-0" / "train" / "t3s" / "trajectory.jsonl").exists()
    r = t3s_here("run", config, "--out", out, "--quiet", "probe.track_modes=[dft]")
    assert r.returncode != 0 and "probe.track_modes names dft, not in modes" in r.stderr + r.stdout


def test_killed_run_resumes_without_redoing_finished_stages(config, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "t3s", "run", str(config), "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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


def test_controls_of_the_papers_claims_as_modes(tiny, tmp_path):
    """t3s-final, excess-loss and dft run as modes of `t3s run`; each selection is recomputed here from the run's
    own score files, with `threshold: auto`. (t3s-early: test_t3s_early_on_the_testbed_world.)"""
    import numpy as np

    from t3s.score import load_scores
    from t3s.select import groups, load_selection

    cfg = {
        **CONFIG,
        "student": str(tiny / "model"),
        "train_data": str(tiny / "train.jsonl"),
        "modes": ["sft", "random"],
        "threshold": "auto",
        "rrt": False,
        "probe": {**CONFIG["probe"], "track_every": 0},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert t3s_run(tmp_path / "run.yaml", out).returncode == 0
    before = records(out)
    cfg["modes"] = ["sft", "random", "t3s-final", "excess-loss", "dft", "eaft", "memft", "asft"]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    r = t3s_run(tmp_path / "run.yaml", out)
    assert r.returncode == 0, r.stderr + r.stdout
    after = records(out)  # adding the controls redoes nothing of the modes that do not read their scores
    assert all(after[k]["produced"] == before[k]["produced"] for k in before), [
        k for k in before if after[k]["produced"] != before[k]["produced"]
    ]
    seed = out / "seed-0"
    c0 = np.concatenate(load_scores(out / "scores-init").logprobs)
    cb = np.concatenate(load_scores(seed / "scores-bottleneck").logprobs)
    ct = np.concatenate(load_scores(seed / "scores-final").logprobs)

    def keep(mode):
        return np.concatenate(load_selection(seed / "selections" / mode).keep)

    settled = (c0 > np.log(0.99)) & (ct > np.log(0.99))
    np.testing.assert_array_equal(keep("t3s-final"), ~((ct - c0 > 0) & ~settled))
    n_keep = int((~groups(cb - c0, c0, "auto")[0]).sum())  # as many as t3s keeps at the bottleneck
    k = keep("excess-loss")
    assert k.sum() == n_keep and (ct - c0)[k].min() >= (ct - c0)[~k].max()
    dft = json.loads((seed / "train" / "dft" / "train.json").read_text())
    assert dft["config"]["trainer"]["loss_type"] == "dft" and dft["selection"] is None
    # DFT weights each token's NLL by its probability: on the near-uniform tiny model (NLL ≈ 6 at step 1, every
    # p < 0.01) the loss is p·(−log p) < 0.05, where plain SFT's is about 6
    assert dft["log_history"][0]["loss"] < 0.1
    for mode in ("eaft", "memft", "asft"):  # the per-token loss modes: their loss, no selection, every token
        rec = json.loads((seed / "train" / mode / "train.json").read_text())
        assert rec["config"]["loss"] == mode and rec["selection"] is None and rec["config"]["trainer"] == {}
    s = json.loads((out / "summary.json").read_text())
    methods = ["base", "sft", "random", "t3s-final", "excess-loss", "dft", "eaft", "memft", "asft"]
    assert [row["method"] for row in s["rows"]] == methods
    dropped = {row["method"]: row["dropped_fraction"] for row in s["rows"]}
    assert dropped["dft"] == dropped["eaft"] == dropped["asft"] == 0.0 and dropped["memft"] is None
    from bench.losses import table  # the losses' comparison table reads these files

    text = "\n".join(table(out, "tiny"))
    assert all(f"| {m} |" in text for m in ("sft", "dft", "eaft", "memft", "asft"))
    # `t3s run --plan` lists the stages the run took (the θ_T scores of the controls included), in its order
    assert started(out, last=True) == [k for k, _ in plan_stages(load_config(tmp_path / "run.yaml", [], flat=()))]


def test_t3s_early_on_the_testbed_world(tmp_path):
    """t3s-early, t3s-step and t3s-recovery on the shipped testbed world (the tiny model shows no dip, so it has no
    "before the bottleneck"): the probe keeps its checkpoints by itself, the early scores come from the evaluated
    checkpoint closest to half the bottleneck step (t3s-recovery: twice it, after it; t3s-step: at delta_step), and
    each selection is the t3s rule on them."""
    import numpy as np

    from t3s.score import load_scores
    from t3s.select import load_selection
    from t3s.testbed import build_world

    build_world(tmp_path / "w", progress=False, log=lambda *a: None)
    cfg = yaml.safe_load((tmp_path / "w" / "run.yaml").read_text())
    cfg.update(modes=["t3s-early", "t3s-step", "t3s-recovery"], seeds=[0], rrt=False, delta_step=4, threshold=0.0)
    cfg["probe"].update(subset=16, track_every=0, keep_all=False, eval_every=4)
    cfg["train"].update(max_steps=20, per_device_train_batch_size=8)
    heldout = (tmp_path / "w" / "heldout.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "heldout16.jsonl").write_text("".join(heldout[:16]))
    cfg["eval_data"] = str(tmp_path / "heldout16.jsonl")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    r = t3s_run(tmp_path / "run.yaml", out)
    assert r.returncode == 0, r.stderr + r.stdout
    b = json.loads((out / "seed-0" / "probe" / "probe.json").read_text())["bottleneck_step"]
    early = load_scores(out / "seed-0" / "scores-early")
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "seed-0" / "probe" / "checkpoints").glob("step-*"))
    want = min((k for k in steps if 0 < k < b), key=lambda k: (abs(k - b / 2), k))
    assert early.meta["model_step"] == want
    c0 = np.concatenate(load_scores(out / "scores-init").logprobs)
    keep = np.concatenate(load_selection(out / "seed-0" / "selections" / "t3s-early").keep)
    np.testing.assert_array_equal(keep, ~(np.concatenate(early.logprobs) - c0 > 0))
    # t3s-step (one entry in t3s.modes): the t3s rule on the scores of the checkpoint at delta_step
    at = load_scores(out / "seed-0" / "scores-step-4")
    assert at.meta["model_step"] == 4 and str(at.meta["model"]).endswith("checkpoints/step-4")
    sel = load_selection(out / "seed-0" / "selections" / "t3s-step")
    np.testing.assert_array_equal(np.concatenate(sel.keep), ~(np.concatenate(at.logprobs) - c0 > 0))
    assert json.loads((out / "seed-0" / "train" / "t3s-step" / "train.json").read_text())["selection"]
    # t3s-recovery (one entry in t3s.modes, with its checkpoint): the evaluated checkpoint nearest 2 × θ_b's step
    rec = load_scores(out / "seed-0" / "scores-recovery")
    assert rec.meta["model_step"] == min((k for k in steps if k > b), key=lambda k: (abs(k - 2 * b), k))
    sel = load_selection(out / "seed-0" / "selections" / "t3s-recovery")
    np.testing.assert_array_equal(np.concatenate(sel.keep), ~(np.concatenate(rec.logprobs) - c0 > 0))
    assert started(out) == [k for k, _ in plan_stages(load_config(tmp_path / "run.yaml", [], flat=()))]
    # the verdict in the summary is the rule on this probe's own files, computed here from its points and scores
    from t3s.verdict import decide

    rec = json.loads((out / "seed-0" / "probe" / "probe.json").read_text())
    points = [json.loads(x) for x in open(out / "seed-0" / "probe" / "trajectory.jsonl")]
    with np.load(out / "seed-0" / "probe" / "token_logprobs.npz") as z:
        lp = {int(k[5:]): z[k] for k in z.files if k.startswith("step_")}
    want = decide(points, rec["margin"], b, rec["completed"], lp, 0.0)
    got = json.loads((out / "summary.json").read_text())["verdicts"]["0"]
    assert got == json.loads(json.dumps(want.as_dict())) and got["outcome"] in ("t3s", "sft", "degenerate")
    assert got["anchors"] == pytest.approx(float((lp[b] - lp[0] > 0).mean()))  # τ = 0


def test_a_malformed_eval_file_stops_the_run_before_the_probe(config, tmp_path):
    # the probe reads no held-out prompt at probe.heldout_subset -1, so nothing else would read the eval file
    # before the eval stage, after the probe and every training
    bad = tmp_path / "heldout.jsonl"
    bad.write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    cfg = yaml.safe_load(config.read_text())
    cfg["eval_data"] = str(bad)
    cfg["probe"]["heldout_subset"] = -1
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    r = t3s_here("run", config, "--out", out, "--quiet")
    assert r.returncode != 0 and f"{bad}:2" in r.stderr, r.stderr + r.stdout
    assert not (out / "seed-0").exists() and not list((out / "stages").glob("*.json"))
