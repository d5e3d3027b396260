"""Back-of-the-envelope compute, time and memory for the paper-scale recipes (examples/recipes/*.yaml), and for
`t3s run --plan` of a run whose student is one of their models.

These are estimates from parameter and token counts, not measurements (no GPU run of t3s has been made): the
arithmetic is in docs/scaling.md; every assumption is a constant below. Run

    python bench/estimate.py            # the table
    python bench/estimate.py --check    # exit 1 if a recipe's header disagrees with the script

- Parameters from the architecture (dense Qwen3; LLaDA-2.0-mini is a 16B mixture of experts with ~1.4B active
  parameters, Ling-mini-2.0's layout). FLOPs count matrix multiplies only: N_active excludes the embedding
  lookup, includes the LM head.
- Training FLOPs = 6 · N_active · T + attention (6 · layers · d_attn · L per token for causal attention;
  twice that for the bidirectional diffusion student); scoring = a third of that (forward only).
- Time = FLOPs / (GPUs × peak × MFU). Generation (probe evaluations, AIME avg@16) is memory-bound: every decode
  step reads the weights, and every generated token reads its context's KV cache.
- Memory per GPU: bf16 weights and gradients, fp32 master weights and AdamW moments (16 bytes per parameter,
  ZeRO's accounting), split by the ZeRO stage, plus checkpointed activations of one sequence of L_max tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# ----------------------------------------------------------------------------------------------- assumptions

PEAK_BF16 = 989e12  # H100 SXM dense bf16 FLOP/s (H200: the same compute)
HBM_BW = 3.35e12  # H100 SXM bytes/s (H200: 4.8e12)
BW_EFF = 0.7  # fraction of HBM bandwidth a decode step reaches
MFU = {"dense": 0.35, "moe": 0.10}  # long sequences, activation checkpointing; MoE through HF remote code (eager)
GEN_MFU = 0.5  # compute ceiling for batched decode
GPU_MEM = {"H100-80GB": 80, "H200-141GB": 141}
OVERHEAD_GB = 6  # CUDA context, NCCL buffers, allocator fragmentation
GIB = 1024**3
# The diffusion sampler's parallel decoding (diffusion.commit_threshold < 1): denoising forwards per canvas token
# relative to the fixed one-token-per-step schedule, as `make bench` measured it on the LLaDA-2-shaped CPU student
# at threshold 0.9 (block-causal; docs/benchmarks-sampler.md). How many tokens a step commits depends on how
# confident the student is: this small one answers prompts it has learnt, a real student on AIME-class problems may
# commit fewer per forward, so for such runs the estimate may be optimistic.
THRESHOLD_FORWARDS_PER_TOKEN = 0.58
PROMPT_TOKENS = 512  # the diffusion sampler's prompt (an AIME problem, rendered)
DLM_BATCH = 32  # prompts per sampler batch (eval.batch_size's default): each denoising step reads every weight once


@dataclass
class Arch:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # dense MLP (the first `dense_layers` of an MoE)
    vocab: int
    tied: bool = False
    experts: int = 0
    active_experts: int = 0
    shared_experts: int = 0
    moe_intermediate: int = 0
    dense_layers: int = 0
    bidirectional: bool = False

    @property
    def d_attn(self) -> int:
        return self.heads * self.head_dim

    def _attn(self) -> int:
        return self.hidden * (self.d_attn + 2 * self.kv_heads * self.head_dim) + self.d_attn * self.hidden

    def params(self) -> tuple[float, float]:
        """(total parameters, parameters in matrix multiplies per token)."""
        mlp = 3 * self.hidden * self.intermediate
        expert = 3 * self.hidden * self.moe_intermediate
        if self.experts:
            moe_layers = self.layers - self.dense_layers
            total_blocks = self.dense_layers * mlp + moe_layers * (self.experts + self.shared_experts) * expert
            active_blocks = self.dense_layers * mlp + moe_layers * (self.active_experts + self.shared_experts) * expert
            router = moe_layers * self.hidden * self.experts
        else:
            total_blocks = active_blocks = self.layers * mlp
            router = 0
        attn = self.layers * self._attn()
        emb = self.vocab * self.hidden
        head = 0 if self.tied else emb
        total = attn + total_blocks + router + emb + head
        active = attn + active_blocks + router + self.vocab * self.hidden  # the LM head multiplies; lookup does not
        return float(total), float(active)

    def kv_bytes_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * 2  # K and V, bf16


# Published layouts (check against the checkpoint's config.json before relying on the numbers).
QWEN3_8B = Arch(
    "Qwen3-8B", layers=36, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=12288, vocab=151936
)
QWEN3_32B = Arch(
    "Qwen3-32B", layers=64, hidden=5120, heads=64, kv_heads=8, head_dim=128, intermediate=25600, vocab=151936
)
LLADA2_MINI = Arch(
    "LLaDA-2.0-mini",
    layers=20,
    hidden=2048,
    heads=16,
    kv_heads=4,
    head_dim=128,
    intermediate=5120,
    vocab=157184,
    experts=256,
    active_experts=8,
    shared_experts=1,
    moe_intermediate=512,
    dense_layers=1,
    bidirectional=True,
)


LING_MINI = Arch(
    "Ling-mini-2.0 (AR selector)",
    layers=20,
    hidden=2048,
    heads=16,
    kv_heads=4,
    head_dim=128,
    intermediate=5120,
    vocab=157184,
    experts=256,
    active_experts=8,
    shared_experts=1,
    moe_intermediate=512,
    dense_layers=1,
)


@dataclass
class Recipe:
    file: str
    arch: Arch  # the student
    selector: Arch  # the AR model whose probe and scores give the selection (the student itself for AR)
    gpus: int
    zero: int  # ZeRO stage of the accelerate config (FSDP2 full shard = 3)
    accelerate: str
    train_seqs: int  # sequences in one training run of the student (batch x steps, or rows x epochs)
    probe_seqs: int  # sequences in the selector's probe (an SFT run)
    mean_len: int  # mean tokens per training sequence (prompt + trace): an assumption about the data
    max_len: int  # longest sequence: sets activation memory
    probe_points: int  # probe evaluations (step 0 included)
    probe_prompts: int
    gen_mean: int  # mean generated tokens per probe / eval sample: an assumption
    gen_max: int  # generation budget
    score_rows: int
    runs: int  # student training runs besides the probe: T3S (and SFT for a diffusion student)
    tp: int = 1  # vLLM tensor parallel size per engine
    vllm_gb: float = 32  # GPU memory of each colocated vLLM engine share (eval.vllm.gpu_memory_utilization)
    eval_samples: int = 60 * 16  # AIME24 + AIME25, avg@16
    dlm_steps: int = 0  # diffusion student: denoising steps per sample (its canvas is gen_max tokens)
    dlm_block: int = 32  # diffusion.block_length
    dlm_attention: str = "block_causal"  # what diffusion.attention auto gives LLaDA-2
    dlm_cache: bool = False  # diffusion.cache=prefix
    dlm_threshold: float = 1.0  # diffusion.commit_threshold


RECIPES = [
    Recipe(
        "qwen3-8b.yaml",
        QWEN3_8B,
        QWEN3_8B,
        gpus=8,
        zero=3,
        accelerate="examples/accelerate/deepspeed-zero3.yaml",
        train_seqs=64 * 50,
        probe_seqs=64 * 50,
        mean_len=8192,
        max_len=32768,
        probe_points=16,
        probe_prompts=200,
        gen_mean=12000,
        gen_max=32768,
        score_rows=200,
        runs=1,
        tp=1,
        vllm_gb=36,
    ),
    Recipe(
        "qwen3-32b.yaml",
        QWEN3_32B,
        QWEN3_32B,
        gpus=16,
        zero=3,
        accelerate="examples/accelerate/deepspeed-zero3.yaml",
        train_seqs=64 * 50,
        probe_seqs=64 * 50,
        mean_len=8192,
        max_len=32768,
        probe_points=16,
        probe_prompts=200,
        gen_mean=12000,
        gen_max=32768,
        score_rows=200,
        runs=1,
        tp=4,
        vllm_gb=40,
    ),
    Recipe(
        "llada2-mini.yaml",
        LLADA2_MINI,
        LING_MINI,
        gpus=8,
        zero=3,
        accelerate="examples/accelerate/fsdp2.yaml",
        train_seqs=1000 * 20,
        probe_seqs=64 * 50,
        mean_len=8192,
        max_len=16384,
        probe_points=16,
        probe_prompts=200,
        gen_mean=8192,
        gen_max=4096,
        score_rows=1000,
        runs=2,
        tp=1,
        vllm_gb=24,
        dlm_steps=4096,
        dlm_cache=True,  # the recipe's diffusion.cache: prefix (exact under LLaDA-2's block-causal reading)
    ),
]


# ----------------------------------------------------------------------------------------------- arithmetic


def attn_flops_per_token(a: Arch, length: float) -> float:
    """Forward attention score + value FLOPs per token, averaged over a sequence of `length` tokens."""
    ctx = length if a.bidirectional else length / 2  # causal: on average half the sequence is attended
    return 4 * a.layers * a.d_attn * ctx


def train_flops(a: Arch, seqs: int, length: int) -> float:
    _, active = a.params()
    tokens = seqs * length
    return 3 * (2 * active + attn_flops_per_token(a, length)) * tokens


def forward_flops(a: Arch, seqs: int, length: int) -> float:
    return train_flops(a, seqs, length) / 3


def window_flops(a: Arch, seqs: int, queries: float, keys: float) -> float:
    """Forward FLOPs of `queries` tokens per sequence attending to `keys` positions (a cached diffusion step)."""
    _, active = a.params()
    return seqs * queries * (2 * active + 4 * a.layers * a.d_attn * keys)


def sampler_flops(a: Arch, r: Recipe) -> float:
    """FLOPs of one evaluation with the diffusion sampler (no early stop: an upper bound). Per denoising step, the
    forward runs over: the whole prompt + canvas (bidirectional, no cache); the prompt and the canvas up to the
    current block, a half on average (block-causal, no cache: LLaDA-2's own generate()); with the cache, the
    current block only (plus the previous block once per block, block-causal; a full forward once per block,
    bidirectional: Fast-dLLM's refresh), attending to the same positions as without. Parallel decoding divides the
    steps by the measured factor (THRESHOLD_FORWARDS_PER_TOKEN)."""
    total = PROMPT_TOKENS + r.gen_max
    causal = r.dlm_attention == "block_causal"
    keys = PROMPT_TOKENS + r.gen_max / 2 if causal else total
    blocks = r.gen_max / r.dlm_block
    steps = sampler_forwards(r)
    if not r.dlm_cache:
        return steps * window_flops(a, r.eval_samples, keys, keys)
    if causal:  # the first step of a block re-runs the block before it: its keys and values, final
        return blocks * window_flops(a, r.eval_samples, r.dlm_block, keys) + steps * window_flops(
            a, r.eval_samples, r.dlm_block, keys
        )
    # bidirectional: a full forward at each block's first step, then the block and the canvas after it (half the
    # canvas on average)
    return blocks * window_flops(a, r.eval_samples, total, total) + (steps - blocks) * window_flops(
        a, r.eval_samples, r.gen_max / 2, total
    )


def sampler_forwards(r: Recipe) -> float:
    """Denoising forwards of one sampler batch (no early stop): the steps, fewer with parallel decoding, and with
    the block-causal cache one more per block (the previous block, re-run once with its final tokens)."""
    blocks = r.gen_max / r.dlm_block
    steps = max(blocks, r.dlm_steps * (THRESHOLD_FORWARDS_PER_TOKEN if r.dlm_threshold < 1 else 1.0))
    return steps


def sampler_seconds(a: Arch, r: Recipe) -> float:
    """Wall seconds of one evaluation with the diffusion sampler: its FLOPs at the MoE / dense MFU, or, when a step
    runs few tokens (the cache), the weights every forward reads: batches per GPU x forwards x weight bytes at
    the HBM bandwidth; the larger of the two."""
    total, _ = a.params()
    compute = sampler_flops(a, r) / (r.gpus * PEAK_BF16 * MFU["moe" if a.experts else "dense"])
    batches = math.ceil(math.ceil(r.eval_samples / r.gpus) / DLM_BATCH)
    memory = batches * sampler_forwards(r) * 2 * total / (HBM_BW * BW_EFF)
    return max(compute, memory)


def concurrency(a: Arch, vllm_gb: float, tp: int, mean_new: int) -> int:
    """Sequences of `mean_new` tokens whose KV cache fits in an engine beside its weights."""
    kv_space = (vllm_gb * GIB - 2 * a.params()[0] / tp) * tp  # bytes over the engine's GPUs
    return max(1, int(kv_space // ((mean_new + 512) * a.kv_bytes_per_token())))


def gen_seconds(a: Arch, prompts: int, mean_new: int, max_new: int, gpus: int, tp: int, vllm_gb: float) -> float:
    """Wall seconds for `prompts` generations spread over gpus / tp engines, in waves of as many sequences as the
    KV cache holds (vLLM-style continuous batching, idealised)."""
    _, active = a.params()
    per_engine = math.ceil(prompts / (gpus // tp))
    waves = math.ceil(per_engine / concurrency(a, vllm_gb, tp, mean_new))
    batch = per_engine / waves
    weights = 2 * a.params()[0] / tp
    # a wave reads the weights at every step (as many steps as its longest answer) and, per token, its KV context
    mem = (max_new * weights + batch * mean_new * (mean_new / 2) * a.kv_bytes_per_token() / tp) / (HBM_BW * BW_EFF)
    compute = batch * mean_new * (2 * active + attn_flops_per_token(a, mean_new)) / (tp * PEAK_BF16 * GEN_MFU)
    return waves * max(mem, compute)


def memory_gb(a: Arch, r: Recipe, vllm_gb: float) -> dict[str, float]:
    total, _ = a.params()
    d = r.gpus
    states = {0: 16 * total, 1: 4 * total + 12 * total / d, 2: 2 * total + 14 * total / d, 3: 16 * total / d}[r.zero]
    # checkpointed layer inputs for the whole sequence + one layer's activations recomputed (flash attention)
    act = a.layers * r.max_len * a.hidden * 2 + 34 * r.max_len * a.hidden
    return {
        "states": states / GIB,
        "activations": act / GIB,
        "vllm": vllm_gb,
        "total": (states + act) / GIB + vllm_gb + OVERHEAD_GB,
    }


def estimate(r: Recipe) -> dict[str, float]:
    total, active = r.arch.params()
    peak = r.gpus * PEAK_BF16

    def hours(a, flops):
        return flops / (peak * MFU["moe" if a.experts else "dense"]) / 3600

    sel = r.selector
    train_h = hours(r.arch, train_flops(r.arch, r.train_seqs, r.mean_len))
    probe_train_h = hours(sel, train_flops(sel, r.probe_seqs, r.mean_len))
    probe_gen_h = (
        r.probe_points * gen_seconds(sel, r.probe_prompts, r.gen_mean, r.gen_max, r.gpus, r.tp, r.vllm_gb) / 3600
    )
    probe_score_h = r.probe_points * hours(sel, forward_flops(sel, r.probe_prompts, r.mean_len))
    score_h = hours(sel, forward_flops(sel, r.score_rows, r.mean_len))
    if r.dlm_steps:  # the diffusion sampler (sampler_flops: its settings decide what a step runs over)
        eval_h = sampler_seconds(r.arch, r) / 3600
    else:
        eval_h = gen_seconds(r.arch, r.eval_samples, r.gen_mean, r.gen_max, r.gpus, r.tp, r.vllm_gb) / 3600
    probe_h = probe_train_h + probe_gen_h + probe_score_h
    # the probe, 2 score sets, the student's runs, evaluating the base model and every run (the AR probe is SFT)
    wall_h = probe_h + 2 * score_h + r.runs * train_h + (1 + max(r.runs, 2)) * eval_h
    mem = max(memory_gb(r.arch, r, 0), memory_gb(sel, r, r.vllm_gb), key=lambda m: m["total"])
    return {
        "params_b": total / 1e9,
        "active_b": active / 1e9,
        "train_tokens_m": r.train_seqs * r.mean_len / 1e6,
        "train_pflop": train_flops(r.arch, r.train_seqs, r.mean_len) / 1e15,
        "train_h": train_h,
        "probe_h": probe_h,
        "probe_gen_h": probe_gen_h,
        "score_h": score_h,
        "eval_h": eval_h,
        "wall_h": wall_h,
        "gpu_h": wall_h * r.gpus,
        **{f"mem_{k}": v for k, v in mem.items()},
    }


def header(r: Recipe) -> list[str]:
    e = estimate(r)
    fits = [g for g, cap in GPU_MEM.items() if e["mem_total"] <= cap]
    sel = "" if r.selector is r.arch else f" (selector: {r.selector.name})"
    evals = 1 + max(r.runs, 2)
    return [
        f"# estimate: {e['params_b']:.1f}B parameters ({e['active_b']:.2f}B in matmuls per token){sel}; "
        f"{r.gpus} GPUs, {r.accelerate}",
        f"# estimate: one training run = {e['train_tokens_m']:.0f}M tokens, {e['train_pflop']:.0f} PFLOP, "
        f"{e['train_h']:.1f} h",
        f"# estimate: probe {e['probe_h']:.1f} h (of which generation {e['probe_gen_h']:.1f} h: {r.probe_points} "
        f"points x {r.probe_prompts} prompts, vLLM); one score set {e['score_h'] * 60:.1f} min; one AIME avg@16 "
        f"eval {e['eval_h']:.1f} h" + (f" ({sampler_words(r)})" if r.dlm_steps else ""),
        f"# estimate: whole method (probe, 2 score sets, {r.runs} training run(s), {evals} evals) "
        f"{e['wall_h']:.1f} h = {e['gpu_h']:.0f} GPU-hours",
        f"# estimate: memory per GPU {e['mem_total']:.0f} GB (model states {e['mem_states']:.0f}, activations "
        f"{e['mem_activations']:.0f}, colocated vLLM {e['mem_vllm']:.0f}, overhead {OVERHEAD_GB}); fits "
        f"{', '.join(fits) or 'neither H100-80GB nor H200-141GB: add GPUs or offload'}",
    ]


def sampler_words(r: Recipe) -> str:
    """The diffusion sampler settings an estimate assumed, in a few words."""
    words = [f"{r.dlm_attention.replace('_', '-')} sampler, blocks of {r.dlm_block}"]
    words.append("KV cache" if r.dlm_cache else "no cache")
    if r.dlm_threshold < 1:
        words.append(f"threshold {r.dlm_threshold:g}: {1 / THRESHOLD_FORWARDS_PER_TOKEN:.1f} tokens per forward")
    return ", ".join(words)


KNOWN = {"Qwen/Qwen3-8B": QWEN3_8B, "Qwen/Qwen3-32B": QWEN3_32B, "inclusionAI/LLaDA2.0-mini": LLADA2_MINI}


def for_run(
    student: str,
    gpus: int,
    zero: int,
    setup: str,
    train_seqs: int | None = None,
    sampler: dict | None = None,
) -> list[str] | None:
    """The estimate of a run on a known model (`KNOWN`): its recipe's assumptions (trace and answer lengths,
    probe points and prompts, MFU) with this run's GPUs, sharding and sequences per training run, and for a
    diffusion student this run's sampler (`sampler`: diffusion.block_length, attention, cache, commit_threshold).
    None for any other model."""
    arch = KNOWN.get(student)
    if arch is None:
        return None
    r = next(x for x in RECIPES if x.arch is arch)
    r = dataclasses.replace(
        r,
        gpus=gpus,
        zero=zero,
        accelerate=setup,
        tp=min(r.tp, gpus),
        train_seqs=train_seqs or r.train_seqs,
        probe_seqs=train_seqs if train_seqs and r.selector is r.arch else r.probe_seqs,
    )
    if sampler and r.dlm_steps:  # `auto` reads the one diffusion model here, LLaDA-2, block-causally
        r = dataclasses.replace(
            r,
            dlm_block=min(sampler["block_length"], r.gen_max),
            dlm_attention="block_causal" if sampler["attention"] == "auto" else sampler["attention"],
            dlm_cache=sampler["cache"] != "none",
            dlm_threshold=sampler["commit_threshold"],
        )
    return header(r)


def table() -> str:
    rows = [
        "| recipe | params (active) | GPUs | train run | probe | score set | AIME eval | whole method | "
        "GPU-h | mem/GPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in RECIPES:
        e = estimate(r)
        rows.append(
            f"| {r.file} | {e['params_b']:.1f}B ({e['active_b']:.2f}B) | {r.gpus} | {e['train_h']:.1f} h | "
            f"{e['probe_h']:.1f} h | {e['score_h'] * 60:.1f} min | {e['eval_h']:.1f} h | "
            f"{e['wall_h']:.1f} h | {e['gpu_h']:.0f} | {e['mem_total']:.0f} GB |"
        )
    return "\n".join(rows)


def check(root: Path) -> list[str]:
    """Recipes whose `# estimate:` header lines differ from what this script computes."""
    bad = []
    for r in RECIPES:
        path = root / "examples" / "recipes" / r.file
        have = [line for line in path.read_text().splitlines() if re.match(r"# estimate:", line)]
        if have != header(r):
            bad.append(f"{path}: header differs; run python bench/estimate.py --headers and paste")
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare the recipes' headers with the estimates")
    p.add_argument("--headers", action="store_true", help="print each recipe's header lines")
    args = p.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    if args.check:
        bad = check(root)
        print("\n".join(bad) or "recipe headers agree with bench/estimate.py")
        return 1 if bad else 0
    if args.headers:
        for r in RECIPES:
            print(f"== {r.file}\n" + "\n".join(header(r)))
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
