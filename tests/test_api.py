"""T3S in users' own training code (t3s.api): the probe as a callback in a TRL SFTTrainer run, scores and selections
as functions, a selection as a `labels` column, and examples/trl_script.py end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from t3s import T3SError
from t3s.api import ProbeCallback, labeled_dataset, score, select
from t3s.objectives.base import checkpointing_argument

ROOT = Path(__file__).resolve().parents[1]


def trainer_for(tiny, dataset, out, steps=4, callbacks=(), peft_config=None, **settings):
    args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        **{
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "use_cpu": True,
            "bf16": False,
            **checkpointing_argument(False),
            "disable_tqdm": True,
            "seed": 0,
            **settings,
        },
    )
    model = AutoModelForCausalLM.from_pretrained(tiny / "model")
    tok = AutoTokenizer.from_pretrained(tiny / "model")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=list(callbacks),
        peft_config=peft_config,
    )


class Recorder(TrainerCallback):
    """Stands in for a report_to tracker: it sees every `Trainer.log` call."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append((state.global_step, dict(logs or {})))


def test_probe_callback_in_an_sft_trainer(tiny, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny / "model")
    data = str(tiny / "train.jsonl")
    tracker = Recorder()
    trainer = trainer_for(tiny, labeled_dataset(data, None, tok), tmp_path / "sft", callbacks=[tracker])
    probe = ProbeCallback(
        trainer, data, tmp_path / "probe", every=2, generation={"max_new_tokens": 8}, log=lambda m: None
    )
    trainer.add_callback(probe)
    trainer.train()
    points = [json.loads(x) for x in (tmp_path / "probe" / "trajectory.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [0, 2, 4]
    # the trackers get every evaluation through Trainer.log
    logged = [(s, x["t3s/train_accuracy"], x["t3s/confidence"]) for s, x in tracker.logs if "t3s/train_accuracy" in x]
    assert logged == [(p["step"], p["train_accuracy"], p["confidence"]) for p in points]
    # the step-0 confidence is θ_0's mean teacher-forced log-prob, as `t3s score` computes it independently
    init = score(str(tiny / "model"), data, tmp_path / "scores-init", settings={"dtype": "float32"}, progress=False)
    assert points[0]["confidence"] == pytest.approx(float(np.concatenate(init.logprobs).mean()), abs=1e-4)
    assert probe.result["bottleneck_step"] in (2, 4) and (tmp_path / "probe" / "bottleneck" / "config.json").exists()
    assert json.loads((tmp_path / "probe" / "probe.json").read_text())["eval_every"] == 2


class StopAt(TrainerCallback):
    """Stands in for a crash: training ends after `step` (the checkpoints saved before it remain)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_probe_callback_continues_its_trajectory_when_the_trainer_resumes(tiny, tmp_path):
    """A resumed Trainer (resume_from_checkpoint) continues the probe from the state saved with the checkpoint:
    the same points, margin and bottleneck as a run never interrupted; a checkpoint without that state is refused
    at on_train_begin, before any step."""
    tok = AutoTokenizer.from_pretrained(tiny / "model")
    data = str(tiny / "train.jsonl")
    ds = labeled_dataset(data, None, tok)
    settings = {"save_strategy": "steps", "save_steps": 3}
    quiet = {"every": 2, "generation": {"max_new_tokens": 8}, "log": lambda m: None, "online": True}

    def run(name, out, callbacks=(), resume=None):
        trainer = trainer_for(tiny, ds, out, steps=6, callbacks=callbacks, **settings)
        probe = ProbeCallback(trainer, data, tmp_path / name, **quiet)
        trainer.add_callback(probe)
        trainer.train(resume_from_checkpoint=resume)
        return probe

    whole = run("whole", tmp_path / "t-whole")
    run("cut", tmp_path / "t-cut", callbacks=[StopAt(5)])  # points 0, 2, 4; the checkpoint at step 3
    assert (tmp_path / "t-cut" / "checkpoint-3" / "t3s_probe.json").is_file()
    resumed = run("cut", tmp_path / "t-cut", resume=str(tmp_path / "t-cut" / "checkpoint-3"))

    def points(name):
        return [json.loads(x) for x in (tmp_path / name / "trajectory.jsonl").read_text().splitlines()]

    a, b = points("whole"), points("cut")
    assert [p["step"] for p in b] == [0, 2, 4, 6]  # step 4 of the cut run was retraced, not repeated
    assert [p["train_accuracy"] for p in b] == [p["train_accuracy"] for p in a]
    assert [p["confidence"] for p in b] == pytest.approx([p["confidence"] for p in a], abs=1e-4)
    for k in ("bottleneck_step", "margin", "dip_found"):
        assert resumed.result[k] == whole.result[k]
    assert resumed.result["bottleneck_checkpoint"] == str(tmp_path / "cut" / "bottleneck")
    step = json.loads((tmp_path / "cut" / "bottleneck" / "t3s_step.json").read_text())["global_step"]
    assert step == resumed.result["bottleneck_step"]

    (tmp_path / "t-cut" / "checkpoint-3" / "t3s_probe.json").unlink()  # saved without the callback
    with pytest.raises(T3SError, match="resumes at step 3, but .*t3s_probe.json is missing"):
        run("cut", tmp_path / "t-cut", resume=str(tmp_path / "t-cut" / "checkpoint-3"))


def test_a_selection_as_a_labels_column(tiny, trained, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny / "model")
    data = str(tiny / "train.jsonl")
    init = score(str(tiny / "model"), data, tmp_path / "a", settings={"dtype": "float32"}, progress=False)
    b = score(str(trained), data, tmp_path / "b", settings={"dtype": "float32"}, progress=False)
    median = float(np.median(np.concatenate(b.logprobs) - np.concatenate(init.logprobs)))
    sel = select(init, tmp_path / "b", "t3s", threshold=median)  # about half are anchors; a directory works too
    ds = labeled_dataset(data, sel, tok)
    plain = labeled_dataset(data, None, tok)
    assert ds["input_ids"] == plain["input_ids"]
    for labels, full, keep in zip(ds["labels"], plain["labels"], sel.keep):
        response = [x for x in full if x != -100]
        kept = [x for x in labels if x != -100]
        assert kept == [t for t, k in zip(response, keep) if k]  # exactly the kept response tokens are labels
    assert (
        0 < sum(x != -100 for lab in ds["labels"] for x in lab) < sum(x != -100 for lab in plain["labels"] for x in lab)
    )
    # TRL's SFTTrainer trains on it as it is (a pre-tokenized labels column)
    trainer_for(tiny, ds, tmp_path / "t3s", steps=1).train()
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join((tiny / "train.jsonl").read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(T3SError, match="the selection was made with a different data"):
        labeled_dataset(str(other), sel, tok)
    everything = select(init, tmp_path / "b", "t3s", threshold=-1e9)  # every token an anchor: all dropped
    with pytest.raises(T3SError, match="keeps no token .* nothing to train on"):
        labeled_dataset(data, everything, tok)


@pytest.mark.parametrize(
    "settings",
    [
        {"packing": True, "max_length": 96},  # best-fit decreasing packing, padding-free batches
        {"packing": True, "max_length": 96, "packing_strategy": "wrapped"},
        {"padding_free": True, "max_length": None},  # rows are rendered (and truncated) by t3s
        {"peft": True},
    ],
    ids=["packing", "packing-wrapped", "padding-free", "lora"],
)
def test_a_labels_column_survives_trls_batching(tiny, trained, tmp_path, settings):
    """Packing, padding-free batches and LoRA (PEFT) leave the selection intact: every trained label in the
    batches TRL builds is a kept token of the selection, each kept token is trained exactly once, and a label
    sits on the token it is (Liger kernels need a GPU: not run here)."""
    from collections import Counter

    from peft import LoraConfig

    tok = AutoTokenizer.from_pretrained(tiny / "model")
    data = str(tiny / "train.jsonl")
    init = score(str(tiny / "model"), data, tmp_path / "a", settings={"dtype": "float32"}, progress=False)
    b = score(str(trained), data, tmp_path / "b", settings={"dtype": "float32"}, progress=False)
    median = float(np.median(np.concatenate(b.logprobs) - np.concatenate(init.logprobs)))
    ds = labeled_dataset(data, select(init, b, "t3s", threshold=median), tok)
    # what the selection trains: (input token, label) of every kept position, counted
    wanted = Counter((t, lab) for ids, labels in zip(ds["input_ids"], ds["labels"]) for t, lab in zip(ids, labels))
    wanted = Counter({k: n for k, n in wanted.items() if k[1] != -100})
    settings = dict(settings)
    peft = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM") if settings.pop("peft", False) else None
    trainer = trainer_for(tiny, ds, tmp_path / "run", steps=2, peft_config=peft, **settings)
    seen = Counter()
    for batch in trainer.get_train_dataloader():
        ids, labels = batch["input_ids"], batch["labels"]
        assert ids.shape == labels.shape
        if settings.get("padding_free") or settings.get("packing_strategy", "bfd") == "bfd" and "packing" in settings:
            assert ids.shape[0] == 1 and "position_ids" in batch  # several rows in one, no padding
        seen.update((int(t), int(lab)) for t, lab in zip(ids.flatten(), labels.flatten()) if lab != -100)
    assert seen == wanted and sum(seen.values()) > 0
    trainer.train()
    assert all(np.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    if peft is not None:
        assert hasattr(trainer.model, "peft_config")


def test_the_trl_example_script(tmp_path):
    from t3s.tiny import build

    tiny = build(tmp_path / "tiny", rows=64)  # as the script's docstring has it (`t3s tiny` makes 64 rows)
    out = tmp_path / "trl"
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "trl_script.py"), "--model", str(tiny / "model")]
        + ["--data", str(tiny / "train.jsonl"), "--out", str(out), "--steps", "8"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "probe: lowest training accuracy at step" in r.stdout and "t3s: trained on" in r.stdout
    assert (out / "probe" / "trajectory.png").exists() and (out / "t3s" / "model" / "config.json").exists()
    points = [json.loads(x) for x in (out / "probe" / "trajectory.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [0, 4, 8]
