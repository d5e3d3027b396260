import json
import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The built-in tiny model + tokenizer + 64 training rows, built once per test session."""
    from t3s.tiny import build

    return build(tmp_path_factory.mktemp("tiny") / "tiny", rows=16)


@pytest.fixture(scope="session")
def dtiny(tmp_path_factory):
    """Tiny AR selector (model/) + tiny ModernBERT student (dllm/) sharing one tokenizer with a mask token (the
    masked-diffusion tests, tests/test_diffusion_*.py)."""
    from t3s.tiny import build

    return build(tmp_path_factory.mktemp("dtiny") / "t", rows=12, diffusion=True, pretrain=False)


@pytest.fixture(scope="session")
def tok(tiny):
    from t3s.models import load_tokenizer

    return load_tokenizer(tiny / "model")


@pytest.fixture(scope="session")
def trained(tiny, tmp_path_factory):
    """The tiny model after a little SFT (test_evaluate, test_vllm_backend): its greedy choices are not
    near-ties, and it ends its answers with EOS."""
    from t3s.config import load_config
    from t3s.train import train

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = load_config(None, ["max_steps=30", "learning_rate=3e-3", "dtype=float32"])
    train(str(tiny / "model"), str(tiny / "train.jsonl"), out, cfg.train, cfg.render, progress=False)
    return out / "model"


def t3s_here(*args):
    """`t3s ARGS` in this process (no interpreter start-up: the error paths' tests), as subprocess.run would report
    it: returncode, stdout, stderr. The real process's exit is tested by the tests that run `python -m t3s`."""
    import contextlib
    import io
    import subprocess

    from t3s.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def write_jsonl(path, rows):
    with open(path, "w") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def started(out, last=False):
    """The stages of a `t3s run` directory in the order the run took them (its log's `running` and `skipped`
    lines; `last`: of its last run only); a mixture's teachers log in their own run directories."""
    keys, lines = [], (out / "run.log").read_text().splitlines()
    if last:
        lines = lines[max(i for i, x in enumerate(lines) if " run in " in x) :]
    for line in lines:
        for word in (": running", ": done earlier, skipped"):
            if line.endswith(word):
                key = line.split("] ", 1)[1][: -len(word)]
                if key not in keys:
                    keys.append(key)
    return keys


def scalars(logdir):
    """Every scalar in a TensorBoard log directory: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    mux.Reload()
    out = {}
    for run, tags in mux.Runs().items():
        for tag in tags["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in mux.Scalars(run, tag))
    return {k: sorted(v) for k, v in out.items()}
