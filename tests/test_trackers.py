"""report_to beyond the Trainer: which trackers a value names, the summary's scalars, and the W&B calls (W&B is
not installed here: a stand-in module records them). TensorBoard's event files are read back in
tests/test_pipeline.py (a real `t3s run`) and tests/test_api.py."""

import sys
import types

import pytest

from t3s.trackers import end_stage, log_summary, summary_scalars, wanted

SUMMARY = {
    "rows": [
        {"method": "base", "accuracy": 0.5, "accuracy_sd": None, "delta": 0.0, "dropped_fraction": None},
        {"method": "t3s", "accuracy": 0.625, "accuracy_sd": 0.01, "delta": 0.125, "dropped_fraction": 0.3},
    ],
    "markdown": "| method | accuracy % |\n",
}


@pytest.mark.parametrize(
    "value, names",
    [
        ("none", []),
        (None, []),
        ("tensorboard", ["tensorboard"]),
        ("tensorboard, wandb", ["tensorboard", "wandb"]),
        (["wandb"], ["wandb"]),
        ("none,", []),
    ],
)
def test_report_to_values(value, names):
    assert wanted(value) == names


def test_summary_scalars_are_every_number_of_every_row():
    assert summary_scalars(SUMMARY) == {
        "summary/base/accuracy": 0.5,
        "summary/base/delta": 0.0,
        "summary/t3s/accuracy": 0.625,
        "summary/t3s/accuracy_sd": 0.01,
        "summary/t3s/delta": 0.125,
        "summary/t3s/dropped_fraction": 0.3,
    }


class FakeWandb(types.ModuleType):
    """Records what t3s asks of W&B."""

    def __init__(self):
        super().__init__("wandb")
        self.calls, self.run = [], None

    def init(self, **kw):
        self.calls.append(("init", kw))
        fake = self

        class Run:
            summary = {}

            def log(self, data):
                fake.calls.append(("log", data))

            def finish(self):  # as in W&B, finishing the run leaves no active run
                fake.calls.append(("finish", dict(self.summary)))
                fake.run = None

        self.run = Run()
        return self.run

    def finish(self):
        self.calls.append(("finish-active", None))
        self.run = None

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data


def test_summary_goes_to_wandb_as_one_run_and_each_stage_ends_its_own(monkeypatch, tmp_path):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_PROJECT", "t3s-tests")
    assert log_summary("wandb", tmp_path / "myrun", SUMMARY) == ["wandb"]
    (kind, init), (_, logged), (_, final) = fake.calls
    assert kind == "init" and init["project"] == "t3s-tests" and init["name"] == "myrun/summary"
    table = logged["summary/table"]
    assert table.columns[0] == "method" and [r[0] for r in table.data] == ["base", "t3s"]
    assert final == summary_scalars(SUMMARY)
    assert not (tmp_path / "myrun" / "tensorboard").exists()  # only what was asked for
    fake.calls.clear()
    end_stage()  # the summary run was finished by log_summary: no active run, nothing to do
    fake.run = object()  # a stage's Trainer left its run open: the stage's end finishes it
    end_stage()
    assert fake.calls == [("finish-active", None)] and fake.run is None


def test_trackers_without_a_summary_get_nothing(tmp_path):
    assert log_summary("mlflow", tmp_path, SUMMARY) == []
    assert log_summary("none", tmp_path, SUMMARY) == []
    assert not any(tmp_path.iterdir())
