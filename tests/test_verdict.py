"""The verdict rule (t3s.verdict): each outcome from a trajectory built for it, the shares it reports computed
another way, and a finished probe's files read back."""

import json

import numpy as np
import pytest

from t3s import T3SError
from t3s.verdict import DEGENERATE, decide, probe_verdict


def trajectory(*train, heldout=None):
    """Points every 2 steps with these training accuracies (step 0 first)."""
    return [
        {"step": 2 * i, "train_accuracy": a, "heldout_accuracy": None if heldout is None else heldout[i]}
        for i, a in enumerate(train)
    ]


def logprobs(n=1000, anchors=0.2, below=0.6, seed=0):
    """Per-step token log-probabilities where `anchors` of the tokens gain confidence by step 4 (the bottleneck)
    and `below` of them end (step 8) below their step-0 confidence."""
    rng = np.random.default_rng(seed)
    c0 = -rng.random(n) - 0.5
    gain = np.where(np.arange(n) < anchors * n, 0.3, -0.3)
    end = np.where(rng.permutation(n) < below * n, -0.2, 0.2)
    return {0: c0, 2: c0 - 0.1, 4: c0 + gain, 6: c0, 8: c0 + end}


def test_each_outcome_from_its_trajectory():
    lp = logprobs()
    # SFT falls 60 points and is still 50 below its start when the budget ends: T3S is expected to help
    v = decide(trajectory(0.8, 0.5, 0.2, 0.25, 0.3), 0.1, 4, True, lp)
    assert v.outcome == "t3s" and v.pays is True and v.headline == "T3S is expected to help"
    assert v.numbers["anchors"] == pytest.approx(0.2) and v.numbers["below_base_at_end"] == pytest.approx(0.6)
    assert "80.0% at θ_0 → 20.0% at the bottleneck (step 4) → 30.0% at the end (step 8)" in v.reason()
    # the same dip, back within the margin of its start by the end: SFT recovers
    v = decide(trajectory(0.8, 0.5, 0.2, 0.6, 0.71), 0.1, 4, True, lp)
    assert v.outcome == "sft" and v.pays is False and "train longer or use SFT" in v.headline
    # no dip deeper than the margin
    assert decide(trajectory(0.8, 0.75, 0.72, 0.8, 0.9), 0.1, 4, True, lp).outcome == "no-dip"
    # still in the dip, but most tokens are anchors: degenerate
    v = decide(trajectory(0.8, 0.5, 0.2, 0.25, 0.3), 0.1, 4, True, logprobs(anchors=0.9))
    assert v.outcome == "degenerate" and v.numbers["anchors"] > DEGENERATE and v.pays is False
    # a probe that stopped early cannot say whether SFT recovers by the end of its budget
    v = decide(trajectory(0.8, 0.5, 0.2, 0.6), 0.1, 4, False, lp)
    assert v.outcome == "unknown" and v.pays is None and "probe.online" in v.headline
    # without token log-probabilities (a mask predictor's own probe) the rule reads the trajectory alone
    v = decide(trajectory(0.8, 0.5, 0.2, 0.25, 0.3), 0.1, 4, True, None)
    assert v.outcome == "t3s" and v.numbers["anchors"] is None and "anchors" not in v.reason()


def test_the_threshold_and_auto_decide_the_anchor_share():
    lp = logprobs(anchors=0.3)
    points = trajectory(0.8, 0.5, 0.2, 0.25, 0.3)
    assert decide(points, 0.1, 4, True, lp, 0.0).numbers["anchors"] == pytest.approx(0.3)
    assert decide(points, 0.1, 4, True, lp, 0.5).numbers["anchors"] == 0.0  # no gain exceeds 0.5
    # auto: tokens near-certain at θ_0 and θ_b are neither group (100 anchors under τ = 0 are settled under auto)
    lp[0][:100], lp[4][:100] = -1e-6, -1e-7
    assert decide(points, 0.1, 4, True, lp, 0.0).numbers["anchors"] == pytest.approx(0.3)
    assert decide(points, 0.1, 4, True, lp, "auto").numbers["anchors"] == pytest.approx(0.2)
    # both regime numbers are reported whatever the run's own threshold
    for t in (0.0, 0.5, "auto"):
        n = decide(points, 0.1, 4, True, lp, t).numbers
        assert (n["anchors_zero"], n["anchors_auto"]) == (pytest.approx(0.3), pytest.approx(0.2))


def test_a_trajectory_without_step_zero_is_refused():
    with pytest.raises(T3SError, match="starts with the evaluation of θ_0"):
        decide(trajectory(0.8, 0.5)[1:], 0.1, 2, True)


def test_a_finished_probe_is_read_from_its_files(tmp_path):
    points = trajectory(0.8, 0.5, 0.2, 0.25, 0.3)
    (tmp_path / "trajectory.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    lp = logprobs()
    np.savez_compressed(
        tmp_path / "token_logprobs.npz",
        ids=np.array(["a"]),
        lengths=np.array([1000]),
        **{f"step_{s}": v for s, v in lp.items()},
    )
    v = probe_verdict(tmp_path, {"margin": 0.1, "bottleneck_step": 4, "completed": True})
    assert v.as_dict() == decide(points, 0.1, 4, True, lp).as_dict()
    with pytest.raises(T3SError, match="no trajectory.jsonl"):
        probe_verdict(tmp_path / "nothing", {"margin": 0.1, "bottleneck_step": 4, "completed": True})
