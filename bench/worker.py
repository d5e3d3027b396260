"""One measurement per call, run in a fresh process by bench/run.py (`python -m bench.worker NAME ARGS.json
RESULT.json`) so that paths never share memory or warm caches. Every function takes a dict of arguments and
returns a dict of measured values; nothing here decides whether a target is met.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------------------------- helpers


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> str:
    """Start a new peak-RSS window. Linux: writing 5 to /proc/self/clear_refs resets VmHWM, so the peak excludes
    loading. Elsewhere the peak is the process's lifetime ru_maxrss (loading included)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM after load"
    except OSError:
        return "ru_maxrss (process lifetime)"


def peak_rss_mib() -> float:
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def linear_params(model: Any) -> int:
    """Weights that take part in a matmul per token: every Linear (the LM head included, once, even when tied)."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def attention_flops(model: Any, length: int) -> float:
    """Causal attention FLOPs of one row: QK^T and AV, 4 x layers x query width x the t keys token t attends to."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 4 * cfg.num_hidden_layers * heads * head_dim * length * (length + 1) / 2


def forward_flops(model: Any, length: int) -> float:
    """FLOPs of one causal forward pass over a row of `length` tokens: 2 x matmul weights per token plus
    attention."""
    return 2 * linear_params(model) * length + attention_flops(model, length)


# ----------------------------------------------------------------------------------------------- matmul peak


def peak(a: dict) -> dict:
    """bf16 and fp32 matmul GFLOP/s (square n x n, median of reps): the denominators of '% of peak'."""
    import torch

    _threads(a["threads"])
    return {"gflops": matmul_peak(a["n"], a["reps"]), "n": a["n"], "threads": torch.get_num_threads()}


def matmul_peak(n: int, reps: int, dtypes: tuple[str, ...] = ("bfloat16", "float32")) -> dict[str, float]:
    import torch

    out = {}
    for name in dtypes:
        dt = getattr(torch, name)
        x, y = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        for _ in range(2):
            x @ y
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            x @ y
            ts.append(time.perf_counter() - t)
        out[name] = 2 * n**3 / statistics.median(ts) / 1e9
    return out


# ----------------------------------------------------------------------------------------------- scoring


def score(a: dict) -> dict:
    """One scoring path on B rows of L tokens: 'naive' (the model's forward with full logits, fp32 log-softmax,
    gather), 'chunked' (the backbone, then a plain chunked LM head + logsumexp: the targets' reference point) or
    't3s' (t3s.score.response_logprobs with `t3s score`'s default settings). Random token ids: the
    cost does not depend on the text."""
    import numpy as np
    import torch

    from t3s.config import ScoreConfig
    from t3s.data import Example
    from t3s.models import load_causal_lm, resolve_precision
    from t3s.score import default_batch_tokens, default_chunk_tokens, response_logprobs

    _threads(a["threads"])
    precision = resolve_precision(a["dtype"])
    model = load_causal_lm(a["model"], precision)
    model.eval()
    B, L, P = a["batch"], a["length"], a["prompt_len"]
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(min(100, vocab // 2), vocab, (B, L), generator=torch.Generator().manual_seed(0))
    examples = [Example(f"row-{i}", ids[i].tolist(), P) for i in range(B)]
    scfg = ScoreConfig()

    @torch.no_grad()
    def naive(x: torch.Tensor) -> np.ndarray:
        with precision.context():
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits
        logp = torch.log_softmax(logits.float(), -1)
        return logp[:, P - 1 : -1].gather(-1, x[:, P:, None])[..., 0].numpy()

    @torch.no_grad()
    def chunked(x: torch.Tensor) -> np.ndarray:
        # the targets' reference point: the backbone on the whole batch, then a plain chunked LM head + logsumexp
        head = model.get_output_embeddings()
        with precision.context():
            h = model.base_model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).last_hidden_state
            h, tgt = h[:, P - 1 : -1].reshape(-1, h.shape[-1]), x[:, P:].reshape(-1)
            lp = torch.empty(len(tgt))
            for s in range(0, len(tgt), 1024):
                logits = head(h[s : s + 1024]).float()
                lp[s : s + 1024] = logits.gather(1, tgt[s : s + 1024, None])[:, 0] - torch.logsumexp(logits, -1)
        return lp.view(x.shape[0], -1).numpy()

    def t3s(exs: list) -> np.ndarray:
        lps = response_logprobs(
            model,
            exs,
            precision,
            batch_tokens=scfg.batch_tokens,
            max_batch=scfg.max_batch,
            chunk_tokens=scfg.chunk_tokens,
            progress=False,
            pad_id=0,
        )
        return np.stack(lps)

    def run(full: bool) -> np.ndarray:
        if a["path"] in ("naive", "chunked"):
            return (naive if a["path"] == "naive" else chunked)(ids if full else ids[:1, : min(L, 256)])
        return t3s(examples if full else [Example("warm", ids[0, : min(L, 256)].tolist(), P)])

    run(False)  # warm-up (kernel selection, first touch of the weights) on a short row
    rss_before = _status_mib("VmRSS")
    method = reset_peak_rss()
    # this machine's matmul peak, measured by this process before, between and after its timed repetitions:
    # '% of peak' then compares measurements taken side by side (a shared host's speed drifts within minutes)
    used = (str(precision.autocast or precision.weights).removeprefix("torch."),)  # the dtype the matmuls run in
    peaks, times = [], []
    for _ in range(a["reps"]):
        peaks.append(matmul_peak(a.get("peak_n", 2048), 3, used))
        t = time.perf_counter()
        result = run(True)
        times.append(time.perf_counter() - t)
    peaks.append(matmul_peak(a.get("peak_n", 2048), 3, used))
    peak_gflops = {k: statistics.median(p[k] for p in peaks) for k in peaks[0]}
    peak_mib = peak_rss_mib()
    np.save(a["scores_out"], result.astype(np.float32))
    out = {
        "path": a["path"],
        "model": a["model_name"],
        "batch": B,
        "length": L,
        "prompt_len": P,
        "precision": precision.name,
        "times": times,
        "seconds": statistics.median(times),
        "tokens_per_s": B * L / statistics.median(times),
        "peak_rss_mib": peak_mib,
        "rss_before_mib": rss_before,
        "rss_method": method,
        "peak_gflops": peak_gflops,
        "peak_samples": peaks,
        "flops": B * forward_flops(model, L),
        "attention_flops": B * attention_flops(model, L),
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": vocab,
        # the settings `t3s score` resolves on this device (0 = auto in ScoreConfig)
        "chunk_tokens": scfg.chunk_tokens or default_chunk_tokens(vocab, precision.device),
        "batch_tokens": scfg.batch_tokens or default_batch_tokens(precision.device),
    }
    out["gflops"] = out["flops"] / out["seconds"] / 1e9
    if a.get("profile") and a["path"] == "t3s":
        out["profile"] = _profile(lambda: run(True))
    if a.get("profile") and a["path"] == "naive":
        # the model's backbone alone on the same batch: a floor under any scorer that runs the model's own layers
        ts = []
        for _ in range(a["reps"]):
            with torch.no_grad(), precision.context():
                t = time.perf_counter()
                model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
                ts.append(time.perf_counter() - t)
        out["backbone_times"], out["backbone_s"] = ts, statistics.median(ts)
    return out


def _profile(fn) -> dict:
    """Share of one call's time by kind of operator (torch.profiler, self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
    kinds = {"attention": 0.0, "matmul": 0.0, "log_softmax": 0.0, "other": 0.0}
    for e in prof.key_averages():
        name, us = e.key, e.self_cpu_time_total
        if "scaled_dot_product" in name or "attention" in name:
            kinds["attention"] += us
        elif name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_weight_int8pack_mm"):
            kinds["matmul"] += us
        elif "softmax" in name:
            kinds["log_softmax"] += us
        else:
            kinds["other"] += us
    total = sum(kinds.values()) or 1.0
    return {
        "wall_s": wall,
        "share": {k: v / total for k, v in kinds.items()},
        "seconds": {k: v / 1e6 for k, v in kinds.items()},
    }


# ----------------------------------------------------------------------------------------------- training


def interleaved(trainers: dict, order: tuple[str, str]) -> dict[str, list[float]]:
    """Train two Trainers (built beforehand, in this thread) in two threads that take turns step by step;
    returns each run's step times."""
    import threading

    from transformers import TrainerCallback

    baton = {k: threading.Semaphore(1 if k == order[0] else 0) for k in order}
    done = {k: False for k in order}
    times: dict[str, list[float]] = {k: [] for k in order}
    sequence: list[str] = []  # which run ended each step, in order (the test checks they alternate)
    errors: list[BaseException] = []

    class Baton(TrainerCallback):
        def __init__(self, me: str, other: str):
            self.me, self.other, self.t = me, other, 0.0

        def on_train_begin(self, args, state, control, **kw):
            baton[self.me].acquire()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times[self.me].append(time.perf_counter() - self.t)
            sequence.append(self.me)
            if not done[self.other]:  # hand over, and wait for the other run's step
                baton[self.other].release()
                baton[self.me].acquire()
            self.t = time.perf_counter()

    def go(me: str, other: str) -> None:
        try:
            trainers[me].train()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)
        finally:  # never leave the other run waiting for a baton this one will not pass again
            done[me] = True
            baton[other].release()

    for me, other in (order, order[::-1]):
        trainers[me].add_callback(Baton(me, other))
    threads = [threading.Thread(target=go, args=(me, other)) for me, other in (order, order[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {**times, "sequence": sequence}


def _bench_rows(n: int, seed: int = 0) -> list[dict]:
    """Teacher-style arithmetic traces (the CPU testbed's style T): realistic lengths, gold answers."""
    import random

    from t3s.testbed import TASK_PROMPT, pair, teacher_trace

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        x, y = pair(rng)
        rows.append(
            {
                "id": f"bench-{i:04d}",
                "prompt": TASK_PROMPT.format(a=x, b=y),
                "response": teacher_trace(x, y),
                "answer": str(x + y),
            }
        )
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def _training_setup(a: dict):
    """The training benchmarks' threads, scratch directory, rows (.jsonl) and run config (lr 1e-5, the batch and
    steps asked)."""
    from t3s.config import load_config

    _threads(a["threads"])
    work = Path(a["work"])
    work.mkdir(parents=True, exist_ok=True)
    data_path = _write_jsonl(work / "train-bench.jsonl", _bench_rows(a["rows"]))
    overrides = [f"max_steps={a['steps']}", f"per_device_train_batch_size={a['batch']}", f"dtype={a['dtype']}"]
    return work, data_path, load_config(None, [*overrides, "learning_rate=1e-5", "logging_steps=1"])


def train(a: dict) -> dict:
    """Step time of the t3s trainer with a T3S selection vs with none (SFT): same model, data, batch and steps.
    The selection is real: Δc between θ_0 and the model after the first SFT run (the probe's θ_b stand-in)."""
    import dataclasses

    import datasets
    import torch

    from t3s.models import load_causal_lm
    from t3s.objectives.ar import apply_selection
    from t3s.objectives.base import plan_for
    from t3s.score import ScoreSet, response_logprobs
    from t3s.select import select
    from t3s.train import make_trainer, prepare

    work, data_path, cfg = _training_setup(a)
    tcfg = cfg.train
    precision = plan_for(tcfg).inference()
    sft = prepare(a["model"], str(data_path), tcfg, cfg.render)

    def trainer_for(data, name: str = "trainer"):
        model = load_causal_lm(a["model"], precision)
        return make_trainer(model, data, tcfg, work / name, progress=False)

    def scores(model) -> ScoreSet:
        lps = response_logprobs(model, sft.examples, precision, progress=False, pad_id=sft.tokenizer.pad_token_id)
        return ScoreSet(
            meta={"fingerprints": sft.fingerprints, "precision": precision.name},
            ids=[e.id for e in sft.examples],
            prompt_lens=[e.prompt_len for e in sft.examples],
            response_ids=[torch.tensor(e.response_ids).numpy() for e in sft.examples],
            logprobs=lps,
        )

    first = trainer_for(sft)  # the SFT run whose end point gives the selection
    first.train()
    moved = first.model
    init = scores(load_causal_lm(a["model"], precision))
    sel = select(init, scores(moved), "t3s")
    del moved, first
    labels = apply_selection(sft.examples, sel)
    t3s = dataclasses.replace(
        sft,
        selection=sel,
        dataset=datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in sft.examples], "labels": labels}),
    )
    # The two runs train side by side, one optimizer step each in turn (two threads passing a baton; only one
    # computes at a time), so the machine's speed drifting over seconds falls on both alike. Each repetition is
    # one such pair of runs; a step's time runs from getting the baton to the end of the step.
    runs: dict[str, list[float]] = {"sft": [], "t3s": []}
    sequences: list[list[str]] = []
    per_step: dict[str, list[float]] = {"sft": [], "t3s": []}
    for r in range(a["reps"]):
        order = ("sft", "t3s") if r % 2 == 0 else ("t3s", "sft")
        steps = interleaved({m: trainer_for(d, f"trainer-{m}") for m, d in (("sft", sft), ("t3s", t3s))}, order)
        sequences.append(steps["sequence"])
        for mode in ("sft", "t3s"):
            kept = steps[mode][a["warmup"] :]
            per_step[mode] += kept
            runs[mode].append(statistics.median(kept))
    tokens = sum(len(e.input_ids) for e in sft.examples) / len(sft.examples)
    return {
        "model": a["model_name"],
        "batch": a["batch"],
        "steps": a["steps"],
        "warmup": a["warmup"],
        "mean_row_tokens": tokens,
        "precision": precision.name,
        "dropped_fraction": sel.meta["stats"]["dropped_fraction"],
        "run_medians": runs,
        "step_sequences": sequences,
        "step_median": {k: statistics.median(v) for k, v in per_step.items()},
        "ratio": statistics.median(runs["t3s"]) / statistics.median(runs["sft"]),
    }


# ----------------------------------------------------------------------------------------------- generation


PROMPTS = [
    "What is {a} + {b}?",
    "Add {a} and {b}.",
    "Compute {a} plus {b}, showing your work.",
    "Please work out the sum of {a} and {b} and give the final answer.",
]


def generate(a: dict) -> dict:
    """t3s eval's batched generation (t3s.generation.generate) vs one `model.generate` call per prompt; greedy,
    same prompts (of different lengths, so batches are left-padded), the outputs must be identical."""
    import random

    import torch
    from transformers import GenerationConfig

    from t3s.config import GenConfig, RenderConfig
    from t3s.data import Row, render_prompt, uses_template
    from t3s.generation import eos_ids
    from t3s.generation import generate as batched_generate
    from t3s.models import load_causal_lm, load_tokenizer, resolve_precision

    _threads(a["threads"])
    precision = resolve_precision(a["dtype"])
    tok = load_tokenizer(a["model"])
    model = load_causal_lm(a["model"], precision)
    model.eval()
    rng = random.Random(0)
    rcfg = RenderConfig()
    template = uses_template(tok, rcfg)
    prompts = []
    for i in range(a["prompts"]):
        text = PROMPTS[i % len(PROMPTS)].format(a=rng.randint(10, 9999), b=rng.randint(10, 9999))
        row = Row(id=str(i), prompt=text, response=None, answer=None, where=f"prompt {i}")
        prompts.append(render_prompt(row, tok, rcfg, template)[0])
    gcfg = GenConfig(max_new_tokens=a["max_new_tokens"], batch_size=a["batch"], dtype=a["dtype"])
    stops = eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    one = GenerationConfig(max_new_tokens=a["max_new_tokens"], do_sample=False, eos_token_id=stops, pad_token_id=pad)

    def batched() -> list[list[int]]:
        return [g[0].token_ids for g in batched_generate(model, tok, prompts, gcfg, precision, progress=False)]

    @torch.no_grad()
    def loop() -> list[list[int]]:
        out = []
        for p in prompts:
            x = torch.tensor([p])
            with precision.context():
                seq = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=one)
            new = seq[0, len(p) :].tolist()
            end = next((j for j, t in enumerate(new) if t in stops), None)
            out.append(new if end is None else new[:end])
        return out

    batched()  # warm-up
    times: dict[str, list[float]] = {"batched": [], "loop": []}
    outs: dict[str, list] = {}
    for r in range(a["reps"]):
        for name, fn in (
            (("batched", batched), ("loop", loop)) if r % 2 == 0 else (("loop", loop), ("batched", batched))
        ):
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
    same = sum(x == y for x, y in zip(outs["batched"], outs["loop"]))
    new_tokens = sum(len(x) for x in outs["loop"])
    tps = {k: new_tokens / statistics.median(v) for k, v in times.items()}
    return {
        "model": a["model_name"],
        "prompts": len(prompts),
        "batch": a["batch"],
        "max_new_tokens": a["max_new_tokens"],
        "precision": precision.name,
        "prompt_lengths": sorted({len(p) for p in prompts}),
        "new_tokens": new_tokens,
        "times": times,
        "tokens_per_s": tps,
        "ratio": tps["batched"] / tps["loop"],
        "identical_outputs": same,
        "first_difference": next((i for i, (x, y) in enumerate(zip(outs["batched"], outs["loop"])) if x != y), None),
    }


# ----------------------------------------------------------------------------------------------- pipeline


def pipeline(a: dict) -> dict:
    """Wall time of one pipeline case: `t3s run` (offline or online probe) or the plain SFT baseline (`t3s
    train`-equivalent run with the same evaluation schedule as the probe, then the held-out evaluation)."""
    import shutil

    import yaml

    _threads(a["threads"])
    shutil.rmtree(a["out"], ignore_errors=True)  # a fresh run: `t3s run` would resume from finished stages
    cfg_path = Path(a["out"]).with_suffix(".yaml")
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(a["config"], sort_keys=False))
    t = time.perf_counter()
    if a["kind"] == "sft":
        _sft_baseline(cfg_path, Path(a["out"]))
        wall = time.perf_counter() - t
        return {"kind": "sft", "wall_s": wall, "stages": json.loads((Path(a["out"]) / "timing.json").read_text())}
    from t3s.cli import main as cli

    code = cli(["run", str(cfg_path), "--out", a["out"], "--quiet"])
    wall = time.perf_counter() - t
    if code != 0:
        raise RuntimeError(f"t3s run exited with {code}; see {a['out']}/run.log")
    stages = []
    for f in sorted((Path(a["out"]) / "stages").glob("*.json")):
        rec = json.loads(f.read_text())
        stages.append(
            {
                "key": rec["key"],
                "kind": rec["kind"],
                "seconds": rec["seconds"],
                "probe_seconds": (rec.get("result") or {}).get("seconds") if rec["kind"] == "probe" else None,
                "steps_run": (rec.get("result") or {}).get("steps_run") if rec["kind"] == "probe" else None,
            }
        )
    return {"kind": a["kind"], "wall_s": wall, "stages": stages}


def _sft_baseline(cfg_path: Path, out: Path) -> None:
    """Plain SFT with the probe's evaluation schedule (greedy generation on the same training prompts at step 0
    and every eval_every steps), then the held-out evaluation of the result: what a user pays without T3S."""
    import dataclasses

    from transformers import TrainerCallback

    from t3s.config import load_config
    from t3s.data import load_rows
    from t3s.evaluate import evaluate_model, write_eval
    from t3s.models import load_causal_lm, load_tokenizer, resolve_precision
    from t3s.probe import subset_indices
    from t3s.train import prepare, train

    cfg = load_config(cfg_path, [], flat=())
    tcfg = dataclasses.replace(cfg.train, seed=cfg.seeds[0])
    data = prepare(cfg.student, cfg.train_data, tcfg, cfg.render)
    rows_by_id = {r.id: r for r in data.rows}
    subset = [
        rows_by_id[data.examples[i].id]
        for i in subset_indices(len(data.examples), cfg.probe.subset, cfg.probe.subset_seed)
    ]
    gen = dataclasses.replace(cfg.eval, k=1, temperature=0.0)
    every = cfg.probe.eval_every or max(1, round(tcfg.max_steps / 15))
    precision = resolve_precision(tcfg.dtype)
    timing = {"generation": 0.0}

    class EvalEvery(TrainerCallback):
        def _eval(self, model):
            t = time.perf_counter()
            evaluate_model(model, data.tokenizer, subset, cfg.render, gen, precision, progress=False)
            timing["generation"] += time.perf_counter() - t

        def on_train_begin(self, args, state, control, model=None, **kw):
            self._eval(model)

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every == 0 or state.global_step >= state.max_steps:
                self._eval(model)

    t = time.perf_counter()
    train(
        cfg.student,
        cfg.train_data,
        out / "train",
        tcfg,
        cfg.render,
        overwrite=True,
        progress=False,
        callbacks=[EvalEvery()],
        data=data,
    )
    timing["run"] = time.perf_counter() - t
    timing["training"] = timing["run"] - timing["generation"]
    t = time.perf_counter()
    eprec = resolve_precision(cfg.eval.dtype)
    path = str(out / "train" / "model")
    rows = load_rows(cfg.eval_data or cfg.train_data, need_response=False, need_answer=True)
    samples = evaluate_model(
        load_causal_lm(path, eprec), load_tokenizer(path), rows, cfg.render, cfg.eval, eprec, progress=False
    )
    write_eval(out / "eval", samples, {"model": path}, overwrite=True)
    timing["final_eval"] = time.perf_counter() - t
    (out / "timing.json").write_text(json.dumps(timing))


# ----------------------------------------------------------------------------------------------- anchor flips


def flips(a: dict) -> dict:
    """How often the scoring precision decides the sign of Δc = c(θ_b) − c(θ_0), i.e. a token's anchor status.
    θ_b: `steps` fp32 AdamW steps of plain SFT at lr `lr` on teacher-style traces (what a probe's first
    evaluation points look like at the paper's lr). Reference: float64 forwards and log-softmax. Each precision
    scores θ_0 and θ_b with t3s's scorer; a flip is a token whose Δc has the other sign than the reference's."""
    import copy

    import numpy as np
    import torch

    from t3s.config import load_config
    from t3s.models import Precision, load_causal_lm
    from t3s.score import response_logprobs
    from t3s.train import make_trainer, prepare

    _threads(a["threads"])
    work = Path(a["work"])
    work.mkdir(parents=True, exist_ok=True)
    data_path = _write_jsonl(work / "flips.jsonl", _bench_rows(a["rows"], seed=1))
    cfg = load_config(
        None,
        [
            f"max_steps={a['steps']}",
            f"per_device_train_batch_size={a['batch']}",
            "dtype=float32",
            f"learning_rate={a['lr']}",
            "lr_scheduler_type=constant",
            "logging_steps=1",
        ],
    )
    data = prepare(a["model"], str(data_path), cfg.train, cfg.render)
    fp32 = Precision(torch.float32, None, "cpu")
    trainer = make_trainer(load_causal_lm(a["model"], fp32), data, cfg.train, work / "trainer", progress=False)
    trainer.train()
    theta_b = trainer.model
    theta_0 = load_causal_lm(a["model"], fp32)
    pad = data.tokenizer.pad_token_id

    @torch.no_grad()
    def reference(model) -> np.ndarray:  # float64, one row at a time, the model's own forward
        m = model.to(torch.float64)
        out = []
        for e in data.examples:
            logits = m(input_ids=torch.tensor([e.input_ids])).logits[0].double()
            lp = torch.log_softmax(logits[e.prompt_len - 1 : -1], -1)
            out.append(lp.gather(1, torch.tensor(e.response_ids)[:, None])[:, 0].numpy())
        model.to(torch.float32)
        return np.concatenate(out)

    precisions = {
        "float32": fp32,
        "bfloat16 autocast (fp32 weights)": Precision(torch.float32, torch.bfloat16, "cpu"),
        "bfloat16 weights": Precision(torch.bfloat16, None, "cpu"),
    }
    ref = reference(theta_b) - reference(theta_0)
    out = {
        "model": a["model_name"],
        "tokens": int(ref.size),
        "rows": len(data.examples),
        "steps": a["steps"],
        "lr": a["lr"],
        "reference_anchor_share": float((ref > 0).mean()),
        "reference_abs_delta_median": float(np.median(np.abs(ref))),
        "precisions": {},
    }
    for name, p in precisions.items():
        secs = []
        lps = {}
        for which, model in (("init", theta_0), ("bottleneck", theta_b)):
            m = model if p.weights == torch.float32 else copy.deepcopy(model).to(p.weights)  # keep the fp32 one
            t = time.perf_counter()
            lps[which] = np.concatenate(response_logprobs(m, data.examples, p, progress=False, pad_id=pad))
            secs.append(time.perf_counter() - t)
        d = lps["bottleneck"] - lps["init"]
        flipped = (d > 0) != (ref > 0)
        out["precisions"][name] = {
            "flip_rate": float(flipped.mean()),
            "anchor_share": float((d > 0).mean()),
            "max_abs_error": float(np.abs(d - ref).max()),
            "seconds": sum(secs),
            # the flipped tokens are those whose true |Δc| is below this precision's noise
            "flipped_abs_delta_max": float(np.abs(ref[flipped]).max()) if flipped.any() else 0.0,
        }
    return out


# ----------------------------------------------------------------------------------------------- entry point


def losses(a: dict) -> dict:
    """Step time of each per-token loss mode (dft, eaft, memft, asft; `NAME+lora` under LoRA r=8, against SFT
    under the same LoRA) against SFT: same model, rows, batch and steps, the two runs side by side as in `train`."""
    import dataclasses

    from t3s.models import load_causal_lm
    from t3s.objectives.base import plan_for
    from t3s.train import config_for_mode, make_trainer, prepare

    work, data_path, cfg = _training_setup(a)
    precision = plan_for(cfg.train).inference()
    data = prepare(a["model"], str(data_path), cfg.train, cfg.render)

    def trainer_for(tcfg, name: str):
        model = load_causal_lm(a["model"], precision)
        reference = load_causal_lm(a["model"], precision) if tcfg.needs_reference else None
        return make_trainer(model, data, tcfg, work / name, progress=False, reference=reference)

    out = []
    for name in a["losses"]:
        mode, lora = name.removesuffix("+lora"), name.endswith("+lora")
        base = dataclasses.replace(cfg.train, lora_r=8 if lora else 0)
        other = config_for_mode(base, mode)
        runs: dict[str, list[float]] = {"sft": [], name: []}
        for r in range(a["reps"]):
            order = ("sft", name) if r % 2 == 0 else (name, "sft")
            steps = interleaved({"sft": trainer_for(base, "sft"), name: trainer_for(other, name)}, order)
            for m in runs:
                runs[m].append(statistics.median(steps[m][a["warmup"] :]))
        out.append(
            {
                "loss": name,
                "run_medians": runs,
                "sft_step": statistics.median(runs["sft"]),
                "step": statistics.median(runs[name]),
                "ratio": statistics.median(runs[name]) / statistics.median(runs["sft"]),
            }
        )
    tokens = sum(len(e.input_ids) for e in data.examples) / len(data.examples)
    return {
        "model": a["model_name"],
        "batch": a["batch"],
        "steps": a["steps"],
        "mean_row_tokens": tokens,
        "precision": precision.name,
        "losses": out,
    }


def sampler(a: dict) -> dict:
    """The diffusion sampler's options side by side on one mask predictor and the same prompts: seconds, answer
    tokens/s and held answers graded against the gold (t3s eval's grader). Each repetition runs every option once,
    in a rotated order; the figures are medians. `options`: name -> diffusion settings; the first is the baseline."""
    import dataclasses

    from t3s.config import DiffusionConfig, GenConfig, RenderConfig
    from t3s.data import Row, render_prompt, uses_template
    from t3s.evaluate import Response, grade
    from t3s.models import load_tokenizer, resolve_precision
    from t3s.objectives.diffusion import load_mask_predictor, sample

    _threads(a["threads"])
    precision = resolve_precision("float32")
    tok = load_tokenizer(a["model"])
    model = load_mask_predictor(a["model"], precision, trust_remote_code=True).eval()
    rows = [json.loads(line) for line in Path(a["data"]).read_text().splitlines()][: a["prompts"]]
    rcfg = RenderConfig()
    template = uses_template(tok, rcfg)
    prompts = [
        render_prompt(
            Row(id=r["id"], prompt=r["prompt"], response=None, answer=r["answer"], where=""), tok, rcfg, template
        )[0]
        for r in rows
    ]
    gcfg = GenConfig(max_new_tokens=a["gen_length"], batch_size=a["batch"], dtype="float32")
    base = DiffusionConfig(block_length=a["block_length"])
    options = {name: dataclasses.replace(base, **kv) for name, kv in a["options"].items()}

    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def run(d):
        return [g[0] for g in sample(model, tok, prompts, gcfg, d, precision, progress=False)]

    run(options[next(iter(options))])  # warm-up
    names = list(options)
    times: dict[str, list[float]] = {n: [] for n in names}
    outs: dict[str, list] = {}
    forwards: dict[str, int] = {}
    for r in range(a["reps"]):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            calls[0] = 0
            t = time.perf_counter()
            outs[n] = run(options[n])
            times[n].append(time.perf_counter() - t)
            forwards[n] = calls[0]
    first = names[0]
    res = {}
    for n in names:
        graded = grade([Response(r["id"], g.text, r["answer"]) for r, g in zip(rows, outs[n])], "last_number")
        correct = [s.correct for s in graded]
        tokens = sum(len(g.token_ids) for g in outs[n])
        sec = statistics.median(times[n])
        res[n] = {
            "settings": a["options"][n],
            "seconds": sec,
            "runs": times[n],
            "tokens": tokens,
            "tokens_per_s": tokens / sec,
            "accuracy": sum(correct) / len(correct),
            "correct": correct,
            "same_as_first": sum(g.token_ids == h.token_ids for g, h in zip(outs[n], outs[first])) / len(rows),
            "forwards": forwards[n],  # denoising forwards over all batches (the same in every run)
        }
    return {
        "model": a["model_name"],
        "prompts": len(rows),
        "batch": a["batch"],
        "gen_length": a["gen_length"],
        "block_length": a["block_length"],
        "options": res,
    }


WORKERS = {
    "peak": peak,
    "sampler": sampler,
    "score": score,
    "train": train,
    "losses": losses,
    "generate": generate,
    "pipeline": pipeline,
    "flips": flips,
}


def main(argv: list[str]) -> int:
    name, args_path, result_path = argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    a = json.loads(Path(args_path).read_text())
    result = WORKERS[name](a)
    tmp = Path(result_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
