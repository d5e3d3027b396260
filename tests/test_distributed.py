"""Two processes (torchrun, gloo on CPU) produce what one process produces: scores, keep-masks and forced sets,
evaluation samples, the probe, AR training and diffusion training.

One torchrun launch runs every 2-process command (tests/dist_driver.py); the 1-process references run in this
process first, with the same global batch (rows per device x accumulation steps x processes).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_jsonl

from t3s.cli import main as t3s
from t3s.models import load_causal_lm, resolve_precision
from t3s.score import load_scores
from t3s.select import load_selection

FP32 = resolve_precision("float32")
HERE = Path(__file__).parent


def commands(w: Path, x: Path, ref: Path, two: bool) -> list[list[str]]:
    """The commands of one side (`x`: its output folder); `ref`: the 1-process folder (θ_b comes from its probe).
    Per-device batches halve on two processes, so every optimizer step sees the same rows."""
    q = ["--quiet", "--dtype", "float32"]
    eight, data = str(w / "eight.jsonl"), str(w / "train.jsonl")
    probe = [
        "probe",
        "--model",
        str(w / "model"),
        "--data",
        eight,
        "--out",
        str(x / "probe"),
        *q,
        "learning_rate=3e-3",
        "max_steps=4",
        "eval_every=2",
        "eval.max_new_tokens=16",
        "continue_without_dip=true",
        f"per_device_train_batch_size={2 if two else 4}",
    ]

    def score(model, out):
        return ["score", "--model", model, "--data", data, "--out", str(x / out), *q]

    def ev(out, *kv, model="model"):
        return [
            "eval",
            "--model",
            str(w / model),
            "--data",
            data,
            "--out",
            str(x / out),
            *q,
            "max_new_tokens=12",
            "batch_size=3",
            *kv,
        ]

    sgd = ["optim=sgd", "learning_rate=0.5", "max_steps=3", "max_grad_norm=0", "logging_steps=1"]
    ar = [
        "train",
        "--model",
        str(w / "model"),
        "--data",
        eight,
        "--selection",
        str(w / "sel"),
        "--out",
        str(x / "train"),
        *q,
        *sgd,
        *(
            ["per_device_train_batch_size=1", "gradient_accumulation_steps=2"]
            if two
            else ["per_device_train_batch_size=4"]
        ),
    ]
    # the online token losses, every token labelled: memft's kept count, eaft's weights and asft's reference
    # forward must not depend on how the global batch is split (memft's threshold ~ 1/vocabulary: a random model
    # is above it on some tokens)
    online = [
        [*ar[:5], "--out", str(x / f"train-{loss}"), *ar[ar.index("--out") + 2 :], f"loss={loss}", *kv]
        for loss, kv in (("memft", ["memft_threshold=0.0026"]), ("eaft", ["eaft_k=5"]), ("asft", ["asft_kl_weight=2"]))
    ]
    # diffusion pads each micro-batch to its longest response: the same micro-batches on both sides
    dlm = [
        "train",
        "--model",
        str(w / "dllm"),
        "--data",
        data,
        "--selection",
        str(x / "forced"),
        "--out",
        str(x / "dtrain"),
        *q,
        "learning_rate=1e-3",
        "max_steps=3",
        "logging_steps=1",
        "max_grad_norm=0",
        "per_device_train_batch_size=2",
        f"gradient_accumulation_steps={1 if two else 2}",
    ]
    forced = [
        "select",
        "--init",
        str(x / "s0"),
        "--bottleneck",
        str(x / "sb"),
        "--mode",
        "t3s",
        "--forced",
        "--tau",
        "0",
        "--out",
        str(x / "forced"),
    ]
    return [
        probe,
        score(str(w / "model"), "s0"),
        score(str(ref / "probe" / "bottleneck"), "sb"),
        ev("eval"),
        ev("eval-k2", "k=2", "temperature=1.0", "seed=3"),
        # the diffusion sampler: batches dealt to the processes; bidirectional (today's) and LLaDA-2's block-causal
        # reading with the cache and threshold decoding (uneven prompts in a batch of 3: the per-row grid)
        ev("eval-dllm", "max_new_tokens=16", "diffusion.block_length=8", "temperature=1.0", model="dllm"),
        [
            *ev("eval-dllm2", "max_new_tokens=16", "diffusion.block_length=8", model="dllm2"),
            "--trust-remote-code",
            "temperature=1.0",
            "diffusion.cache=prefix",
            "diffusion.commit_threshold=0.5",
        ],
        ar,
        *online,
        forced,
        dlm,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_train import crafted_selection

    from t3s.models import load_tokenizer
    from t3s.tiny import build

    root = tmp_path_factory.mktemp("dist")
    w = build(root / "world", rows=16, diffusion=True, pretrain=False)  # model/ (AR), dllm/ (diffusion)
    rows = [json.loads(line) for line in open(w / "train.jsonl")][:8]
    write_jsonl(w / "eight.jsonl", rows)
    # uneven kept-token counts across rows: a per-process mean of the loss would not equal the global mean
    crafted_selection(
        w / "sel", load_tokenizer(w / "model"), w / "eight.jsonl", lambda i, j: (j < 4) if i % 2 else (i + j) % 3 != 0
    )
    one, two = root / "one", root / "two"
    t0, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes (OMP_NUM_THREADS=1); spinning threads crawl on a busy CPU
    try:
        for argv in commands(w, one, one, two=False):
            assert t3s(argv) == 0, argv
    finally:
        torch.set_num_threads(threads)
    t1 = time.perf_counter()
    cmds = root / "commands.json"
    listed = commands(w, two, one, two=True)
    # scoring and evaluation as `accelerate launch --config_file examples/accelerate/fsdp2.yaml` starts them: with
    # the variables that make transformers load for FSDP (placeholders on all but process 0)
    fsdp = {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
    listed[1:7] = [["env", fsdp], *listed[1:7], ["env", dict.fromkeys(fsdp)]]
    mixed = ["score", "--data", str(w / "train.jsonl"), "--quiet", "--dtype", "float32"]
    mixed = [  # process 1 is handed other weights (another node's copy of the files): refused on both
        [*mixed, "--model", str(w / "model"), "--out", str(two / "mixed")],
        [*mixed, "--model", str(one / "probe" / "bottleneck"), "--out", str(two / "mixed")],
    ]
    eight = ["--data", str(w / "eight.jsonl"), "--quiet", "--dtype", "float32", "lora_r=8", "max_steps=2"]
    lora = [  # LoRA under FSDP: refused before anything loads, not after the run when the merge needs the shards
        ["env", fsdp],
        [
            "per-rank",
            str(two / "lora-train"),
            [["train", "--model", str(w / "model"), "--out", str(two / "lt"), *eight]] * 2,
        ],
        [
            "per-rank",
            str(two / "lora-probe"),
            [["probe", "--model", str(w / "model"), "--out", str(two / "lp"), *eight]] * 2,
        ],
        ["env", dict.fromkeys(fsdp)],
    ]
    cmds.write_text(
        json.dumps([["selftest", str(two / "selftest.json")], *listed, ["per-rank", str(two / "mixed"), mixed], *lora])
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(HERE / "dist_driver.py"),
            str(cmds),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-3000:]}\n{r.stderr[-30000:]}"
    print(f"1 process (in-process): {t1 - t0:.1f}s; 2 processes (torchrun): {time.perf_counter() - t1:.1f}s")
    return w, one, two


def params(path):
    return {n: p.detach() for n, p in load_causal_lm(path, FP32).named_parameters()}


def losses(run: Path) -> list[float]:
    return [h["loss"] for h in json.loads((run / "train.json").read_text())["log_history"] if "loss" in h]


def test_dist_helpers_shard_gather_and_propagate_errors(runs):
    _, _, two = runs
    st = json.loads((two / "selftest.json").read_text())
    res, parts = st["results"], st["parts"]
    assert [r["rank"] for r in res] == [0, 1] and all(r["world"] == 2 for r in res)
    for r in res:
        assert r["got"] == [10 * x for x in st["items"]]  # every process, original order
        assert r["error"] == "boom on the main process"  # raised on the main process, seen by both
        assert r["visible"] == "main"
    assert sorted(parts[0] + parts[1]) == st["items"] and parts[0] and parts[1]  # disjoint, both worked

    def cost(p):
        return sum(st["costs"][i] for i in p)

    assert abs(cost(parts[0]) - cost(parts[1])) <= max(st["costs"])  # balanced by cost


def test_scores_and_masks_match_one_process(runs):
    _, one, two = runs
    for name in ("s0", "sb"):
        a, b = load_scores(one / name), load_scores(two / name)
        assert a.ids == b.ids and a.prompt_lens == b.prompt_lens
        for x, y, rx, ry in zip(a.logprobs, b.logprobs, a.response_ids, b.response_ids):
            np.testing.assert_array_equal(rx, ry)
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
    a, b = load_selection(one / "forced"), load_selection(two / "forced")
    assert a.ids == b.ids
    fa, fb = np.concatenate(a.forced), np.concatenate(b.forced)
    assert 0 < fa.sum() < len(fa)  # a non-trivial forced set
    np.testing.assert_array_equal(fa, fb)
    from t3s.select import select

    ka = select(load_scores(one / "s0"), load_scores(one / "sb"), "t3s", 0.0, 0, None).keep
    kb = select(load_scores(two / "s0"), load_scores(two / "sb"), "t3s", 0.0, 0, None).keep
    ka, kb = np.concatenate(ka), np.concatenate(kb)
    assert 0 < ka.sum() < len(ka)
    np.testing.assert_array_equal(ka, kb)


def test_a_process_with_other_weights_is_refused(runs):
    """Scores of one process loaded from other files would be finite and wrong: every process refuses, with the
    tensor named, and nothing is written. (The scores and samples above were made under the variables that
    `accelerate launch` exports for FSDP, and equal one process's.)"""
    _, _, two = runs
    for rank in (0, 1):
        got = json.loads((two / f"mixed.{rank}.json").read_text())
        assert got["code"] == 2, got
        assert "process 1 holds other weights than process 0" in got["stderr"]
    assert not (two / "mixed").exists()


@pytest.mark.parametrize("stage,out", [("lora-train", "lt"), ("lora-probe", "lp")])
def test_lora_under_fsdp_is_refused_before_loading(runs, stage, out):
    _, _, two = runs
    for rank in (0, 1):
        got = json.loads((two / f"{stage}.{rank}.json").read_text())
        assert got["code"] == 2, got
        assert "train.lora_r=8 under FSDP" in got["stderr"]
    assert not (two / out).exists()


@pytest.mark.parametrize("name", ["eval", "eval-k2", "eval-dllm", "eval-dllm2"])
def test_eval_samples_identical(runs, name):
    _, one, two = runs
    a = (one / name / "samples.jsonl").read_text().splitlines()
    b = (two / name / "samples.jsonl").read_text().splitlines()
    assert a == b
    responses = [json.loads(line)["response"] for line in a]
    assert len(set(responses)) > len(responses) // 2  # the prompts got different answers: order matters
    ma, mb = (json.loads((d / name / "metrics.json").read_text())["metrics"] for d in (one, two))
    assert ma == mb


def test_ar_training_matches_one_process(runs):
    _, one, two = runs
    la, lb = losses(one / "train"), losses(two / "train")
    assert len(la) == len(lb) == 3
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    a, b = params(one / "train"), params(two / "train")
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=1e-4, msg=n)
    ja, jb = (json.loads((d / "train" / "train.json").read_text()) for d in (one, two))
    assert ja["kept_tokens"] == jb["kept_tokens"] < ja["response_tokens"]


@pytest.mark.parametrize("loss", ["memft", "eaft", "asft"])
def test_online_token_losses_match_one_process(runs, loss):
    """Two processes x 1 row x 2 accumulation steps against one process x 4 rows: the same 3 SGD steps."""
    _, one, two = runs
    la, lb = losses(one / f"train-{loss}"), losses(two / f"train-{loss}")
    assert len(la) == len(lb) == 3
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    a, b = params(one / f"train-{loss}"), params(two / f"train-{loss}")
    assert any(not torch.equal(a[n], params(runs[0] / "model")[n]) for n in a)
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=1e-4, msg=n)
    if loss == "memft":  # the mask keeps some tokens and not others, on both sides
        kept = [
            h["memft_kept"]
            for h in json.loads((two / "train-memft" / "train.json").read_text())["log_history"]
            if "memft_kept" in h
        ]
        assert kept and all(0 < k < 1 for k in kept), kept


def test_probe_matches_one_process(runs):
    _, one, two = runs
    pa, pb = (json.loads((d / "probe" / "probe.json").read_text()) for d in (one, two))
    for key in ("bottleneck_step", "steps_run", "points", "completed", "dip_found"):
        assert pa[key] == pb[key], key
    ta, tb = ([json.loads(s) for s in (d / "probe" / "trajectory.jsonl").read_text().splitlines()] for d in (one, two))
    assert [p["step"] for p in ta] == [p["step"] for p in tb] == [0, 2, 4]
    for p, q in zip(ta, tb):
        for key in ("train_accuracy", "no_answer_rate", "length", "marker_rate"):
            assert p[key] == q[key], key
        for key in ("loss", "confidence"):
            assert (p[key] is None and q[key] is None) or abs(p[key] - q[key]) < 1e-4, key
    za, zb = (np.load(d / "probe" / "token_logprobs.npz") for d in (one, two))
    assert sorted(za.files) == sorted(zb.files)
    for f in za.files:
        if f.startswith("step_"):
            np.testing.assert_allclose(za[f], zb[f], atol=1e-4)
    for ckpt in ("bottleneck", "final"):
        a, b = params(one / "probe" / ckpt), params(two / "probe" / ckpt)
        for n in a:
            torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=1e-4, msg=f"{ckpt}: {n}")


def test_diffusion_training_matches_one_process(runs):
    _, one, two = runs
    la, lb = losses(one / "dtrain"), losses(two / "dtrain")
    assert len(la) == len(lb) == 3
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    ja, jb = (json.loads((d / "dtrain" / "train.json").read_text()) for d in (one, two))
    assert ja["forced_tokens"] == jb["forced_tokens"] > 0
    from safetensors.torch import load_file

    a, b = (load_file(d / "dtrain" / "model" / "model.safetensors") for d in (one, two))
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=1e-4, msg=n)
