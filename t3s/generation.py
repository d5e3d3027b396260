"""Autoregressive generation with Hugging Face `generate`: exactly the configured sampling settings (nothing
inherited from a model's generation_config.json unless asked), prompts batched by length and left-padded, one
seeded random stream per batch (or per row), and rows split across processes under a launcher. A leaf module:
the autoregressive objective, the vLLM backend and the diffusion sampler share its `Generation` record.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from t3s import T3SError, dist
from t3s.config import GenConfig
from t3s.models import Precision

# Sampling settings a model's generation_config.json may carry that GenConfig does not set itself; applied only
# with `model_defaults: true`, identically on every backend. Their neutral values:
MODEL_SAMPLING_KEYS = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
# generation_config keys that say which tokens stop and pad (kept from the model: they are not sampling settings)
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def model_sampling_defaults(gen_config: Any) -> dict[str, Any]:
    """The MODEL_SAMPLING_KEYS a model's GenerationConfig sets to a non-neutral value."""
    out = {}
    for key, neutral in MODEL_SAMPLING_KEYS.items():
        v = None if gen_config is None else getattr(gen_config, key, None)
        if v is not None and v != neutral:
            out[key] = v
    return out


def sampling_settings(cfg: "GenConfig", gen_config: Any = None) -> dict[str, Any]:
    """Every sampling setting a generation uses (pure): the GenConfig's temperature and top_p, neutral top_k,
    min_p and repetition penalty unless `model_defaults` takes them from the model's GenerationConfig."""
    sample = cfg.temperature > 0
    out = {
        "do_sample": sample,
        "temperature": cfg.temperature if sample else 0.0,
        "top_p": cfg.top_p if sample else 1.0,
        **MODEL_SAMPLING_KEYS,
    }
    if cfg.model_defaults:
        out.update(model_sampling_defaults(gen_config))
    return out


@contextlib.contextmanager
def own_generation_config(model: Any):
    """Within: the model's generation_config holds only its token ids, so `generate` inherits no sampling setting
    (repetition penalty, top-k, beams, ...) from the model's generation_config.json. Yields the original."""
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    original = getattr(target, "generation_config", None)
    if original is None:
        yield None
        return
    target.generation_config = GenerationConfig(
        **{k: getattr(original, k) for k in TOKEN_ID_KEYS if getattr(original, k, None) is not None}
    )
    try:
        yield original
    finally:
        target.generation_config = original


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens before EOS
    text: str
    truncated: bool  # hit max_new_tokens without EOS


def eos_ids(model: Any, tok: Any) -> list[int]:
    gc = getattr(model, "generation_config", None)  # mask predictors have none
    ids = None if gc is None else gc.eos_token_id
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


class RowSampler:
    """Temperature / top-p sampling with one random generator per batch row, used as a logits processor under
    greedy decoding (it leaves only the drawn token). A row's draws then depend on its own seed alone, not on the
    other prompts of its batch: `t3s traces` regenerates exactly the samples an interrupted run had not finished."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: Any) -> None:
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1:  # nucleus: the most likely tokens until their mass reaches top_p
            p, ix = probs.sort(dim=-1, descending=True)
            p[(p.cumsum(-1) - p) >= self.top_p] = 0
            probs = torch.zeros_like(probs).scatter_(-1, ix, p)
        picks = torch.stack([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self.gens)])
        return torch.full_like(scores, float("-inf")).scatter_(-1, picks, 0.0)


@torch.no_grad()
def generate(
    model: Any,
    tok: Any,
    prompts: list[list[int]],
    cfg: GenConfig,
    precision: Precision,
    progress: bool = True,
    desc: str = "generate",
    row_seeds: list[int] | None = None,
) -> list[list[Generation]]:
    """k generations per prompt with Hugging Face `generate` (KV cache), prompts batched by length and left-padded.
    `row_seeds` (one per prompt, k = 1): each prompt samples from its own seed, whatever batch it lands in."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, LogitsProcessorList

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stops = eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    if row_seeds is not None and (cfg.k != 1 or len(row_seeds) != len(prompts)):
        raise T3SError("row_seeds needs k = 1 and one seed per prompt")
    per_row = row_seeds is not None and cfg.temperature > 0
    settings = sampling_settings(cfg, getattr(model, "generation_config", None))
    if per_row and cfg.model_defaults:
        raise T3SError("per-row seeded sampling (t3s traces) does not take a model's sampling defaults")
    sample = settings["do_sample"] and not per_row
    gcfg = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=sample,
        temperature=settings["temperature"] if sample else None,
        top_p=settings["top_p"] if sample else None,
        top_k=settings["top_k"] if sample else None,
        min_p=(settings["min_p"] or None) if sample else None,
        repetition_penalty=settings["repetition_penalty"],
        num_return_sequences=cfg.k,
        eos_token_id=stops,
        pad_token_id=pad,
        use_cache=True,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[Generation] | None] = [None] * len(prompts)
    # Several processes: whole batches are dealt round-robin, so every batch (rows, padding, seed) is exactly the
    # one a single process generates, and the gathered outputs are the same.
    batches = list(enumerate(range(0, len(order), cfg.batch_size)))
    mine = batches[dist.rank() :: dist.world()]
    # ZeRO-3 / FSDP: every forward gathers parameters from all processes, so all step together within a call
    # (synced_gpus; transformers does not detect accelerate's FSDP2 itself) and make as many calls as the busiest
    sync = {"synced_gpus": True} if dist.params_sharded(model) else {}
    bar = tqdm(
        total=sum(len(order[s : s + cfg.batch_size]) for _, s in mine),
        unit="prompt",
        desc=desc,
        disable=not progress or not dist.is_main(),
        dynamic_ncols=True,
    )
    t0, n_new = time.perf_counter(), 0
    for b, start in mine:
        idx = order[start : start + cfg.batch_size]
        L = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), L), pad, dtype=torch.long)
        att = torch.zeros((len(idx), L), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, L - len(prompts[i]) :] = torch.tensor(prompts[i])
            att[r, L - len(prompts[i]) :] = 1
        # a private RNG stream: evaluating during training (the probe) must not move the trainer's random state
        with (
            torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]),
            precision.context(),
            own_generation_config(model),
        ):  # exactly the settings above, nothing from the model's file
            torch.manual_seed(cfg.seed * 100_003 + b)
            extra = (
                {
                    "logits_processor": LogitsProcessorList(
                        [RowSampler([row_seeds[i] for i in idx], cfg.temperature, cfg.top_p, device)]
                    )
                }
                if per_row
                else {}
            )
            seqs = model.generate(
                input_ids=ids.to(device), attention_mask=att.to(device), generation_config=gcfg, **extra, **sync
            )
        new = seqs[:, L:].cpu().tolist()
        for r, i in enumerate(idx):
            gens = []
            for s in new[r * cfg.k : (r + 1) * cfg.k]:
                end = next((j for j, t in enumerate(s) if t in stops), None)
                toks = s if end is None else s[:end]  # no EOS: the whole budget was used
                gens.append(Generation(toks, tok.decode(toks, skip_special_tokens=True), end is None))
                n_new += len(toks)
            out[i] = gens
        bar.update(len(idx))
        bar.set_postfix(new_tok_s=f"{n_new / max(time.perf_counter() - t0, 1e-9):.0f}")
    bar.close()
    if batches and sync:
        for _ in range(-(-len(batches) // dist.world()) - len(mine)):
            with precision.context(), own_generation_config(model):
                model.generate(
                    input_ids=torch.tensor([prompts[order[0]]], device=device), generation_config=gcfg, **sync
                )
    if dist.launched():
        out = dist.gather_ordered({i: g for i, g in enumerate(out) if g is not None}, len(prompts))
    model.train(was_training)
    return out  # type: ignore[return-value]
