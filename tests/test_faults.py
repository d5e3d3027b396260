"""Every command under bad input, faults and interruptions: one `error:` line naming the problem, exit 2, nothing
partial left behind, every input byte-identical (README, "What t3s guarantees")."""

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t3s.artifacts import read_json
from t3s.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under `root`, with the hash of each file's bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def ws(tiny, tmp_path_factory):
    """A workspace of good and broken inputs: the tiny model, a finished training run, score sets, and models
    and files damaged in the ways users damage them."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(tiny, root / "tiny")
    model, data = root / "tiny" / "model", root / "tiny" / "train.jsonl"
    assert (
        main(
            [
                "train",
                "--model",
                str(model),
                "--data",
                str(data),
                "--out",
                str(root / "run"),
                "--quiet",
                "max_steps=2",
                "dtype=float32",
            ]
        )
        == 0
    )
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(root / "scores"), "--quiet"]) == 0
    shutil.copytree(root / "scores", root / "badscores")  # a copy cut short (a full disk, a killed rsync)
    pq = root / "badscores" / "scores.parquet"
    pq.write_bytes(pq.read_bytes()[: pq.stat().st_size // 2])
    (root / "existing").mkdir()
    (root / "existing" / "notes.txt").write_text("mine\n")
    shutil.copytree(model, root / "nan")  # a model whose weights a diverged run left NaN
    w = load_file(root / "nan" / "model.safetensors")
    w["model.norm.weight"][:] = float("nan")
    save_file(w, root / "nan" / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(model, root / "trunc")  # a download or copy cut short
    f = root / "trunc" / "model.safetensors"
    with f.open("r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    shutil.copytree(model, root / "badcfg")
    (root / "badcfg" / "config.json").write_text('{"model_type": "llama",\n')
    shutil.copytree(model, root / "notok")  # weights copied without the tokenizer
    for p in (root / "notok").glob("tokenizer*"):
        p.unlink()
    lines = data.read_bytes().splitlines(keepends=True)
    (root / "latin1.jsonl").write_bytes(
        b"".join(lines[:2]) + lines[2].replace(b"+", "\u00d7".encode("latin-1")) + b"".join(lines[3:])
    )
    (root / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)) * 4)  # an image
    (root / "latin1.yaml").write_bytes("render:\n  system_prompt: r\u00e9sum\u00e9\n".encode("latin-1"))
    (root / "both.yaml").write_text("train:\n  weight_decay: 0.1\n  trainer:\n    weight_decay: 0.0\n")
    return root


# (command line with {ws} for the workspace, expected error fragment)
CASES = {
    "train --out is the input model's run": (
        "train --model {ws}/run/model --data {ws}/tiny/train.jsonl --out {ws}/run --overwrite max_steps=1",
        "contains the input model",
    ),
    "train --out an existing run": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/run max_steps=1",
        "already holds a finished training run; pass --overwrite",
    ),
    "train --out an existing directory": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/existing max_steps=1",
        "already exists and is not a t3s training run",
    ),
    "train --overwrite with a diverging run keeps the old run": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/run --overwrite optim=sgd "
        "learning_rate=10 max_grad_norm=0 max_steps=40 dtype=float32",
        "training diverged at step",
    ),
    "train diverging into a new directory": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new optim=sgd "
        "learning_rate=10 max_grad_norm=0 max_steps=40 dtype=float32",
        "training diverged at step",
    ),
    "train from NaN weights": (
        "train --model {ws}/nan --data {ws}/tiny/train.jsonl --out {ws}/new max_steps=2",
        "training diverged at step 1: loss is nan",
    ),
    "train max_steps < 0": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new max_steps=-1",
        "train.max_steps must be >= 0",
    ),
    "train num_train_epochs < 0": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new max_steps=0 num_train_epochs=-1",
        "train.num_train_epochs must be > 0",
    ),
    "train batch size 0": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new per_device_train_batch_size=0",
        "train.per_device_train_batch_size must be >= 1",
    ),
    "train negative learning rate, --overwrite": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/run --overwrite learning_rate=-1e-5",
        "train.learning_rate must be > 0",
    ),
    "train NaN learning rate": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new learning_rate=nan",
        "expected a finite number",
    ),
    "train a key both first-class and under trainer:": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new --config {ws}/both.yaml",
        "train.trainer.weight_decay: t3s sets 'weight_decay' itself; use train.weight_decay",
    ),
    "train a key t3s sets under trainer:": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new train.trainer.bf16=true",
        "t3s sets 'bf16' itself; use train.dtype",
    ),
    "train non-UTF-8 data": (
        "train --model {ws}/tiny/model --data {ws}/latin1.jsonl --out {ws}/new",
        "latin1.jsonl:3: not UTF-8 text (byte 0xd7",
    ),
    "score binary data": (
        "score --model {ws}/tiny/model --data {ws}/binary.jsonl --out {ws}/new",
        "binary.jsonl:1: not UTF-8 text (byte 0x89 at column 1); this looks like a binary file",
    ),
    "score non-UTF-8 YAML config": (
        "score --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new --config {ws}/latin1.yaml",
        "latin1.yaml:2: not UTF-8 text",
    ),
    "score NaN weights": (
        "score --model {ws}/nan --data {ws}/tiny/train.jsonl --out {ws}/new",
        "non-finite log-probabilities",
    ),
    "score --overwrite NaN weights keeps the old scores": (
        "score --model {ws}/nan --data {ws}/tiny/train.jsonl --out {ws}/scores --overwrite",
        "non-finite log-probabilities",
    ),
    "score no tokenizer": (
        "score --model {ws}/notok --data {ws}/tiny/train.jsonl --out {ws}/new",
        "no tokenizer files",
    ),
    "score truncated safetensors": (
        "score --model {ws}/trunc --data {ws}/tiny/train.jsonl --out {ws}/new",
        "truncated or corrupt",
    ),
    "score missing model directory": (
        "score --model {ws}/does/not/exist --data {ws}/tiny/train.jsonl --out {ws}/new",
        "no such model directory",
    ),
    "score --out is its data's directory": (
        "score --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/tiny --overwrite",
        "contains the input model",
    ),
    "score batch of 0 rows": (
        "score --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new max_batch=0",
        "score.max_batch must be >= 1",
    ),
    "rrt corrupt config.json": (
        "rrt --init {ws}/tiny/model --bottleneck {ws}/badcfg --final {ws}/run/model --out {ws}/new",
        "badcfg/config.json:2: bad JSON",
    ),
    "rrt truncated safetensors": (
        "rrt --init {ws}/tiny/model --bottleneck {ws}/trunc --final {ws}/run/model --out {ws}/new",
        "trunc/model.safetensors: not a readable safetensors file",
    ),
    "rrt --out over an input": (
        "rrt --init {ws}/tiny/model --bottleneck {ws}/run/model --final {ws}/run/model --out {ws}/run --overwrite",
        "contains the input bottleneck",
    ),
    "select --out over an input": (
        "select --init {ws}/scores --bottleneck {ws}/scores --mode t3s --out {ws}/scores --overwrite",
        "contains the input init",
    ),
    "eval NaN weights": (
        "eval --model {ws}/nan --data {ws}/tiny/train.jsonl --out {ws}/new eval.max_new_tokens=4",
        "parameter tensor(s) hold NaN or inf",
    ),
    "eval top_p 0": (
        "eval --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new top_p=0",
        "eval.top_p must be > 0",
    ),
    "probe --out over its model": (
        "probe --model {ws}/run/model --data {ws}/tiny/train.jsonl --out {ws}/run --overwrite",
        "contains the input model",
    ),
    "probe NaN weights": (
        "probe --model {ws}/nan --data {ws}/tiny/train.jsonl --out {ws}/new max_steps=2 eval.max_new_tokens=4",
        "hold NaN or inf",
    ),
    "select truncated scores.parquet": (
        "select --init {ws}/scores --bottleneck {ws}/badscores --mode t3s --out {ws}/new",
        "badscores/scores.parquet: not a readable Parquet file, truncated or corrupt",
    ),
    "train loss diverges (lr 10)": (
        "train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new learning_rate=10 max_steps=8 "
        "dtype=float32",
        "training diverged at step 4: the loss is",
    ),
    "probe patience 0": (
        "probe --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new probe.patience=0",
        "probe.patience must be >= 1",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_and_leaves_everything_as_it_was(ws, name, capsys):
    line, fragment = CASES[name]
    before = snapshot(ws)
    code = main([*line.format(ws=ws).split(), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err, err
    assert "Traceback" not in err
    command = line.split()[0]
    assert err.strip().splitlines()[-1].startswith(f"t3s {command}: error: "), err
    assert snapshot(ws) == before  # nothing partial left behind, every input byte-identical


def test_yaml_off_and_on_are_the_documented_values(tmp_path, tiny):
    """YAML 1.1 reads `off` as false: `chat_template: off` means what the README says."""
    from t3s.config import RenderConfig, load_config

    (tmp_path / "c.yaml").write_text("render:\n  chat_template: off\n")
    assert load_config(tmp_path / "c.yaml").render.chat_template == "off"
    (tmp_path / "c.yaml").write_text("render:\n  chat_template: on\n")
    assert load_config(tmp_path / "c.yaml").render.chat_template == "on"
    assert load_config(None, ["chat_template=off"]).render.chat_template == "off"
    assert RenderConfig(chat_template=False).chat_template == "off"
    with pytest.raises(Exception, match="bad value for 'system_prompt'"):  # only on/off keys read booleans
        load_config(None, ["render.system_prompt=off"])


def test_every_managed_trainer_key_is_refused_and_the_list_is_complete(tmp_path):
    """`train.trainer` may not repeat what t3s sets: MANAGED must name every key `training_arguments` and
    `make_trainer` set that is not a train setting of its own name."""
    import dataclasses

    from t3s import T3SError
    from t3s.config import MANAGED, TrainConfig
    from t3s.objectives.base import training_arguments

    own = {f.name for f in dataclasses.fields(TrainConfig)}
    set_by_t3s = set(training_arguments(TrainConfig(), tmp_path, progress=False)) | {"max_length", "dataset_kwargs"}
    unnamed = {k for k in set_by_t3s - own if k not in MANAGED}
    assert unnamed == set(), unnamed
    for key in set_by_t3s:
        with pytest.raises(T3SError, match=f"t3s sets '{key}' itself"):
            TrainConfig(trainer={key: 1})
    TrainConfig(trainer={"adam_beta2": 0.95})  # anything else passes through


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(ws, monkeypatch, capsys):
    """ENOSPC from the last write of `t3s score` and of `t3s train --overwrite`: the message says so, the
    temporary directory is gone and the previous result is untouched."""
    import errno

    import t3s.score
    import t3s.train
    from t3s.artifacts import write_json

    def full(path, obj):
        if Path(path).name in ("meta.json", "train.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_json(path, obj)

    monkeypatch.setattr(t3s.score, "write_json", full)
    monkeypatch.setattr(t3s.train, "write_json", full)
    before = snapshot(ws)
    for line in (
        f"score --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new",
        f"score --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/scores --overwrite",
        f"train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/run --overwrite max_steps=1",
        f"train --model {ws}/tiny/model --data {ws}/tiny/train.jsonl --out {ws}/new max_steps=1",
    ):
        assert main([*line.split(), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "error: no space left on device (" in err and "Traceback" not in err, err
        assert snapshot(ws) == before, line


def t3s_process(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "t3s", *args, "--quiet"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        **kw,
    )


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.2)


def test_sigterm_during_train_keeps_a_resumable_run_and_says_how(tiny, tmp_path):
    """A scheduler's pre-emption: SIGTERM stops training with one line naming the last complete checkpoint;
    `--resume` continues it to the end."""
    args = [
        "train",
        "--model",
        str(tiny / "model"),
        "--data",
        str(tiny / "train.jsonl"),
        "--out",
        str(tmp_path / "run"),
        "max_steps=200",
        "save_steps=10",
        "dtype=float32",
    ]
    proc = t3s_process(args, tmp_path)
    wait_for(lambda: (tmp_path / "run" / "checkpoints" / "checkpoint-10" / "trainer_state.json").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "t3s train: interrupted (SIGTERM); " in err and "rerun with --resume to continue" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "train.json").exists() and (tmp_path / "run" / "train.started.json").exists()
    assert not [p for p in tmp_path.rglob(".*.tmp")]
    # a checkpoint the kill cut short (no trainer_state.json) is dropped, not resumed from; the run then ends
    (tmp_path / "run" / "checkpoints" / "checkpoint-999999").mkdir()
    assert main([*args, "--resume", "--quiet"]) == 0
    s = read_json(tmp_path / "run" / "train.json")
    assert s["global_step"] == 200 and not (tmp_path / "run" / "checkpoints").exists()


def test_sigterm_during_probe_leaves_nothing(tiny, tmp_path):
    args = [
        "probe",
        "--model",
        str(tiny / "model"),
        "--data",
        str(tiny / "train.jsonl"),
        "--out",
        "probe",
        "max_steps=100000",
        "probe.eval_every=20",
        "eval.max_new_tokens=4",
        "dtype=float32",
    ]
    proc = t3s_process(args, tmp_path)
    wait_for(lambda: any(tmp_path.glob(".probe.*.tmp/trajectory.jsonl")), proc)
    time.sleep(1.0)  # mid-training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "t3s probe: interrupted (SIGTERM); nothing was written" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_real_file_size_limit_while_saving_the_model(tiny, tmp_path):
    """A real write failure (RLIMIT_FSIZE: EFBIG from inside safetensors' Rust writer) while `t3s train` saves
    its model: one line, and the new run directory is removed."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    assert (tiny / "model" / "model.safetensors").stat().st_size > 200_000  # the save must hit the limit
    proc = t3s_process(
        ["train", "--model", str(tiny / "model"), "--data", str(tiny / "train.jsonl"), "--out", "run", "max_steps=1"],
        tmp_path,
        preexec_fn=limit,
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "t3s train: error: file too large (a file-size limit of this machine or job) (writing run)" in err, err
    assert "nothing was kept" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_run_stops_at_its_first_training_stage(tiny, tmp_path, capsys):
    """`t3s run`: the probe's training diverges; the run stops there with the step, records no stage and writes
    no summary (a rerun with a sane learning rate starts that stage afresh)."""
    import yaml

    cfg = {
        "student": str(tiny / "model"),
        "train_data": str(tiny / "train.jsonl"),
        "modes": ["sft", "t3s"],
        "train": {"optim": "sgd", "learning_rate": 10, "max_grad_norm": 0, "max_steps": 40, "dtype": "float32"},
        "probe": {"eval_every": 20},
        "eval": {"max_new_tokens": 4},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "t3s run: error: training diverged at step" in err and "Traceback" not in err, err
    out = tmp_path / "out"
    assert (out / "run.log").exists() and not list(out.glob("stages/*.json"))
    assert not (out / "summary.json").exists() and not (out / "seed-0" / "probe").exists()


def test_divergence_rule_and_a_run_that_trains_on_is_marked(tiny, tmp_path, capsys):
    """A loss far above its start, sustained, is divergence (one spike is not); with
    train.stop_on_divergence=false the run finishes, warns, and its summary says where it diverged."""
    import json
    import math

    from t3s.objectives.base import diverged

    limit = max(3 * 6.0, 6.0 + math.log(1000))  # the rule, computed here: 3x the start, and ln V above it
    assert diverged([(1, 6.0), (2, 5.0), (3, 500.0), (4, 4.0), (5, 3.0)], 1000) is None  # a spike
    assert diverged([(1, 6.0), (2, 5.0), (3, limit - 0.01), (4, 300.0), (5, 300.0)], 1000) is None
    d = diverged([(1, 6.0), (2, limit + 1), (3, limit + 2), (4, limit + 3)], 1000)
    assert d == {"step": 4, "loss": limit + 3, "start_step": 1, "start_loss": 6.0, "limit": limit}
    args = ["train", "--model", str(tiny / "model"), "--data", str(tiny / "train.jsonl"), "--out", str(tmp_path / "r")]
    assert main([*args, "--quiet", "learning_rate=10", "max_steps=6", "dtype=float32", "stop_on_divergence=false"]) == 0
    out = capsys.readouterr()
    s = json.loads((tmp_path / "r" / "train.json").read_text())
    losses = [h["loss"] for h in s["log_history"] if "loss" in h]
    assert s["diverged"]["step"] == 4 and s["diverged"]["start_loss"] == losses[0] and losses[3] > 100 * losses[0]
    assert "DIVERGED (loss" in out.out and "warning: training diverged at step 4" in out.err


def test_ctrl_c_is_one_line_and_exit_130(ws, monkeypatch, capsys):
    import t3s.score

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(t3s.score, "run_score", interrupted)
    assert (
        main(
            [
                "score",
                "--model",
                f"{ws}/tiny/model",
                "--data",
                f"{ws}/tiny/train.jsonl",
                "--out",
                f"{ws}/new",
                "--quiet",
            ]
        )
        == 130
    )
    assert capsys.readouterr().err.strip() == (
        "t3s score: interrupted (Ctrl-C); nothing partial was written: rerun the command"
    )


def test_nonfinite_weights_flags_each_bad_tensor_and_skips_meta_and_empty_ones():
    """One flag per tensor, read once: the bad tensors by name; meta-device (not yet materialised) and empty
    (ZeRO-3 partitioned) parameters hold no values and must not raise or count."""
    import torch

    from t3s.models import nonfinite_weights

    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    assert nonfinite_weights(m) == []
    with torch.no_grad():
        m[0].bias[1] = float("inf")
        m[1].weight[0, 0] = float("nan")
    assert nonfinite_weights(m) == ["0.bias", "1.weight"]
    meta = torch.nn.Linear(3, 3, device="meta")
    assert nonfinite_weights(meta) == []
    mixed = torch.nn.Module()
    mixed.a, mixed.b = torch.nn.Linear(2, 2, device="meta"), torch.nn.Linear(2, 2)
    mixed.empty = torch.nn.Parameter(torch.empty(0))
    with torch.no_grad():
        mixed.b.weight[1, 1] = float("nan")
    assert nonfinite_weights(mixed) == ["b.weight"]
