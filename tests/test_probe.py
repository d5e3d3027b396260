import json

import numpy as np
import pytest
from conftest import scalars

from t3s import T3SError
from t3s.probe import find_bottleneck, online_should_stop


def traj(accs, every=5):
    return [{"step": i * every, "train_accuracy": a} for i, a in enumerate(accs)]


@pytest.mark.parametrize(
    "accs, step, dip",
    [
        ([0.70, 0.62, 0.55, 0.60, 0.90], 10, True),  # a clear shock
        ([0.70, 0.55, 0.60, 0.55, 0.90], 5, True),  # a tie goes to the earliest
        ([0.70, 0.69, 0.72, 0.80], 5, False),  # a 1-point wobble is below the 3-point margin
        ([0.70, 0.67, 0.80], 5, True),  # exactly the margin counts
        ([0.10, 0.20, 0.30], 5, False),  # monotone rise: no dip; the lowest trained checkpoint is still reported
        ([0.50, 0.50, 0.50], 5, False),
    ],
)
def test_find_bottleneck(accs, step, dip):
    b = find_bottleneck(traj(accs), margin=0.03)
    assert (b["bottleneck_step"], b["dip_found"]) == (step, dip)
    assert b["start_accuracy"] == accs[0] and b["dip_depth"] == pytest.approx(accs[0] - min(accs[1:]))


def test_find_bottleneck_needs_step_zero():
    with pytest.raises(T3SError, match="starts with the evaluation of θ_0"):
        find_bottleneck([{"step": 5, "train_accuracy": 0.5}], 0.03)
    assert find_bottleneck(traj([0.5]), 0.03)["bottleneck_step"] is None


@pytest.mark.parametrize(
    "accs, stop",
    [
        ([0.7, 0.5, 0.6, 0.65], True),  # min at 1, then two evaluations >= min + 0.05
        ([0.7, 0.5, 0.6], False),  # only one evaluation after the minimum
        ([0.7, 0.5, 0.6, 0.52], False),  # the last one is not above min + margin
        ([0.7, 0.5, 0.6, 0.65, 0.45], False),  # a new minimum resets the count
        ([0.7, 0.5, 0.6, 0.65, 0.45, 0.55, 0.56], True),
        ([0.7, 0.6, 0.5, 0.4], False),  # still falling
        ([0.2, 0.3, 0.4, 0.5], False),  # a monotone rise is no dip: never stop (a later shock may come)
        ([0.2, 0.18, 0.3, 0.4], False),  # a wobble less than the margin below θ_0 is no dip either
        ([0.7, 0.65, 0.72, 0.73], True),  # exactly the margin below θ_0 counts as a dip
        ([0.7, 0.75, 0.8, 0.6, 0.7, 0.7], True),  # a dip after a rise is found
    ],
)
def test_online_stop_rule(accs, stop):
    assert online_should_stop(accs, margin=0.05, patience=2) is stop


def test_online_stop_needs_a_dip_the_issue_examples():
    # from the report: neither a 2-point wobble nor a monotone rise confirms a minimum
    assert not online_should_stop([0.71, 0.69, 0.72, 0.73], 0.03, 2)
    assert not online_should_stop([0.71, 0.74, 0.78, 0.80], 0.03, 2)
    assert online_should_stop([0.71, 0.60, 0.66, 0.70], 0.03, 2)


def test_auto_margin_is_two_standard_errors_of_the_probe_set():
    from t3s.probe import auto_margin, standard_error

    assert standard_error(0.7, 200) == pytest.approx(0.0324, abs=1e-4)  # the ±3 points of n = 200
    assert auto_margin(0.7, 200) == pytest.approx(2 * np.sqrt(0.7 * 0.3 / 200))
    assert auto_margin(1.0, 200) == pytest.approx(2 * np.sqrt(0.95 * 0.05 / 200))  # clamped, never 0
    assert auto_margin(0.5, 4) == pytest.approx(0.5)  # 4 prompts: only a deep dip is a dip
    assert auto_margin(0.5, 10**6) == pytest.approx(1e-3)  # ...and never below 2 SE even for huge sets


def test_probe_run_writes_trajectory_plot_and_keeps_only_the_bottleneck(tiny, tmp_path):
    from t3s.config import load_config
    from t3s.probe import run_probe

    cfg = load_config(
        None,
        [
            "max_steps=6",
            "learning_rate=3e-3",
            "eval_every=2",
            "eval.max_new_tokens=8",
            "subset=8",
            "markers=[Ones]",
            "per_device_train_batch_size=4",
            "report_to=tensorboard",
        ],
        flat=("probe", "train"),
    )
    s = run_probe(
        str(tiny / "model"),
        str(tiny / "train.jsonl"),
        tmp_path / "p",
        cfg,
        progress=False,
        heldout_path=str(tiny / "train.jsonl"),
        log=lambda *a: None,
    )
    pts = [json.loads(x) for x in open(tmp_path / "p" / "trajectory.jsonl")]
    assert [p["step"] for p in pts] == [0, 2, 4, 6]
    assert set(pts[0]) >= {
        "step",
        "loss",
        "train_accuracy",
        "heldout_accuracy",
        "confidence",
        "length",
        "marker_rate",
        "time",
    }
    assert pts[0]["loss"] is None and all(p["loss"] > 0 for p in pts[1:])
    assert all(p["heldout_accuracy"] is not None for p in pts)
    b = find_bottleneck(pts, 0.03)
    assert s["bottleneck_step"] == b["bottleneck_step"] and s["completed"] and s["steps_run"] == 6
    kept = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert kept == [
        "bottleneck",
        "final",
        "probe.json",
        "tensorboard",
        "token_logprobs.npz",
        "trajectory.jsonl",
        "trajectory.png",
    ]
    # report_to gets the trajectory next to the Trainer's loss
    events = scalars(tmp_path / "p" / "tensorboard")
    for key in ("train_accuracy", "heldout_accuracy", "confidence", "length", "marker_rate"):
        assert events[f"train/t3s/{key}"] == [(p["step"], pytest.approx(p[key], rel=1e-5)) for p in pts]
    assert [step for step, _ in events["train/loss"]] == list(range(1, 7))
    step = json.loads((tmp_path / "p" / "bottleneck" / "t3s_step.json").read_text())["global_step"]
    assert step == s["bottleneck_step"]
    lp = np.load(tmp_path / "p" / "token_logprobs.npz")
    assert lp["step_0"].mean() == pytest.approx(pts[0]["confidence"], abs=1e-5) and len(lp["ids"]) == 8
    # confidence rises while the model fits the traces
    assert pts[-1]["confidence"] > pts[0]["confidence"]


def test_online_probe_stops_early_and_keeps_no_final_model(tiny, tmp_path):
    from t3s.config import load_config
    from t3s.probe import run_probe

    # margin 0: accuracy that merely stays at its running minimum for `patience` evaluations confirms it
    cfg = load_config(
        None,
        [
            "max_steps=20",
            "learning_rate=3e-3",
            "eval_every=2",
            "eval.max_new_tokens=4",
            "subset=4",
            "online=true",
            "margin=0",
            "patience=2",
            "per_device_train_batch_size=4",
        ],
        flat=("probe", "train"),
    )
    s = run_probe(
        str(tiny / "model"), str(tiny / "train.jsonl"), tmp_path / "p", cfg, progress=False, log=lambda *a: None
    )
    pts = [json.loads(x) for x in open(tmp_path / "p" / "trajectory.jsonl")]
    assert s["stopped_early"] and not s["completed"] and s["steps_run"] == pts[-1]["step"] < 20
    assert online_should_stop([p["train_accuracy"] for p in pts], 0.0, 2)
    assert not online_should_stop([p["train_accuracy"] for p in pts[:-1]], 0.0, 2)  # it stopped at the first chance
    assert s["margin"] == 0.0 and s["noise"]["samples"] == 4 and not s["noise"]["margin_auto"]
    assert not (tmp_path / "p" / "final").exists() and (tmp_path / "p" / "bottleneck").exists()


def test_probe_reports_its_noise_and_auto_margin(tiny, tmp_path):
    from t3s.config import load_config
    from t3s.probe import auto_margin, run_probe

    cfg = load_config(
        None,
        [
            "max_steps=2",
            "learning_rate=3e-3",
            "eval_every=1",
            "eval.max_new_tokens=4",
            "subset=8",
            "per_device_train_batch_size=4",
        ],
        flat=("probe", "train"),
    )
    lines = []
    s = run_probe(str(tiny / "model"), str(tiny / "train.jsonl"), tmp_path / "p", cfg, progress=False, log=lines.append)
    p0 = s["start_accuracy"]
    assert s["noise"]["margin_auto"] and s["noise"]["samples"] == 8
    assert s["margin"] == pytest.approx(auto_margin(p0, 8))
    assert any("standard error" in x and "auto: 2 standard errors" in x for x in lines)


def test_probe_with_lora_scores_and_saves_merged_checkpoints(tiny, tmp_path):
    from t3s.config import load_config
    from t3s.models import load_causal_lm, resolve_precision
    from t3s.probe import run_probe

    cfg = load_config(
        None,
        [
            "max_steps=2",
            "learning_rate=1e-2",
            "eval_every=1",
            "eval.max_new_tokens=4",
            "subset=4",
            "lora_r=4",
            "per_device_train_batch_size=4",
        ],
        flat=("probe", "train"),
    )
    s = run_probe(
        str(tiny / "model"), str(tiny / "train.jsonl"), tmp_path / "p", cfg, progress=False, log=lambda *a: None
    )
    assert s["completed"] and s["steps_run"] == 2
    pts = [json.loads(x) for x in open(tmp_path / "p" / "trajectory.jsonl")]
    assert len(pts) == 3 and pts[-1]["confidence"] != pts[0]["confidence"]  # LoRA layers were active when scoring
    m = load_causal_lm(tmp_path / "p" / "final", resolve_precision("float32"))
    assert not any("lora" in n for n, _ in m.named_parameters())  # merged, a plain model
