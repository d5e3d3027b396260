"""t3s.cost: what T3S cost against SFT alone, from a run's stage records, checked against sums done by hand on
crafted records; the online stop against the probe's own rule."""

import json

import pytest

from t3s import T3SError
from t3s.cost import format_costs, online_stop, run_costs


def points(accs, dt=10.0):
    return [{"step": 3 * i, "train_accuracy": a, "time": dt * i} for i, a in enumerate(accs)]


def test_the_online_stop_is_the_first_evaluation_the_probe_rule_stops_at():
    # dip to 0.2 at step 6, then two evaluations at least the margin above it: stops at step 12 of 21
    stop = online_stop(points([0.8, 0.5, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8]), 0.1, 2)
    assert stop == {"step": 12, "of": 21, "saved_seconds": pytest.approx(30.0)}
    assert online_stop(points([0.5, 0.6, 0.7, 0.8]), 0.1, 2) is None  # a rise never stops
    assert online_stop(points([0.8, 0.2, 0.25, 0.22]), 0.1, 2) is None  # still in the dip


def record(seconds, result=None):
    return {"seconds": seconds, "result": result or {}}


def write_run(tmp, seeds=(0, 1), online=False):
    stages = tmp / "run" / "stages"
    stages.mkdir(parents=True)
    recs = {"scores-init": record(20.0), "eval-base": record(30.0)}
    for s in seeds:
        recs[f"seed-{s}__probe"] = record(
            300.0 + s,
            {
                "seconds": {
                    "run": 280.0,
                    "generation": 100.0,
                    "confidence": 20.0,
                    "checkpoints": 10.0,
                    "training": 150.0,
                },
                "margin": 0.1,
                "stopped_early": online,
                "probe_config": {"patience": 2},
            },
        )
        recs[f"seed-{s}__scores-bottleneck"] = record(12.0)
        recs[f"seed-{s}__select-t3s"] = record(1.0)
        recs[f"seed-{s}__train-t3s"] = record(160.0)
        recs[f"seed-{s}__eval-t3s"] = record(40.0)
        recs[f"seed-{s}__eval-sft"] = record(45.0)
        if online:
            recs[f"seed-{s}__train-sft"] = record(170.0)
        probe = tmp / "run" / f"seed-{s}" / "probe"
        probe.mkdir(parents=True)
        (probe / "trajectory.jsonl").write_text(
            "".join(json.dumps(p) + "\n" for p in points([0.8, 0.5, 0.2, 0.4, 0.5, 0.6], dt=50.0))
        )
    for k, v in recs.items():
        (stages / f"{k}.json").write_text(json.dumps(v))
    return tmp / "run"


def test_costs_of_a_finished_run_are_the_stage_seconds_summed_by_hand(tmp_path):
    c = run_costs(write_run(tmp_path))
    s0, s1 = c["seeds"]
    # SFT alone: the probe's stage less its evaluations, confidences and checkpoint saves, plus its evaluation
    assert s0["sft_alone"] == pytest.approx(300 - (100 + 20 + 10) + 45)
    assert s0["sft_watched"] == pytest.approx(300 + 45)
    # T3S: the probe, θ_0's scoring shared by the two seeds, θ_b's, the selection, the training, the evaluation
    assert s0["t3s"] == pytest.approx(300 + 20 / 2 + 12 + 1 + 160 + 40)
    assert s0["ratio"] == pytest.approx(s0["t3s"] / s0["sft_alone"])
    assert s1["t3s"] == pytest.approx(s0["t3s"] + 1)
    assert s0["online_stop"] == {"step": 12, "of": 15, "saved_seconds": pytest.approx(50.0)}
    assert c["mean"]["t3s"] == pytest.approx((s0["t3s"] + s1["t3s"]) / 2)
    table = "\n".join(format_costs(c))
    assert f"{s0['ratio']:.2f}×" in table and "12 of 15, 0.8 saved" in table


def test_an_online_probe_counts_the_sft_stage_and_has_no_stop_to_report(tmp_path):
    (s0,) = run_costs(write_run(tmp_path, seeds=(0,), online=True))["seeds"]
    assert s0["sft_alone"] == pytest.approx(170 + 45) and s0["online_stop"] is None


def test_a_run_without_the_stages_cost_needs_is_one_error(tmp_path):
    run = write_run(tmp_path, seeds=(0,))
    (run / "stages" / "seed-0__train-t3s.json").unlink()
    with pytest.raises(T3SError, match="seed-0__train-t3s"):
        run_costs(run)
    with pytest.raises(T3SError, match="no stages"):
        run_costs(tmp_path / "nothing")
