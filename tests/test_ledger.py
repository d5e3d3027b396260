"""The resume engine (t3s.ledger.Ledger) on its own, with stages that are plain functions: what is skipped, what
is redone and why, what a failed stage leaves, adoption from another run, and the fingerprint's exact form (a
run directory made by an earlier version resumes only if that form never changes)."""

import hashlib
import json

import pytest

from t3s import T3SError, __version__
from t3s.ledger import Ledger, Session


class Stage:
    """A stage function that counts its calls and writes one file."""

    def __init__(self, fail=False):
        self.calls, self.fail = 0, fail

    def __call__(self, path):
        self.calls += 1
        if self.fail:
            raise RuntimeError("stage failed midway")
        path.mkdir(parents=True, exist_ok=True)
        (path / "out.txt").write_text(str(self.calls))
        return {"calls": self.calls}


def test_a_finished_stage_is_skipped_until_its_inputs_or_outputs_change(tmp_path, capsys):
    fn = Stage()
    rec = Ledger(tmp_path).stage("scores-init", "score", tmp_path / "s", {"model": "a"}, fn)
    again = Ledger(tmp_path).stage("scores-init", "score", tmp_path / "s", {"model": "a"}, fn)
    assert fn.calls == 1 and again == rec and "scores-init: done earlier, skipped" in capsys.readouterr().out
    changed = Ledger(tmp_path).stage("scores-init", "score", tmp_path / "s", {"model": "b"}, fn)
    assert fn.calls == 2 and changed["produced"] != rec["produced"]  # what reads it is redone too
    (tmp_path / "s" / "out.txt").unlink()
    (tmp_path / "s").rmdir()  # its output is gone: redone though the record matches
    Ledger(tmp_path).stage("scores-init", "score", tmp_path / "s", {"model": "b"}, fn)
    assert fn.calls == 3


def test_force_redoes_its_kind_only_and_a_bad_kind_is_refused(tmp_path):
    score, train = Stage(), Stage()
    for _ in range(2):
        led = Ledger(tmp_path, force=("train",))
        led.stage("scores-init", "score", tmp_path / "s", {}, score)
        led.stage("seed-0/train-t3s", "train", tmp_path / "t", {}, train)
    assert score.calls == 1 and train.calls == 2
    with pytest.raises(T3SError, match="--force takes stage kinds .*; got selection"):
        Ledger(tmp_path, force=("selection",))


def test_a_failed_stage_leaves_no_record_and_is_redone(tmp_path):
    with pytest.raises(RuntimeError):
        Ledger(tmp_path).stage("seed-0/probe", "probe", tmp_path / "p", {}, Stage(fail=True))
    assert not Ledger(tmp_path).record_path("seed-0/probe").exists()
    with pytest.raises(T3SError, match="stage seed-0/probe has not run"):
        Ledger(tmp_path).record("seed-0/probe")
    fn = Stage()
    Ledger(tmp_path).stage("seed-0/probe", "probe", tmp_path / "p", {}, fn)
    assert fn.calls == 1 and Ledger(tmp_path).record("seed-0/probe")["result"] == {"calls": 1}


def test_the_process_count_joins_only_the_training_fingerprints(tmp_path):
    fps = {}
    for n in (1, 2):
        led = Ledger(tmp_path / str(n), session=Session(tmp_path / str(n), processes=n))
        for key, kind in (("seed-0/train-t3s", "train"), ("scores-init", "score")):
            fps[(n, kind)] = led.stage(key, kind, tmp_path / str(n) / key, {"x": 1}, Stage())["fingerprint"]
    assert fps[(1, "train")] != fps[(2, "train")] and fps[(1, "score")] == fps[(2, "score")]


def test_the_fingerprint_is_the_documented_hash_of_key_inputs_and_version(tmp_path):
    """Computed here another way: sha256 of the sorted, whitespace-free JSON of {key, inputs, t3s}. A change of
    this form would make every existing run directory redo every stage."""
    inputs = {"student": {"sha256": "abc"}, "train": {"learning_rate": 1e-05, "max_steps": 50}, "render": None}
    rec = Ledger(tmp_path).stage("seed-0/train-sft", "train", tmp_path / "t", inputs, Stage())
    blob = json.dumps({"inputs": inputs, "key": "seed-0/train-sft", "t3s": __version__}, sort_keys=True)
    blob = blob.replace(", ", ",").replace(": ", ":")  # no whitespace (none inside these values)
    assert rec["fingerprint"] == hashlib.sha256(blob.encode()).hexdigest()
    assert set(rec) == {"key", "kind", "path", "fingerprint", "produced", "seconds", "result"}


def test_adopt_takes_a_finished_stage_from_another_run_once(tmp_path):
    src, dst = tmp_path / "teacher-a", tmp_path / "teacher-b"
    Ledger(src).stage("eval-base", "eval", src / "eval-base", {"model": "θ0"}, Stage())
    led = Ledger(dst)
    assert led.adopt(src, "eval-base", "eval", "eval-base") and (dst / "eval-base" / "out.txt").exists()
    assert not led.adopt(src, "eval-base", "eval", "eval-base")  # the same record: nothing to copy
    fn = Stage()
    led.stage("eval-base", "eval", dst / "eval-base", {"model": "θ0"}, fn)
    assert fn.calls == 0  # adopted, so done
    assert not Ledger(dst, force=("eval",)).adopt(src, "eval-base", "eval", "eval-base")


def test_a_new_ledger_removes_what_a_killed_run_left_half_written(tmp_path):
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / ".model.tmp").mkdir()
    (tmp_path / ".summary.json.tmp").write_text("{")
    (tmp_path / "keep.json").write_text("{}")
    Ledger(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.json", "seed-0"]


def test_the_probe_fingerprints_the_heldout_file_only_when_it_evaluates_it(tmp_path):
    # probe.heldout_subset -1: the probe reads no held-out prompt, so a new eval file must not redo it
    from t3s.config import load_config
    from t3s.stages import Run, probe_heldout_fp

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"prompt": "1+1?", "answer": "2"}\n')
    b.write_text('{"prompt": "2+2?", "answer": "4"}\n')

    def fp(eval_data, subset):
        cfg = load_config(
            None, ["student=m", "train_data=t.jsonl", f"eval_data={eval_data}", f"probe.heldout_subset={subset}"]
        )
        return probe_heldout_fp(Run(cfg, None, None, None))

    assert fp(a, -1) is None and fp(b, -1) is None
    assert fp(a, 0) is not None and fp(b, 0) is not None and fp(a, 0) != fp(b, 0)
    assert fp(a, 5) == fp(a, 0)
