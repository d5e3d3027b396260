"""The modes as data (t3s.modes.TABLE): what the pipeline, the plan, the selection rules and the CLI read from it.
A control that reads another checkpoint is one entry there; `t3s-step` (Δc at a step the run names) is one, and
its end-to-end run is in tests/test_pipeline.py (test_t3s_early_on_the_testbed_world)."""

import numpy as np
import pytest

from t3s import T3SError
from t3s.config import RunConfig, TrainConfig
from t3s.modes import CHECKPOINTS, MODES, SELECTION_MODES, TABLE, checkpoints_read, keeps_all_checkpoints, mode_of
from t3s.pipeline import plan_stages
from t3s.select import groups, keep_mask
from t3s.stages import early_checkpoint, nearest_checkpoint, probe_checkpoint, step_checkpoint
from t3s.train import config_for_mode


def test_every_selecting_mode_has_a_rule_keep_mask_applies():
    rng = np.random.default_rng(0)
    delta, c0, gain = rng.normal(size=400), -rng.random(400) * 3, rng.normal(size=400)
    anchors = groups(delta, c0, 0.0)[0]
    assert keep_mask("sft", delta, c0).all()
    with pytest.raises(T3SError, match="unknown selection mode 'dft'"):  # a mode without a rule selects nothing
        keep_mask("dft", delta, c0)
    for m in (m for m in TABLE if m.selects):
        keep = keep_mask(m.name, delta, c0, 0.0, seed=1, gain=gain)
        assert keep.shape == delta.shape and keep.dtype == bool
        if m.rule == "t3s":
            np.testing.assert_array_equal(keep, ~anchors)  # t3s-final / -early / -step: the same rule
        elif m.rule == "reverse":
            np.testing.assert_array_equal(keep, anchors)
        else:  # the matched controls keep as many tokens as t3s keeps
            assert keep.sum() == (~anchors).sum(), m.name


def test_the_checkpoints_a_run_scores_follow_its_modes():
    assert checkpoints_read(["sft"]) == ["bottleneck"]  # θ_b is scored for every run
    assert checkpoints_read(["t3s-step", "excess-loss", "t3s-final"]) == ["bottleneck", "final", "step"]
    assert all(c in CHECKPOINTS for m in TABLE for c in m.checkpoints())
    assert keeps_all_checkpoints(["t3s-step"]) and keeps_all_checkpoints(["t3s-early"])
    assert not keeps_all_checkpoints(["t3s", "t3s-final", "excess-loss", "dft"])
    assert mode_of("none") is MODES["sft"] and mode_of("excess-loss").reads() == {
        "bottleneck": "bottleneck",
        "reference": "final",
    }


def test_plan_and_config_of_t3s_step():
    cfg = RunConfig(student="s", train_data="d", modes=["sft", "t3s-step"], delta_step=4, rrt=False)
    stages = [k for k, _ in plan_stages(cfg)]
    assert stages.index("seed-0/scores-bottleneck") < stages.index("seed-0/scores-step-4")
    assert {"seed-0/select-t3s-step", "seed-0/train-t3s-step", "seed-0/eval-t3s-step"} <= set(stages)
    with pytest.raises(T3SError, match="t3s-step needs delta_step"):
        RunConfig(student="s", train_data="d", modes=["t3s-step"])
    assert config_for_mode(TrainConfig(), "dft").trainer == {"loss_type": "dft"}
    assert config_for_mode(TrainConfig(), "t3s-step").trainer == {}


def test_probe_checkpoints_are_found_or_refused_by_name(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    cfg = RunConfig(student="s", train_data="d", modes=["t3s-step", "t3s-final"], delta_step=4)
    done = {"completed": True, "bottleneck_step": 6}
    assert probe_checkpoint("step", tmp_path, done, cfg, 0) == tmp_path / "checkpoints" / "step-4"
    assert probe_checkpoint("early", tmp_path, done, cfg, 0).name == "step-2"
    assert probe_checkpoint("final", tmp_path, done, cfg, 0) == tmp_path / "final"
    with pytest.raises(T3SError, match="modes t3s-final need the probe to run to its end"):
        probe_checkpoint("final", tmp_path, {**done, "completed": False}, cfg, 0)
    assert probe_checkpoint("recovery", tmp_path, {**done, "bottleneck_step": 2}, cfg, 0).name == "step-4"
    with pytest.raises(T3SError, match="step 5 .*kept steps 2, 4, 6"):
        step_checkpoint(tmp_path, 5)


def test_checkpoints_nearest_a_multiple_of_the_bottleneck(tmp_path):
    """t3s-early reads the evaluated checkpoint nearest half the bottleneck step (before it), t3s-recovery the one
    nearest twice it (after it); ties go to the earlier step."""
    for step in (2, 4, 6, 8, 10):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    assert early_checkpoint(tmp_path, 10).name == "step-4"  # 5 is halfway: 4 and 6 tie, the earlier wins
    assert early_checkpoint(tmp_path, 8).name == "step-4"
    assert early_checkpoint(tmp_path, 4).name == "step-2"
    with pytest.raises(T3SError, match="before the bottleneck"):
        early_checkpoint(tmp_path, 2)
    assert nearest_checkpoint(tmp_path, 4, 2.0).name == "step-8"
    assert nearest_checkpoint(tmp_path, 3, 2.0).name == "step-6"
    assert nearest_checkpoint(tmp_path, 6, 2.0).name == "step-10"  # 12 was not evaluated: the nearest after it
    assert nearest_checkpoint(tmp_path, 5, 2.0).name == "step-10"
    with pytest.raises(T3SError, match="reads the recovery checkpoint, an evaluated one after the bottleneck .*online"):
        nearest_checkpoint(tmp_path, 10, 2.0, "recovery")


def test_a_new_control_is_one_entry_in_the_table():
    """t3s-recovery was added as its `Mode` and its `Checkpoint` in t3s.modes alone: the run scores the checkpoint,
    keeps the probe's checkpoints for it, selects, trains and evaluates it (its run: tests/test_pipeline.py)."""
    assert mode_of("t3s-recovery").reads() == {"bottleneck": "recovery"}
    assert keeps_all_checkpoints(["t3s-recovery"]) and CHECKPOINTS["recovery"].keeps_all
    cfg = RunConfig(student="s", train_data="d", modes=["t3s-recovery"], rrt=False)
    stages = [k for k, _ in plan_stages(cfg)]
    assert stages == [
        "seed-0/probe",
        "scores-init",
        "seed-0/scores-bottleneck",
        "seed-0/scores-recovery",
        "seed-0/select-t3s-recovery",
        "seed-0/train-t3s-recovery",
        "eval-base",
        "seed-0/eval-t3s-recovery",
    ]
    assert "t3s-recovery" in SELECTION_MODES


def test_the_cli_offers_every_selecting_mode(capsys):
    from t3s.cli import main

    with pytest.raises(SystemExit):
        main(["select", "--help"])
    text = capsys.readouterr().out
    assert all(m in text for m in SELECTION_MODES)
