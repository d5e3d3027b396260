"""`make gpu-check`: the GPU acceptance check. Every path of t3s that only a GPU takes (CUDA placement, the bf16
precision plan, the fused scorer's kernels, the diffusion trainer's devices, the Trainer integration), run once by
one command, with the figure each row measures and, where one exists, the CPU fp32 reference it is compared with.

    python -m bench.gpu_check --out runs/gpu-check                  # on a GPU machine (about 5 minutes on an H200)
    python -m bench.gpu_check --out DIR --device cpu --smoke        # the same rows on CPU, tiny sizes (make test)
    bash bench/gpu_check.sh DIR                                     # on a lent machine without TRL etc. (below)

Writes DIR/gpu_check.json and DIR/gpu_check.md (atomically) and prints the table; exits 1 when a row fails.
Nothing is downloaded: the models are built on the spot, with random weights, from real configurations (a
Qwen3-0.6B-shaped causal LM) and t3s's tiny models (`t3s.tiny`). Rows:

1. train-precision: the default plan (fp32 master weights, bf16 compute on a GPU) against a CPU fp32 run, 20
   AdamW steps at lr 1e-5 on the tiny model: the update is kept (the share of weights that moved, the relative
   difference of the parameter change, the loss curve); pure bf16 (opt-in) beside it, with the updates it loses.
2. diffusion: the masked-diffusion trainer and its sampler on the device against CPU fp32 (the device-mix class of
   bug): the losses of a few steps, then samples.
3. scoring: t3s's fused scorer against the naive full-logit forward on the Qwen3-0.6B shape (max |Δ| of the
   log-probabilities), peak memory of both, tokens/s; anchor flips of bf16 against fp32 scoring.
4. throughput (GPU figures for BENCHMARKS.md): the bf16 matmul peak measured here, training tokens/s and MFU on
   the Qwen3-0.6B shape, batched generation against one prompt at a time.
5. tiny-run: `t3s run examples/tiny-run.yaml` end to end on the device; every method's accuracy against CPU within
   two standard errors of the evaluation set.
6. trl-script: examples/trl_script.py (the ProbeCallback in a plain TRL SFTTrainer script) on the device.

Not checkable on one chip without a network, and said so in the table: several GPUs (NCCL, DeepSpeed ZeRO-2/3,
FSDP2; the gloo tests in tests/test_distributed.py stand in) and vLLM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# Tolerances of the comparisons with the CPU fp32 reference (bf16 compute against fp32: not bit-equal)
TOL = {
    "update_kept": 0.9,  # share of the weights the fp32 run moves that the device run moves too: at least
    "update_rel": 0.35,  # |Δθ_device − Δθ_cpu| / |Δθ_cpu| after the training steps: at most
    "loss_abs": 0.05,  # largest |loss_device − loss_cpu| over the logged steps: at most
    "score_abs": 2e-3,  # fused scorer vs the naive forward, fp32 log-probabilities: at most
    "diffusion_loss_rel": 0.02,  # diffusion losses, device vs CPU: at most
    "accuracy_se": 2.0,  # tiny-run accuracies, device vs CPU, in standard errors of the evaluation set: at most
}

QWEN3_06B = dict(  # Qwen/Qwen3-0.6B's config.json (architecture fields)
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=True,
)
QWEN3_SMOKE = {**QWEN3_06B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "head_dim": 16}


class Check:
    def __init__(self, device: str, out: Path, smoke: bool):
        self.device, self.out, self.smoke = device, out, smoke
        self.world: Path | None = None

    def tiny(self) -> Path:
        """t3s's tiny models (AR model/, diffusion dllm/) and data, built once (no pretraining: seconds)."""
        if self.world is None:
            from t3s.tiny import build

            self.world = build(self.out / "world", rows=16, diffusion=True, pretrain=False, overwrite=True)
        return self.world

    def t3s(self, argv: list[str], cpu: bool = False) -> None:
        """A t3s command: in this process on the device; the CPU reference in a process that sees no GPU."""
        if cpu and self.device != "cpu":
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
            r = subprocess.run([sys.executable, "-m", "t3s", *argv], env=env, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"t3s {' '.join(argv)} (CPU) exited {r.returncode}: {r.stderr[-2000:]}")
            return
        from t3s.cli import main

        code = main(argv)
        if code:
            raise RuntimeError(f"t3s {' '.join(argv)} exited {code}")


# ----------------------------------------------------------------------------------------------- rows


def _params(path: Path) -> dict[str, Any]:
    from t3s.models import load_causal_lm, resolve_precision

    model = load_causal_lm(path, resolve_precision("float32"), place=False)
    return {n: p.detach().double() for n, p in model.named_parameters()}


def _losses(run: Path) -> list[float]:
    hist = json.loads((run / "train.json").read_text())["log_history"]
    return [h["loss"] for h in hist if "loss" in h]


def _update(theta0: dict, theta: dict, ref: dict | None = None) -> dict[str, float]:
    moved = sum(int(((theta[n] - theta0[n]) != 0).sum()) for n in theta0)
    total = sum(t.numel() for t in theta0.values())
    out = {"moved": moved / total}
    if ref is not None:
        num = sum(float(((theta[n] - theta0[n]) - (ref[n] - theta0[n])).pow(2).sum()) for n in theta0)
        den = sum(float((ref[n] - theta0[n]).pow(2).sum()) for n in theta0)
        out["rel"] = math.sqrt(num / den) if den else float("inf")
    return out


def train_precision(c: Check) -> dict[str, Any]:
    import torch

    w = c.tiny()
    steps = 3 if c.smoke else 20
    base = ["train", "--model", str(w / "model"), "--data", str(w / "train.jsonl"), "--quiet"]
    kv = [f"max_steps={steps}", "learning_rate=1e-5", "logging_steps=1", "per_device_train_batch_size=8"]
    runs = {"device": c.out / "train" / "device", "cpu": c.out / "train" / "cpu", "pure": c.out / "train" / "pure"}
    c.t3s([*base, "--out", str(runs["device"]), "--overwrite", *kv])  # the default plan (dtype=auto)
    c.t3s([*base, "--out", str(runs["cpu"]), "--overwrite", "--dtype", "float32", *kv], cpu=True)
    c.t3s([*base, "--out", str(runs["pure"]), "--overwrite", "--dtype", "bfloat16", "pure_bf16=true", *kv])
    theta0 = _params(w / "model")
    cpu = _params(runs["cpu"] / "model")
    dev = _update(theta0, _params(runs["device"] / "model"), cpu)
    pure_theta = _params(runs["pure"] / "model")
    pure = _update(theta0, pure_theta, cpu)
    # pure bf16 stores every weight rounded: a weight it updated is one that differs from the rounded start
    rounded = {n: t.to(torch.bfloat16).double() for n, t in theta0.items()}
    pure["moved"] = _update(rounded, pure_theta)["moved"]
    ref = _update(theta0, cpu)
    loss = max(abs(a - b) for a, b in zip(_losses(runs["device"]), _losses(runs["cpu"])))
    plan = json.loads((runs["device"] / "train.json").read_text())["precision"]
    kept = dev["moved"] / ref["moved"]
    ok = kept >= TOL["update_kept"] and dev["rel"] <= TOL["update_rel"] and loss <= TOL["loss_abs"]
    return {
        "ok": ok,
        "figure": f"{plan}: moved {100 * dev['moved']:.1f}% of weights (fp32 CPU {100 * ref['moved']:.1f}%), "
        f"|Δθ−Δθ_cpu|/|Δθ_cpu| {dev['rel']:.3f}, max |Δloss| {loss:.4f}; pure bf16 (opt-in) moved "
        f"{100 * pure['moved']:.1f}%, losing {100 * max(0.0, 1 - pure['moved'] / ref['moved']):.0f}% of the updates "
        f"(rel {pure['rel']:.3f})",
        "tolerance": f"moved ≥ {TOL['update_kept']:.0%} of CPU's, rel ≤ {TOL['update_rel']}, |Δloss| ≤ "
        f"{TOL['loss_abs']}",
        "values": {"plan": plan, "device": dev, "cpu": ref, "pure_bf16": pure, "max_loss_diff": loss, "steps": steps},
    }


def diffusion(c: Check) -> dict[str, Any]:
    w = c.tiny()
    steps = 2 if c.smoke else 6
    base = ["train", "--model", str(w / "dllm"), "--data", str(w / "train.jsonl"), "--quiet", "--dtype", "float32"]
    kv = [f"max_steps={steps}", "learning_rate=1e-3", "logging_steps=1", "max_grad_norm=0"]
    dev, cpu = c.out / "diffusion" / "device", c.out / "diffusion" / "cpu"
    c.t3s([*base, "--out", str(dev), "--overwrite", *kv])
    c.t3s([*base, "--out", str(cpu), "--overwrite", *kv], cpu=True)
    a, b = _losses(dev), _losses(cpu)
    rel = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    ev = ["eval", "--data", str(w / "train.jsonl"), "--quiet", "--dtype", "float32", "max_new_tokens=16"]
    ev += ["diffusion.block_length=8", "diffusion.steps=8", "--overwrite"]
    c.t3s([*ev, "--model", str(dev / "model"), "--out", str(dev / "eval")])
    c.t3s([*ev, "--model", str(dev / "model"), "--out", str(cpu / "eval")], cpu=True)

    def samples(d: Path) -> list[str]:
        return [json.loads(x)["response"] for x in (d / "eval" / "samples.jsonl").read_text().splitlines()]

    sa, sb = samples(dev), samples(cpu)
    same = sum(x == y for x, y in zip(sa, sb)) / len(sa)
    # the LLaDA-2-shaped student (remote code): block-causal reading, the KV cache, threshold decoding, on the device
    fast = [*ev[:-1], "diffusion.cache=prefix", "diffusion.commit_threshold=0.9", "--trust-remote-code"]
    c.t3s([*fast, "--model", str(w / "dllm2"), "--out", str(dev / "fast"), "--overwrite"])
    c.t3s([*fast, "--model", str(w / "dllm2"), "--out", str(cpu / "fast"), "--overwrite"], cpu=True)
    fa = [json.loads(x)["response"] for x in (dev / "fast" / "samples.jsonl").read_text().splitlines()]
    fb = [json.loads(x)["response"] for x in (cpu / "fast" / "samples.jsonl").read_text().splitlines()]
    fsame = sum(x == y for x, y in zip(fa, fb)) / max(len(fa), 1)
    return {
        "ok": rel <= TOL["diffusion_loss_rel"] and len(sa) == len(sb) > 0 and len(fa) == len(fb) > 0,
        "figure": f"{steps} steps: max relative loss difference {rel:.2e}; samples of the trained student identical "
        f"to CPU's for {100 * same:.0f}% of {len(sa)} prompts; LLaDA-2-shaped student, block-causal + cache + "
        f"threshold 0.9: {100 * fsame:.0f}% identical",
        "tolerance": f"loss rel ≤ {TOL['diffusion_loss_rel']} (samples: reported)",
        "values": {"losses_device": a, "losses_cpu": b, "same_samples": same, "same_samples_fast": fsame},
    }


def _qwen3(c: Check, dtype: Any) -> Any:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    conf = Qwen3Config(**(QWEN3_SMOKE if c.smoke else QWEN3_06B))
    with torch.device(c.device):
        model = Qwen3ForCausalLM(conf).to(dtype)
    return model.eval()


def _examples(n: int, length: int, vocab: int, seed: int = 0) -> list[Any]:
    from t3s.data import Example

    rng = np.random.default_rng(seed)
    return [Example(str(i), rng.integers(0, vocab, length).tolist(), length // 4) for i in range(n)]


def _peak(device: str, fn: Callable[[], Any]) -> tuple[Any, float | None, float]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return out, (torch.cuda.max_memory_allocated() - base) / 2**30, time.perf_counter() - t0
    return out, None, time.perf_counter() - t0


def scoring(c: Check) -> dict[str, Any]:
    import torch

    from t3s.models import Precision
    from t3s.score import response_logprobs

    n, length = (2, 64) if c.smoke else (8, 2048)
    fp32 = Precision(torch.float32, None, c.device)
    model = _qwen3(c, torch.float32)
    ex = _examples(n, length, model.config.vocab_size)
    fast, fast_gb, fast_s = _peak(c.device, lambda: response_logprobs(model, ex, fp32, progress=False))

    def naive() -> list[np.ndarray]:
        out = []
        for e in ex:
            ids = torch.tensor([e.input_ids], device=c.device)
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits[0].float()
            lp = torch.log_softmax(logits[e.prompt_len - 1 : -1], -1)
            out.append(lp.gather(1, ids[0, e.prompt_len :, None])[:, 0].cpu().numpy())
        return out

    ref, naive_gb, naive_s = _peak(c.device, naive)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(fast, ref))
    tokens = sum(len(e.input_ids) for e in ex)
    # anchor flips: Δc between θ_0 and a nearby θ_b, scored in bf16 and in fp32; the sign that decides an anchor
    bf16 = Precision(torch.bfloat16, None, c.device)
    theta_b = _qwen3(c, torch.float32)
    with torch.no_grad():
        g = torch.Generator(device=c.device).manual_seed(1)
        for p in theta_b.parameters():
            p.add_(1e-3 * p.abs().mean() * torch.randn(p.shape, generator=g, device=c.device))

    def delta(prec: Any) -> np.ndarray:
        m0 = model.to(prec.weights)
        a = np.concatenate(response_logprobs(m0, ex, prec, progress=False))
        mb = theta_b.to(prec.weights)
        b = np.concatenate(response_logprobs(mb, ex, prec, progress=False))
        return b - a

    d32 = delta(fp32)
    d16 = delta(bf16)
    flips = float(np.mean(np.sign(d16) != np.sign(d32)))
    mem = "" if fast_gb is None else f"; peak {fast_gb:.2f} GiB vs naive {naive_gb:.2f} GiB"
    return {
        "ok": diff <= TOL["score_abs"],
        "figure": f"{n}×{length} tokens, vocab {model.config.vocab_size}: max |Δ| vs naive {diff:.2e}{mem}; "
        f"{tokens / fast_s:,.0f} tok/s vs naive {tokens / naive_s:,.0f}; bf16 scoring flips {100 * flips:.2f}% of "
        "anchor signs",
        "tolerance": f"max |Δ| ≤ {TOL['score_abs']}",
        "values": {
            "max_abs_diff": diff,
            "peak_gib": fast_gb,
            "naive_peak_gib": naive_gb,
            "tokens_per_s": tokens / fast_s,
            "naive_tokens_per_s": tokens / naive_s,
            "bf16_anchor_flips": flips,
        },
    }


def throughput(c: Check) -> dict[str, Any]:
    import torch

    dev = c.device
    cuda = dev.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    size, reps = (256, 3) if c.smoke else (8192, 20)
    a = torch.randn(size, size, device=dev, dtype=dtype)
    b = torch.randn(size, size, device=dev, dtype=dtype)
    for _ in range(2):
        a @ b
    _, _, s = _peak(dev, lambda: [a @ b for _ in range(reps)])
    peak = 2 * size**3 * reps / s
    model = _qwen3(c, torch.float32).train()  # fp32 masters, bf16 autocast: the default plan
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch, length = (2, 64) if c.smoke else (4, 2048)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=dev)

    def step() -> None:
        with torch.autocast(dev.split(":")[0], dtype=dtype, enabled=cuda):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    steps = 2 if c.smoke else 10
    _, mem, s = _peak(dev, lambda: [step() for _ in range(steps)])
    tok_s = batch * length * steps / s
    mfu = 6 * n_params * tok_s / peak
    opt.state.clear()  # the moments are not needed for generation: free their memory
    model.eval()
    prompts, new = (4, 8) if c.smoke else (32, 128)
    p = torch.randint(0, model.config.vocab_size, (prompts, 64), device=dev)
    kw = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    with torch.autocast(dev.split(":")[0], dtype=dtype, enabled=cuda):
        _, _, batched = _peak(dev, lambda: model.generate(p, **kw))
        _, _, single = _peak(dev, lambda: [model.generate(p[i : i + 1], **kw) for i in range(prompts)])
    return {
        "ok": True,  # figures, not a pass/fail test
        "figure": f"matmul peak {peak / 1e12:.1f} TFLOP/s ({str(dtype).removeprefix('torch.')}); training "
        f"{tok_s:,.0f} tok/s, MFU {100 * mfu:.1f}% ({n_params / 1e6:.0f}M parameters); generation batched "
        f"{prompts * new / batched:,.0f} tok/s vs one at a time {prompts * new / single:,.0f}",
        "tolerance": "figures (BENCHMARKS.md)",
        "values": {
            "matmul_tflops": peak / 1e12,
            "train_tokens_per_s": tok_s,
            "mfu": mfu,
            "train_peak_gib": mem,
            "gen_batched_tokens_per_s": prompts * new / batched,
            "gen_single_tokens_per_s": prompts * new / single,
            "params": n_params,
        },
    }


def tiny_run(c: Check) -> dict[str, Any]:
    w = c.tiny()
    kv = [f"student={w / 'model'}", f"train_data={w / 'train.jsonl'}"]
    if c.smoke:
        kv += ["modes=[sft,t3s]", "train.max_steps=2", "probe.eval_every=1", "eval.max_new_tokens=8", "rrt=false"]
    argv = ["run", str(REPO / "examples" / "tiny-run.yaml"), "--quiet", *kv]
    dev, cpu = c.out / "tiny-run" / "device", c.out / "tiny-run" / "cpu"
    c.t3s([*argv[:2], "--out", str(dev), *argv[2:]])
    c.t3s([*argv[:2], "--out", str(cpu), *argv[2:]], cpu=True)
    a, b = (json.loads((d / "summary.json").read_text())["rows"] for d in (dev, cpu))
    # the evaluation set's size: the base model's samples, one line per prompt
    n = len((cpu / "eval-base" / "samples.jsonl").read_text().splitlines())
    worst, parts = 0.0, []
    for x, y in zip(a, b):
        se = math.sqrt(max(y["accuracy"] * (1 - y["accuracy"]), 1 / n) / n)
        z = abs(x["accuracy"] - y["accuracy"]) / se
        worst = max(worst, z)
        parts.append(f"{x['method']} {100 * x['accuracy']:.0f}/{100 * y['accuracy']:.0f}%")
    ok = [x["method"] for x in a] == [y["method"] for y in b] and worst <= TOL["accuracy_se"]
    return {
        "ok": ok,
        "figure": "accuracy device/CPU: " + ", ".join(parts) + f"; largest gap {worst:.1f} standard errors",
        "tolerance": f"≤ {TOL['accuracy_se']} standard errors",
        "values": {"device": a, "cpu": b, "largest_gap_se": worst, "eval_prompts": n},
    }


def trl_script(c: Check) -> dict[str, Any]:
    w = c.tiny()
    out = c.out / "trl-script"
    steps = "2" if c.smoke else "12"
    cmd = [sys.executable, str(REPO / "examples" / "trl_script.py"), "--model", str(w / "model")]
    cmd += ["--data", str(w / "train.jsonl"), "--out", str(out), "--steps", steps]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if c.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"examples/trl_script.py exited {r.returncode}: {r.stderr[-2000:]}")
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("probe.json"))
    probe = json.loads((out / found[0]).read_text()) if found else {}
    return {
        "ok": bool(found),
        "figure": f"ProbeCallback: {found[0] if found else 'no probe.json'}, bottleneck step "
        f"{probe.get('bottleneck_step')}",
        "tolerance": "runs to the end",
        "values": {"probe": probe.get("bottleneck_step"), "files": found},
    }


ROWS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "train-precision": train_precision,
    "diffusion": diffusion,
    "scoring": scoring,
    "throughput": throughput,
    "tiny-run": tiny_run,
    "trl-script": trl_script,
}
NOT_HERE = {
    "multi-gpu": "NCCL, DeepSpeed ZeRO-2/3 (fp32 master saves), FSDP2: one chip; tests/test_distributed.py (gloo)",
    "vllm": "vLLM is not installed on the lent machine and cannot be without a network",
}


# ----------------------------------------------------------------------------------------------- report


def machine(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
        if dirty.stdout.strip():
            info["commit"] += " with uncommitted changes"
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"GPU acceptance check, {m.get('gpu', m['device'])}, torch {m['torch']}, transformers {m['transformers']}, "
        f"{m['date']}, commit {m.get('commit', '?')}" + (" (smoke sizes)" if results["smoke"] else ""),
        "",
        "| check | result | figure | tolerance | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["rows"].items():
        res = "pass" if r["ok"] else "FAIL"
        cells = [name, res, r["figure"], r.get("tolerance", ""), f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")  # |Δ| stays in its cell
    for name, why in NOT_HERE.items():
        lines.append(f"| {name} | not checked | {why} | – | – |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for gpu_check.json, gpu_check.md and the runs")
    ap.add_argument("--device", default=None, help="cuda (default when one is present) or cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the CPU test in make test)")
    ap.add_argument("--only", default="", help="comma-separated rows (default: all): " + ", ".join(ROWS))
    args = ap.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("gpu_check: no GPU here; pass --device cpu to run the rows on CPU", file=sys.stderr)
        return 2
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: --device cuda, but torch sees no GPU", file=sys.stderr)
        return 2
    only = [x for x in args.only.split(",") if x] or list(ROWS)
    unknown = [x for x in only if x not in ROWS]
    if unknown:
        print(f"gpu_check: unknown row(s) {unknown}; rows: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(device, out, args.smoke)
    results: dict[str, Any] = {"machine": machine(device), "smoke": args.smoke, "tolerances": TOL, "rows": {}}
    for name in only:
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            r = ROWS[name](check)
        except Exception as e:  # noqa: BLE001 -- a failing row is a result; the others still run
            r = {"ok": False, "figure": f"error: {type(e).__name__}: {str(e)[:300]}", "error": traceback.format_exc()}
        r["seconds"] = time.perf_counter() - t0
        results["rows"][name] = r
        _write(out / "gpu_check.json", json.dumps(results, indent=2, default=str))  # each row as it ends
    md = table(results)
    _write(out / "gpu_check.md", md)
    print(md)
    return 0 if all(r["ok"] for r in results["rows"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
