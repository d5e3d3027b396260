"""The masked-diffusion (LLaDA-style) objective and sampler. Everything else (data, probe, scoring, selection,
evaluation, `t3s run`) is shared with the autoregressive path.

Training (`diffusion_loss`): the student is a bidirectional mask predictor. Each row's response is padded with
EOS to the longest response of its micro-batch (LLaDA's SFT recipe: the padding EOS tokens are ordinary
targets, which teaches the model to fill the end of a fixed-length canvas with EOS). Per row a noise level t is
drawn and every response position (padding included) is masked with probability t; prompt positions are never
masked. **Joint masking**: the positions of the forced set Y_τ = {t : Δc_t < −τ} (from an autoregressive
selector) are masked at every step as well, and the loss covers every masked position:

    mask_schedule = llada (default):  t ~ U(ε, 1),  loss_row = Σ_masked CE / t / L_answer
    mask_schedule = dfactory:         t ~ U(t_min, t_max) = U(0.3, 0.8),  loss_row = Σ_masked CE / L_answer

L_answer counts the row's response positions including the EOS padding. The step loss is the mean of loss_row
over the rows of the global batch (every micro-batch and process), exactly: the Trainer receives the global row
count as `num_items_in_batch`. The noise of a row depends only on (seed, optimizer step, row index), so it does
not change with the batch composition, the number of processes or a resume.

Sampling (`sample`): LLaDA's reverse process. A canvas of `gen_length` mask tokens follows the prompt and is
filled block by block (`block_length`), `steps` denoising steps in all (split evenly over the blocks). At each
step the model predicts every masked position; the positions of the current block with the highest confidence
(the probability of the predicted token; or random scores with remasking=random) are committed, as many as the
step's share of the block. Temperature > 0 samples the prediction by Gumbel-max (argmax of logits + T·Gumbel
noise, i.e. a draw from softmax(logits / T)). A row is finished once a committed EOS is followed, in its
committed blocks, by nothing but EOS; when every row of a batch is finished the rest of the canvas is EOS and
sampling stops early. The response is the canvas up to the first EOS; its length is the token count reported.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t3s import T3SError, dist

SCHEDULES = ("llada", "dfactory")
REMASKING = ("low_confidence", "random")
DIFFUSION_FORCED_MODES = ("t3s", "random")  # modes with a forced set; `sft` is the random mask only
DIFFUSION_MODES = ("sft", *DIFFUSION_FORCED_MODES)


@dataclass
class DiffusionConfig:
    """Masked-diffusion students: the training mask and the sampler (section `diffusion`)."""

    mask_schedule: str = field(default="llada", metadata={"help": "llada: t~U(eps,1), CE weighted 1/t | "
                                                                  "dfactory: t~U(t_min,t_max), no weight"})
    eps: float = field(default=1e-3, metadata={"help": "llada: smallest noise level"})
    t_min: float = field(default=0.3, metadata={"help": "dfactory: noise level range, low end"})
    t_max: float = field(default=0.8, metadata={"help": "dfactory: noise level range, high end"})
    tau: float = field(default=0.2, metadata={"help": "forced set: Δc < −tau (always masked)"})
    mask_token_id: int | None = field(default=None, metadata={"help": "default: the tokenizer's or config's"})
    gen_length: int = field(default=0, metadata={"help": "sampler canvas length (0: eval.max_new_tokens)"})
    block_length: int = field(default=32, metadata={"help": "semi-autoregressive block length"})
    steps: int = field(default=0, metadata={"help": "denoising steps over the canvas (0: gen_length)"})
    remasking: str = field(default="low_confidence", metadata={"help": "low_confidence | random"})

    def __post_init__(self) -> None:
        if self.mask_schedule not in SCHEDULES:
            raise T3SError(f"diffusion.mask_schedule must be one of {SCHEDULES}, got '{self.mask_schedule}'")
        if self.remasking not in REMASKING:
            raise T3SError(f"diffusion.remasking must be one of {REMASKING}, got '{self.remasking}'")
        if not 0 < self.eps < 1:
            raise T3SError("diffusion.eps must be in (0, 1)")
        if not 0 < self.t_min <= self.t_max <= 1:
            raise T3SError("diffusion needs 0 < t_min <= t_max <= 1")
        if self.tau < 0:
            raise T3SError("diffusion.tau must be >= 0")
        if self.block_length < 1 or self.gen_length < 0 or self.steps < 0:
            raise T3SError("diffusion.block_length must be >= 1; gen_length and steps >= 0")

    def canvas(self, max_new_tokens: int) -> tuple[int, int, int]:
        """(gen_length, block_length, steps) with the defaults filled in and checked."""
        gen = self.gen_length or max_new_tokens
        block = min(self.block_length, gen)
        if gen % block:
            raise T3SError(f"diffusion.gen_length ({gen}) must be a multiple of block_length ({block})")
        steps = self.steps or gen
        blocks = gen // block
        if steps % blocks:
            raise T3SError(f"diffusion.steps ({steps}) must be a multiple of the number of blocks ({blocks})")
        if steps // blocks > block:
            raise T3SError(f"diffusion.steps ({steps}) exceeds gen_length ({gen}): at most one step per token")
        return gen, block, steps


# ----------------------------------------------------------------------------------------------- models


def is_mask_predictor(path: str | Path) -> bool:
    """Whether a model directory holds a bidirectional mask predictor (a *ForMaskedLM or a LLaDA model)."""
    from t3s.models import resolve_model_path

    cfg = Path(resolve_model_path(path)) / "config.json"
    if not cfg.exists():
        return False
    c = json.loads(cfg.read_text())
    names = [*(c.get("architectures") or []), c.get("model_type") or "", *(c.get("auto_map") or {}).values()]
    return any("MaskedLM" in str(n) or "llada" in str(n).lower() for n in names)


def load_mask_predictor(path: str | Path, precision: Any, trust_remote_code: bool = False) -> Any:
    """Any AutoModelForMaskedLM, or a remote-code model (LLaDA / LLaDA-2) loaded with trust_remote_code."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    from t3s.models import _hub_kwargs, resolve_model_path

    path = resolve_model_path(path)
    kw = {"dtype": precision.weights, **_hub_kwargs(trust_remote_code)}
    try:
        config = AutoConfig.from_pretrained(path, **_hub_kwargs(trust_remote_code))
        auto_map = getattr(config, "auto_map", None) or {}
        if trust_remote_code and "AutoModelForMaskedLM" not in auto_map and "AutoModel" in auto_map:
            model = AutoModel.from_pretrained(path, **kw)  # LLaDA registers its LM under AutoModel
        elif trust_remote_code and "AutoModelForMaskedLM" not in auto_map and "AutoModelForCausalLM" in auto_map:
            from transformers import AutoModelForCausalLM  # remote code that registers only this name

            model = AutoModelForCausalLM.from_pretrained(path, **kw)
        else:
            model = AutoModelForMaskedLM.from_pretrained(path, **kw)
    except ValueError as e:
        raise T3SError(f"'{path}' is not a mask predictor (AutoModelForMaskedLM; pass trust_remote_code for "
                       f"LLaDA-style models): {e}") from None
    except OSError as e:
        raise T3SError(f"cannot load a mask predictor from '{path}': {e}") from None
    return model.to(precision.device)


def mask_token_id(model: Any, tok: Any, override: int | None = None) -> int:
    if override is not None:
        return int(override)
    for src in (getattr(tok, "mask_token_id", None), getattr(model.config, "mask_token_id", None)):
        if src is not None:
            return int(src)
    raise T3SError("the diffusion student has no mask token (neither its tokenizer nor its config names one); "
                   "set diffusion.mask_token_id")


def _accepts_attention_mask(model: Any) -> bool:
    try:
        return "attention_mask" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _logits(model: Any, ids: torch.Tensor, att: torch.Tensor | None) -> torch.Tensor:
    if att is not None and _accepts_attention_mask(model):
        return model(input_ids=ids, attention_mask=att).logits
    return model(input_ids=ids).logits


# ----------------------------------------------------------------------------------------------- training


def row_generator(seed: int, step: int, row: int) -> torch.Generator:
    """The private random stream of one row at one optimizer step."""
    h = hashlib.sha256(f"t3s-diffusion/{seed}/{step}/{row}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def draw_noise(cfg: DiffusionConfig, seed: int, step: int, rows: list[int], answer_lens: list[int]
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


def build_mask(batch: dict[str, torch.Tensor], cfg: DiffusionConfig, seed: int, step: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask (B, L) bool, t (B,), answer length (B,)) for a collated batch: random mask ∪ forced set, response
    positions only."""
    ids, plen, forced = batch["input_ids"], batch["prompt_len"], batch["forced"]
    B, L = ids.shape
    answer = (L - plen).tolist()
    t, us = draw_noise(cfg, seed, step, batch["row"].tolist(), answer)
    mask = torch.zeros((B, L), dtype=torch.bool)
    for i in range(B):
        p = int(plen[i])
        mask[i, p:] = (us[i] < t[i]) | forced[i, : L - p].bool()
    return mask.to(ids.device), t.to(ids.device), torch.tensor(answer, device=ids.device)


def row_losses(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
               answer: torch.Tensor, schedule: str) -> torch.Tensor:
    """loss_row = Σ_masked CE (/ t for llada) / L_answer, one value per row."""
    ce = torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask], reduction="none")
    rows = mask.nonzero()[:, 0]
    w = 1.0 / answer.double()[rows]
    if schedule == "llada":
        w = w / t[rows]
    return torch.zeros(mask.shape[0], dtype=torch.float64, device=ce.device).index_add(0, rows, ce.double() * w)


class Collator:
    """Right-pads each row's response with EOS to the longest row of the micro-batch (LLaDA's SFT padding)."""

    def __init__(self, eos_id: int):
        self.eos = eos_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        L = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), L), self.eos, dtype=torch.long)
        forced = torch.zeros((len(examples), L), dtype=torch.bool)  # indexed from each row's response start
        for i, e in enumerate(examples):
            ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            forced[i, : len(e["forced"])] = torch.tensor(e["forced"], dtype=torch.bool)
        return {"input_ids": ids, "prompt_len": torch.tensor([e["prompt_len"] for e in examples]),
                "forced": forced, "row": torch.tensor([e["row"] for e in examples])}


def trainer_class():
    from transformers import Trainer

    class DiffusionTrainer(Trainer):
        """transformers' Trainer with the masked-diffusion loss; the loss is the exact mean of the rows' losses
        over the global batch (all micro-batches and processes)."""

        loss_is_scaled_for_ga = True  # compute_loss divides by the global row count itself

        def __init__(self, *args, diffusion: DiffusionConfig, mask_id: int, **kwargs):
            self.diffusion, self.mask_id = diffusion, mask_id
            super().__init__(*args, **kwargs)

        def _get_num_items_in_batch(self, batch_samples, device):
            n = torch.tensor(sum(len(b["input_ids"]) for b in batch_samples), device=device)
            if self.args.world_size > 1:
                n = self.accelerator.gather(n).sum()
            return n

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask, t, answer = build_mask(inputs, self.diffusion, self.args.seed, self.state.global_step)
            ids = inputs["input_ids"]
            logits = _logits(model, ids.masked_fill(mask, self.mask_id), None)
            total = row_losses(logits, ids, mask, t, answer, self.diffusion.mask_schedule).sum()
            if num_items_in_batch is None:
                loss = total / ids.shape[0]
            else:  # DDP averages gradients over processes: scale so the result is the global mean
                loss = total / num_items_in_batch * self.accelerator.num_processes
            loss = loss.float()
            return (loss, {"logits": logits}) if return_outputs else loss

    return DiffusionTrainer


def make_trainer(model: Any, data: Any, cfg: Any, dcfg: DiffusionConfig, output_dir: str | Path, *,
                 progress: bool = True, callbacks: list | None = None) -> Any:
    """The diffusion counterpart of `t3s.train.make_trainer` (same TrainConfig, same precision rules)."""
    from transformers import TrainingArguments

    from t3s.train import training_arguments

    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout,
                                                 target_modules=cfg.lora_target_modules))
    args = TrainingArguments(**training_arguments(cfg, output_dir, progress))
    DiffusionTrainer = trainer_class()
    tok = data.tokenizer
    trainer = DiffusionTrainer(
        model=model, args=args, train_dataset=data.dataset, processing_class=tok,
        data_collator=Collator(tok.eos_token_id), callbacks=callbacks, diffusion=dcfg,
        mask_id=mask_token_id(model, tok, dcfg.mask_token_id),
    )
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


# ----------------------------------------------------------------------------------------------- selector


def response_spans(row: Any, tokenizer: Any, rcfg: Any, n_tokens: int) -> list[tuple[int, int] | None]:
    """Character span of each response token within the row's response text (None: no characters of it, e.g.
    EOS or an end-of-turn marker)."""
    from t3s.data import render_prompt, render_row, uses_template

    template = uses_template(tokenizer, rcfg)
    _, response_ids = render_row(row, tokenizer, rcfg, template)
    if template:
        _, prefix = render_prompt(row, tokenizer, rcfg, template)
        full = tokenizer.apply_chat_template(
            [*_msgs(row, rcfg), {"role": "assistant", "content": row.response}], tokenize=False,
            **rcfg.template_kwargs)
        text = full[len(prefix):]
    else:
        text = row.response
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise T3SError(f"{row.where}: the tokenizer gives no character offsets ({e}); a selector with another "
                       "tokenizer needs a fast tokenizer on both sides") from None
    if list(enc["input_ids"]) != list(response_ids[: len(enc["input_ids"])]):
        raise T3SError(f"{row.where}: re-tokenizing the response with offsets gives other tokens; cannot project")
    shift = text.find(row.response)
    if shift < 0:
        raise T3SError(f"{row.where}: the rendered response does not contain the response text; cannot project")
    spans: list[tuple[int, int] | None] = []
    for s, e in enc["offset_mapping"]:
        s, e = max(s - shift, 0), min(e - shift, len(row.response))
        spans.append((s, e) if e > s else None)
    spans += [None] * (len(response_ids) - len(spans))  # EOS appended without a template
    return spans[:n_tokens]


def _msgs(row: Any, rcfg: Any) -> list[dict[str, str]]:
    from t3s.data import _messages

    return _messages(row, rcfg)


def project_row(delta: np.ndarray, src: list[tuple[int, int] | None], dst: list[tuple[int, int] | None]
                ) -> np.ndarray:
    """Δc on the destination tokens: the minimum Δc of the source tokens whose characters overlap (NaN when none
    do). The minimum makes a student token yet-to-learn as soon as any part of it is."""
    out = np.full(len(dst), np.nan, dtype=np.float32)
    spans = [(s[0], s[1], d) for s, d in zip(src, delta) if s is not None]
    for j, sp in enumerate(dst):
        if sp is None:
            continue
        vals = [d for s, e, d in spans if s < sp[1] and sp[0] < e]
        if vals:
            out[j] = min(vals)
    return out


def projector(rows: list, student_tok: Any, selector_tok: Any, rcfg: Any):
    """The `project` argument of `t3s.select.select_forced` for a student whose tokenizer differs from the
    selector's: Δc moves onto the student's response tokens through character offsets (`project_row`)."""
    from t3s.data import fingerprints, render_rows

    by_id = {r.id: r for r in rows}

    def project(base: Any) -> tuple[list[np.ndarray], list[list[int]], dict[str, str], int]:
        unknown = [i for i in base.ids if i not in by_id]
        if unknown:
            raise T3SError(f"the selector's scores hold row '{unknown[0]}', which is not in the training data")
        examples, _ = render_rows([by_id[i] for i in base.ids], student_tok, rcfg)
        if [e.id for e in examples] != list(base.ids):
            raise T3SError("the student's rendering drops rows the selector kept (max_length); use one max_length "
                           "that fits both tokenizers or overlong=truncate")
        deltas, missing = [], 0
        for e, d in zip(examples, base.delta):
            r = by_id[e.id]
            p = project_row(d, response_spans(r, selector_tok, rcfg, len(d)),
                            response_spans(r, student_tok, rcfg, len(e.response_ids)))
            missing += int(np.isnan(p).sum())
            deltas.append(p)
        return deltas, [e.response_ids for e in examples], fingerprints(rows, student_tok, rcfg), missing

    return project


# ----------------------------------------------------------------------------------------------- sampler


def _transfer_counts(n_masked: int, steps: int) -> list[int]:
    """Tokens committed at each step of a block: as even as possible, the remainder at the first steps."""
    base, rem = divmod(n_masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


@torch.no_grad()
def sample(model: Any, tok: Any, prompts: list[list[int]], gcfg: Any, dcfg: DiffusionConfig, precision: Any,
           progress: bool = True, desc: str = "sample") -> list[list[Any]]:
    """k samples per prompt with the reverse process described in the module docstring. Same output as
    `t3s.evaluate.generate`: per prompt a list of Generation(token_ids before the first EOS, text, truncated)."""
    from tqdm.auto import tqdm

    from t3s.evaluate import Generation, eos_ids

    gen_len, block, steps = dcfg.canvas(gcfg.max_new_tokens)
    per_block = steps // (gen_len // block)
    mask_id = mask_token_id(model, tok, dcfg.mask_token_id)
    stops = eos_ids(model, tok) or [tok.eos_token_id]
    eos, pad = stops[0], (tok.pad_token_id if tok.pad_token_id is not None else stops[0])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    jobs = [(i, j) for i in range(len(prompts)) for j in range(gcfg.k)]
    jobs.sort(key=lambda x: -len(prompts[x[0]]))
    # Several processes: whole batches are dealt round-robin, so each batch (rows, padding, seed) is exactly the
    # one a single process samples and the gathered outputs are the same. With sharded parameters (ZeRO-3, FSDP)
    # every forward is a collective: every process then samples every batch.
    batches = list(enumerate(range(0, len(jobs), gcfg.batch_size)))
    shard = dist.launched() and not dist.params_sharded(model)
    mine = batches[dist.rank():: dist.world()] if shard else batches
    done: dict[int, Any] = {}  # job index -> Generation
    bar = tqdm(total=sum(len(jobs[s: s + gcfg.batch_size]) for _, s in mine), unit="sample", desc=desc,
               disable=not progress or not dist.is_main(), dynamic_ncols=True)
    t0, n_new = time.perf_counter(), 0
    for b, start in mine:
        batch = jobs[start: start + gcfg.batch_size]
        P = max(len(prompts[i]) for i, _ in batch)
        x = torch.full((len(batch), P + gen_len), mask_id, dtype=torch.long)
        att = torch.ones_like(x)
        for r, (i, _) in enumerate(batch):  # left-padded prompts, attention off on the padding
            x[r, : P - len(prompts[i])] = pad
            att[r, : P - len(prompts[i])] = 0
            x[r, P - len(prompts[i]): P] = torch.tensor(prompts[i])
        x, att = x.to(device), att.to(device)
        g = torch.Generator().manual_seed(gcfg.seed * 100_003 + b)
        for blk in range(gen_len // block):
            lo, hi = P + blk * block, P + (blk + 1) * block
            counts = _transfer_counts(block, per_block)
            for n_commit in counts:
                masked = x[:, lo:hi] == mask_id  # only the current block is committed: look at it alone
                k = min(n_commit, int(masked.sum(1).max()))
                if k == 0:
                    continue
                with precision.context():
                    logits = _logits(model, x, att)[:, lo:hi].float()
                if gcfg.temperature > 0:  # Gumbel-max: a draw from softmax(logits / T)
                    u = torch.rand(logits.shape, generator=g).clamp_(1e-10, 1 - 1e-10).to(device)
                    pred = (logits - gcfg.temperature * torch.log(-torch.log(u))).argmax(-1)
                else:
                    pred = logits.argmax(-1)
                if dcfg.remasking == "low_confidence":
                    conf = torch.softmax(logits, -1).gather(-1, pred[..., None])[..., 0]
                else:
                    conf = torch.rand(masked.shape, generator=g).to(device)
                conf = torch.where(masked, conf, torch.tensor(-np.inf, device=device))
                take = torch.zeros_like(masked).scatter_(1, conf.topk(k, dim=-1).indices, True) & masked
                x[:, lo:hi] = torch.where(take, pred, x[:, lo:hi])
            if _finished(x[:, P:hi], eos):
                x[:, hi:] = eos  # every row has ended: the rest of the canvas is EOS
                break
        for r in range(len(batch)):
            seq = x[r, P:].tolist()
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


def _finished(done: torch.Tensor, eos: int) -> bool:
    """Every row of the committed canvas has an EOS followed only by EOS."""
    is_eos = done == eos
    has = is_eos.any(1)
    first = torch.where(has, is_eos.float().argmax(1), torch.full_like(has, done.shape[1], dtype=torch.long))
    after = torch.arange(done.shape[1], device=done.device)[None, :] >= first[:, None]
    return bool(has.all() and (is_eos | ~after).all())
