"""The masked-diffusion (LLaDA-style) loss, sampler and model loading: the machinery behind the
`MaskedDiffusion` objective (`t3s.objectives.masked`). Everything else (data, probe, scoring, selection,
evaluation, `t3s run`) is shared with the autoregressive path through the objective interface.

Training (`diffusion_loss`): the student is a bidirectional mask predictor. Each row's response is padded with
EOS to the longest response of its micro-batch (LLaDA's SFT recipe: the padding EOS tokens are ordinary
targets, which teaches the model to fill the end of a fixed-length canvas with EOS). Per row a noise level t is
drawn and every response position (padding included) is masked with probability t; prompt positions are never
masked. **Joint masking**: the positions of the forced set Y_τ = {t : Δc_t < −τ} (from an autoregressive
selector) are masked at every step as well, and the loss covers every masked position:

    mask_schedule = llada (default):  t ~ U(ε, 1),
        loss = mean over the rows of the global batch of  (Σ_random CE / t + Σ_forced w_f · CE) / L_answer
    mask_schedule = dfactory:         t ~ U(t_min, t_max) = U(0.3, 0.8),
        loss = (Σ_random CE + Σ_forced w_f · CE) / (number of masked positions in the global batch)

L_answer counts the row's response positions including the EOS padding. "random" are the positions masked by
the draw u < t, "forced" those of the forced set (masked at every step, whatever the draw). The 1/t weight is
LLaDA's importance weight for positions masked with probability t; a forced position is masked with probability
1, so it has its own weight w_f (`forced_weight`): `one` (default) gives it weight 1, the weight that makes its
expected contribution equal to that of a randomly masked position (E[1{u<t}/t] = 1); `inverse_t` weights it by
1/t like a random one, which multiplies the forced set's share of the loss by a random factor up to 1/ε (E[1/t]
≈ 6.9 for ε = 1e-3) and confounds any τ sweep (measured in `bench/forced_weight.py`, docs/method.md). dFactory's
own code divides each micro-batch's masked-token loss by that micro-batch's count of masked tokens and averages
micro-batches; t3s divides by the count over the whole global batch, which is the same when micro-batches hold
equal counts and exact under accumulation and data parallelism otherwise. Both normalisers are exact over the
global batch: the Trainer receives the global row count (llada) or the global masked count (dfactory) as
`num_items_in_batch`. The noise of a row depends only on (seed, optimizer step, row index), so it does not change
with the batch composition, the number of processes or a resume; it is drawn on the CPU and moved to the batch's
device.

Sampling (`sample`): LLaDA's reverse process. A canvas of `gen_length` mask tokens follows the prompt and is
filled block by block (`block_length`), `steps` denoising steps in all (split evenly over the blocks). At each
step the model predicts every masked position; the positions of the current block with the highest confidence
(the probability of the predicted token; or random scores with remasking=random) are committed, as many as the
step's share of the block, and with `commit_threshold` < 1 also every masked one of the block whose predicted
token is more probable than that (parallel decoding: the block fills in fewer steps). Temperature > 0 samples the
prediction by Gumbel-max (argmax of logits + T·Gumbel noise, i.e. a draw from softmax(logits / T)). `attention`
decides how the model reads the canvas: bidirectional (the whole canvas; blocks start where the padded prompts
end) or block-causal (LLaDA-2's own generate(): a block sees itself and the blocks before it, on a grid from each
prompt's first token; `Layout`). `cache: prefix` keeps the keys and values of the positions before the current
block instead of recomputing them at every step: exact under block-causal reading, Fast-dLLM's approximation
under bidirectional (`_Reader`). Once every row holds a stop token among its completed blocks, no answer can
change and sampling stops. The response is the canvas up to the first stop token; its length is the token count
reported.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t3s import T3SError, dist
from t3s.config import DiffusionConfig, GenConfig, TrainConfig
from t3s.models import Precision
from t3s.objectives.base import Prepared, finite_loss_callback, keep_the_loss_scaled, quiet, training_arguments

# ----------------------------------------------------------------------------------------------- models


DLLM_MARKERS = ("maskedlm", "llada", "dream")  # in a config's architectures / model_type / auto_map


def read_config(path: str | Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """A model's config.json as a dict, for a local directory or a hub id (through transformers' own resolution:
    the local cache, offline-aware; no remote code is run)."""
    from transformers import PretrainedConfig

    from t3s.models import hub_kwargs, resolve_model_path

    p = Path(resolve_model_path(path))
    if p.is_dir():
        try:
            return json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise T3SError(f"{p / 'config.json'}: cannot read the model's config ({e})") from None
    kw = hub_kwargs(trust_remote_code)
    try:
        cfg, _ = PretrainedConfig.get_config_dict(str(path), local_files_only=kw["local_files_only"])
    except (OSError, ValueError) as e:
        raise T3SError(
            f"cannot read the config of '{path}' (a local directory or a hub id; offline, it must be in "
            f"the Hugging Face cache): {e}"
        ) from None
    return cfg


def is_mask_predictor(path: str | Path, trust_remote_code: bool = False) -> bool:
    """Whether a model (directory or hub id) is a bidirectional mask predictor (a *ForMaskedLM, LLaDA, LLaDA-2,
    Dream), from its config alone."""
    c = read_config(path, trust_remote_code)
    names = [*(c.get("architectures") or []), c.get("model_type") or "", *(c.get("auto_map") or {}).values()]
    return any(m in str(n).lower() for n in names for m in DLLM_MARKERS)


# auto_map entries that hold a class with an LM head, in the order tried after the checkpoint's own architecture
_HEAD_CLASSES = ("AutoModelForMaskedLM", "AutoModelForCausalLM")


def mask_predictor_class(config: dict[str, Any]) -> str:
    """Which Auto class loads a mask predictor *with its LM head* (pure). The checkpoint's own class
    (`architectures[0]`, what was saved, head included) when an auto_map entry names it; else an auto_map
    AutoModelForMaskedLM or AutoModelForCausalLM; else AutoModel only as a last resort (LLaDA registers its LM
    there; LLaDA-2 maps AutoModel to the bare backbone and AutoModelForCausalLM to the LM); a model without
    remote code loads through AutoModelForMaskedLM."""
    auto_map = config.get("auto_map") or {}
    arch = (config.get("architectures") or [None])[0]
    if arch:
        for key, ref in auto_map.items():
            name = (ref[0] if isinstance(ref, (list, tuple)) else str(ref)).rsplit(".", 1)[-1]
            if key.startswith("AutoModel") and name == arch:
                return key
    for key in _HEAD_CLASSES:
        if key in auto_map:
            return key
    return "AutoModel" if "AutoModel" in auto_map else "AutoModelForMaskedLM"


def _has_head(model: Any) -> bool:
    """The model produces vocabulary logits: it exposes an output embedding, or a one-token forward returns
    `logits` over the vocabulary (remote code that does not implement get_output_embeddings)."""
    with contextlib.suppress(Exception):
        if model.get_output_embeddings() is not None:
            return True
    p = next(model.parameters(), None)
    if p is None or hasattr(p, "ds_id") or p.device.type == "meta":  # ZeRO-3 partitioned / not materialised
        return True  # cannot run a forward here; trust the class that was chosen
    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=p.device))
    logits = getattr(out, "logits", None)
    vocab = getattr(model.config, "vocab_size", None)
    return logits is not None and (vocab is None or logits.shape[-1] >= vocab)


def load_mask_predictor(
    path: str | Path, precision: Precision, trust_remote_code: bool = False, place: bool = True
) -> Any:
    """Any AutoModelForMaskedLM, or a remote-code model (LLaDA, LLaDA-2) through the class that has its LM head
    (`mask_predictor_class`); a model without a head is refused. `place` as in `t3s.models.load_causal_lm`:
    False leaves the weights where loading put them, for the Trainer (DDP) or accelerate (FSDP, DeepSpeed) to
    place or shard."""
    import transformers

    from t3s.models import hub_kwargs, load_error, placed, resolve_model_path, restore_buffers, whole_model_loading

    path = resolve_model_path(path)
    kw = {"dtype": precision.weights, **hub_kwargs(trust_remote_code)}
    key = mask_predictor_class(read_config(path, trust_remote_code))
    try:
        with whole_model_loading() if place else contextlib.nullcontext():
            model = getattr(transformers, key).from_pretrained(path, **kw)
    except ValueError as e:
        raise T3SError(
            f"'{path}' is not a mask predictor (AutoModelForMaskedLM; pass trust_remote_code for "
            f"LLaDA-style models): {e}"
        ) from None
    except Exception as e:  # noqa: BLE001 -- a user's files: any failure is one line naming them
        raise load_error("a mask predictor", path, e) from e
    model = placed(restore_buffers(model), precision.device, path, place)
    if not _has_head(model):
        raise T3SError(
            f"'{path}' loaded through {key} as {type(model).__name__}, which has no LM head (its forward "
            "returns no vocabulary logits): a mask predictor needs the class with the head; its config's "
            "auto_map should name it under AutoModelForMaskedLM or AutoModelForCausalLM"
        )
    return model


def mask_token_id(model: Any, tok: Any, override: int | None = None) -> int:
    if override is not None:
        return int(override)
    for src in (getattr(tok, "mask_token_id", None), getattr(model.config, "mask_token_id", None)):
        if src is not None:
            return int(src)
    raise T3SError(
        "the diffusion student has no mask token (neither its tokenizer nor its config names one); "
        "set diffusion.mask_token_id"
    )


# model_type of LLaDA-2 remote code (LLaDA2.0-mini / -flash, `modeling_llada2_moe.py`). Its backbone hands any
# attention_mask to transformers' `_prepare_4d_causal_attention_mask_for_sdpa`, which passes a 4-D mask through
# as it is but turns a 2-D padding mask with any zero into a *causal* one (and, on the eager path, turns no mask
# at all into a causal one): a mask predictor must see the whole canvas, so it gets a 4-D additive mask, always.
FOUR_D_MASK_TYPES = ("llada2_moe",)


def _unwrapped(model: Any) -> Any:
    """The model inside a DDP / DeepSpeed wrapper (whose forward takes *args, **kwargs), or the model itself."""
    return getattr(model, "module", model)


def mask_style(model: Any) -> str:
    """How a mask predictor's forward takes the padding mask: "none" (LLaDA-1: no attention_mask argument), "4d"
    (LLaDA-2: FOUR_D_MASK_TYPES) or "2d" (ModernBERT and other AutoModelForMaskedLM: a [batch, length] mask)."""
    m = _unwrapped(model)
    try:
        takes = "attention_mask" in inspect.signature(m.forward).parameters
    except (TypeError, ValueError):
        takes = False
    if not takes:
        return "none"
    config = getattr(m, "config", None)
    if getattr(config, "model_type", None) in FOUR_D_MASK_TYPES:
        if getattr(config, "_attn_implementation", None) == "eager":
            raise T3SError(
                f"{config.model_type} with eager attention reads a 4-D mask as 0/1 and an absent one as causal; "
                "load it with attn_implementation=sdpa (the default)"
            )
        return "4d"
    return "2d"


def attention_inputs(style: str, att: torch.Tensor | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The attention_mask keyword of a forward over a batch whose real tokens are `att` ([batch, length], 1 = a
    real token; None: every token is real), for a model of `mask_style` `style` (pure). "4d": an additive
    [batch, 1, length, length] mask in `dtype`, 0 where a query may look (every real token of its row: full
    bidirectional attention) and the dtype's minimum where it may not (padding); an expanded view, so it costs a
    [batch, length] tensor."""
    if style == "none" or (style == "2d" and att is None):
        return {}
    if style == "2d":
        return {"attention_mask": att}
    if att is None:
        raise ValueError("attention_inputs: a 4-D mask needs the batch's shape (pass att=torch.ones(batch, length))")
    blocked = ~att.bool()[:, None, None, :]
    add = torch.zeros(blocked.shape, dtype=dtype, device=att.device).masked_fill(blocked, torch.finfo(dtype).min)
    b, length = att.shape
    return {"attention_mask": add.expand(b, 1, length, length)}


def predictor_logits(model: Any, ids: torch.Tensor, att: torch.Tensor | None) -> torch.Tensor:
    """The mask predictor's logits for `ids` with the attention its architecture wants (`mask_style`: none, the
    2-D padding mask, or LLaDA-2's 4-D bidirectional mask)."""
    style = mask_style(model)
    if style == "4d" and att is None:
        att = torch.ones_like(ids)
    dtype = next(_unwrapped(model).parameters()).dtype
    return model(input_ids=ids, **attention_inputs(style, att, dtype)).logits


# ----------------------------------------------------------------------------------------------- training


def row_generator(seed: int, step: int, row: int) -> torch.Generator:
    """The private random stream of one row at one optimizer step."""
    h = hashlib.sha256(f"t3s-diffusion/{seed}/{step}/{row}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def draw_noise(
    cfg: DiffusionConfig, seed: int, step: int, rows: list[int], answer_lens: list[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per row: the noise level t and one uniform draw per response position (mask where u < t)."""
    ts, us = [], []
    for r, n in zip(rows, answer_lens):
        g = row_generator(seed, step, r)
        u0 = torch.rand(1, generator=g).item()
        if cfg.mask_schedule == "llada":
            ts.append(cfg.eps + (1 - cfg.eps) * u0)
        else:
            ts.append(cfg.t_min + (cfg.t_max - cfg.t_min) * u0)
        us.append(torch.rand(n, generator=g))
    return torch.tensor(ts, dtype=torch.float64), us


def build_mask(
    batch: dict[str, Any], cfg: DiffusionConfig, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask (B, L) bool, forced (B, L) bool, t (B,), answer length (B,)) for a collated batch, on the device of
    its `input_ids`: the random mask ∪ the forced set, response positions only. The noise is drawn on the CPU
    (its seeded stream does not depend on the device) and moved; the forced set stays where the Trainer put it."""
    ids, forced_r = batch["input_ids"], batch["forced"]
    plen, rows = [int(x) for x in batch["prompt_len"]], [int(x) for x in batch["row"]]
    B, L = ids.shape
    answer = [L - p for p in plen]
    t, us = draw_noise(cfg, seed, step, rows, answer)
    rand = torch.zeros((B, L), dtype=torch.bool)
    pos = torch.zeros((B, L), dtype=torch.bool)  # response positions
    for i, p in enumerate(plen):
        rand[i, p:] = us[i] < t[i]
        pos[i, p:] = True
    # the forced set is indexed from each row's response start: shift it into place on its own device
    shift = torch.tensor(plen, device=forced_r.device)[:, None]
    col = torch.arange(L, device=forced_r.device)[None, :] - shift
    forced = torch.gather(forced_r.bool(), 1, col.clamp(0, L - 1)) & (col >= 0)
    dev = ids.device
    mask = (rand.to(dev) | forced.to(dev)) & pos.to(dev)
    return mask, forced.to(dev) & pos.to(dev), t.to(dev), torch.tensor(answer, device=dev)


def position_weights(
    mask: torch.Tensor, forced: torch.Tensor, t: torch.Tensor, answer: torch.Tensor, cfg: DiffusionConfig
) -> torch.Tensor:
    """(B, L) float64 loss weight of every position (0 where not masked); see the module docstring."""
    one = torch.ones_like(t)
    w_rand = (1.0 / t) / answer.double() if cfg.mask_schedule == "llada" else one
    w_forced = (1.0 / t) if cfg.forced_weight == "inverse_t" else one
    if cfg.mask_schedule == "llada":
        w_forced = w_forced / answer.double()
    w = torch.where(forced, w_forced[:, None], w_rand[:, None])
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))


def weighted_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Σ over masked positions of weight · CE (float64), in one sum over the batch."""
    ce = torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask], reduction="none")
    return (ce.double() * weights[mask]).sum()


class Collator:
    """Right-pads each row's response with EOS to the longest row of the micro-batch (LLaDA's SFT padding).
    `prompt_len` and `row` stay Python lists: the Trainer moves tensors to the device, and the mask needs them
    on the host."""

    def __init__(self, eos_id: int):
        self.eos = eos_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        L = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), L), self.eos, dtype=torch.long)
        forced = torch.zeros((len(examples), L), dtype=torch.bool)  # indexed from each row's response start
        for i, e in enumerate(examples):
            ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            forced[i, : len(e["forced"])] = torch.tensor(e["forced"], dtype=torch.bool)
        return {
            "input_ids": ids,
            "prompt_len": [int(e["prompt_len"]) for e in examples],
            "forced": forced,
            "row": [int(e["row"]) for e in examples],
        }


def trainer_class():
    from transformers import Trainer

    class DiffusionTrainer(Trainer):
        """transformers' Trainer with the masked-diffusion loss; the loss is exact over the global batch (all
        micro-batches and processes): normalised by the global row count (llada) or masked count (dfactory)."""

        loss_is_scaled_for_ga = True  # compute_loss divides by the global normaliser itself

        def __init__(self, *args, diffusion: DiffusionConfig, mask_id: int, **kwargs):
            self.diffusion, self.mask_id = diffusion, mask_id
            super().__init__(*args, **kwargs)
            keep_the_loss_scaled(self)  # transformers < 5.19 has no loss_is_scaled_for_ga

        def _get_num_items_in_batch(self, batch_samples, device):
            if self.diffusion.mask_schedule == "dfactory":  # the masked positions of every micro-batch this step
                n = sum(
                    int(build_mask(b, self.diffusion, self.args.seed, self.state.global_step)[0].sum())
                    for b in batch_samples
                )
            else:
                n = sum(len(b["input_ids"]) for b in batch_samples)
            n = torch.tensor(max(n, 1), device=device)
            if self.args.world_size > 1:
                n = self.accelerator.gather(n).sum()
            return n

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask, forced, t, answer = build_mask(inputs, self.diffusion, self.args.seed, self.state.global_step)
            ids = inputs["input_ids"]
            logits = predictor_logits(model, ids.masked_fill(mask, self.mask_id), None)
            total = weighted_loss_sum(logits, ids, mask, position_weights(mask, forced, t, answer, self.diffusion))
            if num_items_in_batch is None:  # outside training (evaluation): this batch's own normaliser
                n = ids.shape[0] if self.diffusion.mask_schedule == "llada" else mask.sum().clamp(min=1)
                loss = total / n
            else:  # DDP averages gradients over processes: scale so the result is the global mean
                loss = total / num_items_in_batch * self.accelerator.num_processes
            loss = loss.float()
            return (loss, {"logits": logits}) if return_outputs else loss

    return DiffusionTrainer


def make_trainer(
    model: Any,
    data: Prepared,
    cfg: TrainConfig,
    dcfg: DiffusionConfig,
    output_dir: str | Path,
    *,
    progress: bool = True,
    callbacks: list | None = None,
) -> Any:
    """The diffusion counterpart of the autoregressive trainer (same TrainConfig, same precision rules)."""
    from transformers import TrainingArguments

    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=cfg.lora_target_modules,
            ),
        )
    args = TrainingArguments(**training_arguments(cfg, output_dir, progress))
    DiffusionTrainer = trainer_class()
    tok = data.tokenizer
    trainer = DiffusionTrainer(
        model=model,
        args=args,
        train_dataset=data.dataset,
        processing_class=tok,
        data_collator=Collator(tok.eos_token_id),
        callbacks=[*(callbacks or []), finite_loss_callback(cfg.stop_on_divergence)],
        diffusion=dcfg,
        mask_id=mask_token_id(model, tok, dcfg.mask_token_id),
    )
    return quiet(trainer, progress)


# ----------------------------------------------------------------------------------------------- sampler


def _transfer_counts(n_masked: int, steps: int) -> list[int]:
    """Tokens committed at each step of a block: as even as possible, the remainder at the first steps."""
    base, rem = divmod(n_masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


# model_type of the block-diffusion models whose own generate() reads the canvas block-causally (each block sees
# itself and the blocks before it, on a grid of block_length from the first prompt token): LLaDA2.0 / LLaDA2.1
BLOCK_CAUSAL_TYPES = ("llada2_moe",)


@functools.lru_cache(maxsize=64)
def model_type(path: str, trust_remote_code: bool = False) -> str | None:
    """A model's `model_type` from its config, None where the config cannot be read; once per process and model
    (a run builds its objective several times, and an unreachable hub id costs transformers' retries each time)."""
    try:
        return read_config(path, trust_remote_code).get("model_type")
    except T3SError:
        return None


def auto_attention(model_type: str | None) -> str:
    """What `diffusion.attention: auto` means for a model of this type (pure): block_causal for
    BLOCK_CAUSAL_TYPES, as their own generate() reads the canvas, bidirectional for every other."""
    return "block_causal" if model_type in BLOCK_CAUSAL_TYPES else "bidirectional"


def sampler_attention(setting: str, model: Any) -> str:
    """The attention the sampler gives the canvas (pure but for reading the model's config and signature):
    `auto` is block_causal for BLOCK_CAUSAL_TYPES (as their own generate() does) and bidirectional otherwise;
    block_causal needs a model that takes a 4-D mask."""
    m = _unwrapped(model)
    kind = getattr(getattr(m, "config", None), "model_type", None)
    attention = setting if setting != "auto" else auto_attention(kind)
    if attention == "block_causal" and mask_style(model) != "4d":
        raise T3SError(
            f"diffusion.attention=block_causal needs a model that takes a 4-D attention mask (LLaDA-2: model_type "
            f"{', '.join(BLOCK_CAUSAL_TYPES)}); {type(m).__name__} ({kind}) reads the canvas bidirectionally: "
            "diffusion.attention=bidirectional"
        )
    return attention


def check_cache(model: Any) -> None:
    """diffusion.cache needs a forward that takes `past_key_values` and a 4-D mask (LLaDA-2's remote code does;
    LLaDA-1's and ModernBERT's do not)."""
    m = _unwrapped(model)
    try:
        params = inspect.signature(m.forward).parameters
    except (TypeError, ValueError):
        params = {}
    if "past_key_values" not in params or mask_style(model) != "4d":
        raise T3SError(
            f"diffusion.cache=prefix needs a model whose forward takes past_key_values and a 4-D attention mask "
            f"(LLaDA-2's remote code); {type(m).__name__} does not: diffusion.cache=none"
        )


class Layout:
    """Where everything sits on one batch's canvas (pure: built from prompt lengths alone).

    Prompts are left-padded to P; the canvas starts at P for every row. Blocks are the units the sampler commits,
    one after another. `bidirectional`: blocks start at P (today's semi-autoregressive sampler, every row
    aligned). `block_causal`: each row's blocks lie on a grid of `block` tokens from its *own* first prompt token,
    as LLaDA-2's generate() lays them out for one prompt (its first canvas block is the rest of the block the
    prompt ends in, and its canvas runs on to the end of the last block: up to block − 1 tokens past gen_len, cut
    from the answer), so a row sampled in a batch reads exactly what it reads alone."""

    def __init__(self, prompt_lens: list[int], gen_len: int, block: int, attention: str):
        self.attention, self.block, self.gen_len = attention, block, gen_len
        self.P = P = max(prompt_lens)
        self.start = torch.tensor([P - p for p in prompt_lens])  # first real token of each row
        plen = torch.tensor(prompt_lens)
        if attention == "block_causal":
            first = plen // block  # the block each prompt ends in (its first canvas block)
            last = (plen + gen_len + block - 1) // block  # one past the last block that holds canvas
            self.end = self.start + last * block  # one past each row's last canvas position
            self.n_blocks = int((last - first).max())
            self._first = first
        else:
            self.end = torch.full_like(plen, P + gen_len)
            self.n_blocks = gen_len // block
        self.length = int(self.end.max())

    def window(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) per row: the canvas positions of block j (lo == hi where a row has no block j)."""
        if self.attention != "block_causal":
            lo = torch.full_like(self.start, self.P + j * self.block)
            return lo, lo + self.block
        b = self._first + j
        lo = torch.maximum(self.start + b * self.block, torch.full_like(self.start, self.P))
        hi = self.start + (b + 1) * self.block
        return torch.minimum(lo, self.end), torch.minimum(hi, self.end)

    def settled(self, j: int) -> int:
        """How many leading canvas positions are final for every row while block j is sampled: those of the
        blocks before it. Block-causal, a row's block j begins where its grid puts it, which for the first block
        is inside the prompt (the prompt's last tokens share their block with the first canvas positions and read
        them, so their keys change until that block is committed)."""
        if self.attention != "block_causal":
            return self.P + j * self.block
        return int(torch.minimum(self.start + (self._first + j) * self.block, self.end).min())

    def real(self) -> torch.Tensor:
        """[rows, length] bool: a prompt token or a canvas position of the row (not padding)."""
        idx = torch.arange(self.length)[None, :]
        return (idx >= self.start[:, None]) & (idx < self.end[:, None])

    def positions(self) -> torch.Tensor:
        """[rows, length] position of every token from its row's first prompt token (0 on the padding)."""
        return (torch.arange(self.length)[None, :] - self.start[:, None]).clamp(min=0)

    def blocks(self) -> torch.Tensor:
        """[rows, length] block index on the row's grid; padding gets a block after every other, so that as a
        query it sees every real token (no all-masked row) while as a key it is hidden by `real`."""
        return torch.where(self.real(), self.positions() // self.block, torch.full((), 1 << 30))


def canvas_mask(
    real: torch.Tensor, blocks: torch.Tensor | None, q_lo: int, q_hi: int, dtype: torch.dtype
) -> torch.Tensor:
    """The additive 4-D mask [rows, 1, q_hi − q_lo, q_hi] of queries q_lo..q_hi−1 over keys 0..q_hi−1 (pure):
    0 where a query may look, the dtype's minimum where not. A key is visible when it is real and, with `blocks`
    (block-causal), in the query's block or an earlier one; without, every real key is (bidirectional)."""
    ok = real[:, None, None, :q_hi]
    if blocks is not None:
        ok = ok & (blocks[:, None, None, :q_hi] <= blocks[:, None, q_lo:q_hi, None])
    else:
        ok = ok.expand(-1, -1, q_hi - q_lo, -1)
    return torch.zeros(ok.shape, dtype=dtype, device=real.device).masked_fill(~ok, torch.finfo(dtype).min)


def _keep_first(cache: Any, n: int) -> None:
    """Drop the cache's entries past the first `n` positions (transformers >= 5: crop takes a negative count)."""
    extra = cache.get_seq_length() - n
    if extra > 0:
        cache.crop(-extra)


class _Reader:
    """The model's logits over the canvas at one denoising step, with or without the cache.

    Uncached: one forward over the canvas (bidirectional: all of it, as today's sampler; block-causal: up to the
    last position of the current blocks, as LLaDA-2's generate() does: nothing later is visible to them).
    Cached, block-causal (exact): the cache holds the keys and values of the positions in blocks before every
    row's current block (`Layout.settled`); each step runs the model on the rest up to the current blocks' end,
    and the cache then keeps what is settled. Under block-causal attention the keys and values of a position
    depend only on its own and earlier blocks, all committed, so this is what the uncached forward computes.
    Cached, bidirectional (approximate, Fast-dLLM's prefix cache): at the first step of a block one full forward
    fills the cache; the cache keeps the positions before the block, and the later steps of the block run the
    model on the block and everything after it only. The cached positions miss what the block commits since."""

    def __init__(self, model: Any, x: torch.Tensor, att: torch.Tensor, lay: Layout, cached: bool, precision: Precision):
        self.model, self.lay, self.cached, self.precision = model, lay, cached, precision
        dev = x.device
        self.dtype = next(_unwrapped(model).parameters()).dtype
        self.att = att
        self.causal = lay.attention == "block_causal"
        self.real = lay.real().to(dev)
        self.blocks = lay.blocks().to(dev) if self.causal else None
        self.pos = (
            lay.positions().to(dev)
            if self.causal
            else torch.arange(lay.length, device=dev)[None].expand(x.shape[0], -1)
        )
        self.cache, self.c = None, 0

    def __call__(self, x: torch.Tensor, hi: torch.Tensor, settled: int, first_step: bool) -> tuple[torch.Tensor, int]:
        """(logits [rows, q, vocab] as float, the canvas index of logits[:, 0]). `hi`: each row's current block
        end; `settled`: how many leading positions are final (`Layout.settled`)."""
        e = int(hi.max()) if self.causal else self.lay.length
        if not self.cached:
            with self.precision.context():
                if self.causal:
                    mask = canvas_mask(self.real[:, :e], self.blocks[:, :e], 0, e, self.dtype)
                    out = self.model(input_ids=x[:, :e], attention_mask=mask, position_ids=self.pos[:, :e])
                else:
                    out = _Logits(predictor_logits(self.model, x, self.att))
            return out.logits.float(), 0
        from transformers import DynamicCache

        if self.cache is None or (first_step and not self.causal):
            self.cache, self.c = DynamicCache(), 0  # bidirectional: refreshed at every block's first step
        c = self.c
        with self.precision.context():
            mask = canvas_mask(self.real[:, :e], self.blocks[:, :e] if self.causal else None, c, e, self.dtype)
            out = self.model(
                input_ids=x[:, c:e],
                attention_mask=mask,
                position_ids=self.pos[:, c:e],
                past_key_values=self.cache,
                use_cache=True,
            )
        self.c = settled
        _keep_first(self.cache, self.c)
        return out.logits.float(), c


class _Logits:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


@torch.no_grad()
def sample(
    model: Any,
    tok: Any,
    prompts: list[list[int]],
    gcfg: GenConfig,
    dcfg: DiffusionConfig,
    precision: Precision,
    progress: bool = True,
    desc: str = "sample",
) -> list[list[Any]]:
    """k samples per prompt with the reverse process described in the module docstring. Same output as
    `t3s.generation.generate`: per prompt a list of Generation(token_ids before the first EOS, text, truncated)."""
    from tqdm.auto import tqdm

    from t3s.generation import Generation, eos_ids

    gen_len, block, steps = dcfg.canvas(gcfg.max_new_tokens)
    counts = _transfer_counts(block, steps // (gen_len // block))
    mask_id = mask_token_id(model, tok, dcfg.mask_token_id)
    stops = eos_ids(model, tok) or [tok.eos_token_id]
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    attention = sampler_attention(dcfg.attention, model)
    cached = dcfg.cache != "none"
    if cached:
        check_cache(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stop_ids = torch.tensor(stops, device=device)
    jobs = [(i, j) for i in range(len(prompts)) for j in range(gcfg.k)]
    jobs.sort(key=lambda x: -len(prompts[x[0]]))
    # Several processes: whole batches are dealt round-robin, so each batch (rows, padding, seed) is exactly the
    # one a single process samples and the gathered outputs are the same. With sharded parameters (ZeRO-3, FSDP)
    # every forward is a collective: every process then samples every batch.
    batches = list(enumerate(range(0, len(jobs), gcfg.batch_size)))
    shard = dist.launched() and not dist.params_sharded(model)
    mine = batches[dist.rank() :: dist.world()] if shard else batches
    done: dict[int, Any] = {}  # job index -> Generation
    bar = tqdm(
        total=sum(len(jobs[s : s + gcfg.batch_size]) for _, s in mine),
        unit="sample",
        desc=desc,
        disable=not progress or not dist.is_main(),
        dynamic_ncols=True,
    )
    t0, n_new = time.perf_counter(), 0
    for b, start in mine:
        batch = jobs[start : start + gcfg.batch_size]
        lay = Layout([len(prompts[i]) for i, _ in batch], gen_len, block, attention)
        P, R = lay.P, len(batch)
        x = torch.full((R, lay.length), mask_id, dtype=torch.long)
        for r, (i, _) in enumerate(batch):  # left-padded prompts
            x[r, : P - len(prompts[i])] = pad
            x[r, P - len(prompts[i]) : P] = torch.tensor(prompts[i])
        att = lay.real().long()  # attention off on the padding (and past a row's canvas, block-causal)
        x, att = x.to(device), att.to(device)
        read = _Reader(model, x, att, lay, cached, precision)
        rows = torch.arange(R, device=device)[:, None]
        g = torch.Generator().manual_seed(gcfg.seed * 100_003 + b)
        for j in range(lay.n_blocks):
            lo, hi = lay.window(j)
            idx = (lo[:, None] + torch.arange(block)[None, :]).clamp(max=lay.length - 1).to(device)
            valid = (torch.arange(block)[None, :] < (hi - lo)[:, None]).to(device)
            for step, n_commit in enumerate(counts):
                masked = valid & (x.gather(1, idx) == mask_id)  # only the current block is committed
                k = min(n_commit, int(masked.sum(1).max()))
                if k == 0:
                    break
                logits, at = read(x, hi, lay.settled(j), step == 0)
                at_idx = (idx - at).clamp(0, logits.shape[1] - 1)  # clamped where not `valid`: never committed
                current = logits.gather(1, at_idx[..., None].expand(-1, -1, logits.shape[-1]))
                new = commit_step(
                    current, x.gather(1, idx), masked, k, gcfg.temperature, dcfg.remasking, g, dcfg.commit_threshold
                )
                x[rows.expand_as(idx)[valid], idx[valid]] = new[valid]
            if _answered(x[:, P:], (hi - P).to(device), stop_ids):
                break  # every row's answer is fixed (see _answered)
        for r in range(R):
            seq = x[r, P : P + gen_len].tolist()
            end = next((q for q, t in enumerate(seq) if t in stops), None)
            toks = seq if end is None else seq[:end]
            done[start + r] = Generation(toks, tok.decode(toks, skip_special_tokens=True), end is None)
            n_new += len(toks)
        bar.update(len(batch))
        bar.set_postfix(new_tok_s=f"{n_new / max(time.perf_counter() - t0, 1e-9):.0f}")
    bar.close()
    gens = dist.gather_ordered(done, len(jobs)) if shard else [done[n] for n in range(len(jobs))]
    out: list[list[Any]] = [[None] * gcfg.k for _ in prompts]
    for (i, j), g in zip(jobs, gens):
        out[i][j] = g
    model.train(was_training)
    return out


def commit_step(
    logits: torch.Tensor,
    block: torch.Tensor,
    masked: torch.Tensor,
    k: int,
    temperature: float,
    remasking: str,
    g: torch.Generator,
    threshold: float = 1.0,
) -> torch.Tensor:
    """One denoising step on the current block: predict every position, commit the `k` most confident masked
    ones (per row), and every masked one whose predicted token has probability above `threshold` (1.0: none; the
    union is LLaDA-2's rule "the ones above the threshold if there are at least k, else the k most confident",
    and with k = 1 Fast-dLLM's "the ones above the threshold, at least one"). The noise comes from the CPU
    generator `g` (seeded, device-independent) and is moved to the logits' device."""
    device = logits.device
    if temperature > 0:  # Gumbel-max: a draw from softmax(logits / T)
        u = torch.rand(logits.shape, generator=g).clamp_(1e-10, 1 - 1e-10).to(device)
        pred = (logits - temperature * torch.log(-torch.log(u))).argmax(-1)
    else:
        pred = logits.argmax(-1)
    prob = None
    if remasking == "low_confidence" or threshold < 1.0:
        prob = torch.softmax(logits, -1).gather(-1, pred[..., None])[..., 0]
    conf = prob if remasking == "low_confidence" else torch.rand(masked.shape, generator=g).to(device)
    conf = torch.where(masked, conf, torch.full((), -np.inf, device=device))
    take = torch.zeros_like(masked).scatter_(1, conf.topk(k, dim=-1).indices, True) & masked
    if threshold < 1.0:
        take |= masked & (prob > threshold)
    return torch.where(take, pred, block)


def _answered(canvas: torch.Tensor, done: torch.Tensor, stops: torch.Tensor) -> bool:
    """Every row holds a stop token among its completed canvas positions (`done`: how many, per row). Its answer
    (the canvas up to the first stop token) is then fixed: blocks complete in order, so every position before that
    token is committed, and committed tokens never change; sampling the rest of the canvas changes no answer."""
    completed = torch.arange(canvas.shape[1], device=canvas.device)[None, :] < done[:, None]
    return bool((torch.isin(canvas, stops) & completed).any(1).all())
