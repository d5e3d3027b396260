"""Stage 6: generate answers, extract the final answer, check it with math-verify, and report.

Extraction order: the last `\\boxed{...}` (nested braces allowed), then the last "the answer is ...", then a
configurable fallback (`last_number` or `none`). Checking uses math-verify on both sides wrapped as LaTeX math,
so `\\dfrac{1}{2}`, `0.5`, `1/2`, `50\\%`, `1,000` and intervals compare as mathematicians expect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from t3s import T3SError, __version__, dist
from t3s.artifacts import atomic_dir, write_json
from t3s.fields import check_fields

FALLBACKS = ("last_number", "none")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:|=)\s*:?\s*(.+?)\s*(?:\.\s|\.$|\n|$)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces; None if there is none."""
    for m in reversed(list(_BOX.finditer(text))):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1 : j].strip()
                j += 1
            continue  # unbalanced: try an earlier one
        tail = re.match(r"([^\s$]+)", text[i:])  # "\boxed 5"
        if tail:
            return tail.group(1)
    return None


def _clean(ans: str) -> str:
    ans = ans.strip().strip("$").strip()
    ans = re.sub(r"^\\\(|\\\)$", "", ans).strip()
    return ans.rstrip(".").strip()


def extract_answer(text: str, fallback: str = "last_number") -> str | None:
    if fallback not in FALLBACKS:
        raise T3SError(f"answer fallback must be one of {FALLBACKS}, got '{fallback}'")
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hits = _ANSWER_IS.findall(text)
    if hits and _clean(hits[-1]):
        inner = last_boxed(hits[-1])
        return inner or _clean(hits[-1])
    if fallback == "last_number":
        nums = _NUMBER.findall(text)
        if nums:
            return nums[-1]
    return None


def is_correct(pred: str | None, gold: str) -> bool:
    """math-verify equivalence of an extracted answer and the gold answer. In the main thread math-verify's
    signal-based timeouts protect against pathological inputs; elsewhere (threads) they are disabled, since
    `signal.alarm` only works in the main thread."""
    if pred is None:
        return False
    from math_verify import parse, verify

    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    if not main:
        logging.getLogger("math_verify").setLevel(logging.ERROR)

    def p(x: str):
        x = x.strip()
        return parse(x if x.startswith("$") else f"${x}$", parsing_timeout=timeout)

    try:
        g, a = p(gold), p(pred)
        if verify(g, a, timeout_seconds=timeout):
            return True
    except Exception:
        pass
    # Text answers (names, words): compare normalised strings.
    norm = lambda s: re.sub(r"\\text\{([^}]*)\}", r"\1", s).strip().strip("$").strip().lower()  # noqa: E731
    return norm(pred) == norm(gold)


# ----------------------------------------------------------------------------------------------- generation


@dataclass
class GenConfig:
    """Sampling settings for evaluation and the probe."""

    temperature: float = field(default=0.0, metadata={"help": "0 = greedy", "ge": 0})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling", "gt": 0, "le": 1})
    max_new_tokens: int = field(default=512, metadata={"help": "generation budget per response"})
    k: int = field(default=1, metadata={"help": "samples per prompt (avg@k, pass@k)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    batch_size: int = field(default=32, metadata={"help": "prompts per generate() call"})
    fallback: str = field(default="last_number", metadata={"help": "answer fallback: last_number | none"})
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16 (GPU only)"})
    backend: str = field(default="hf", metadata={"help": "hf (transformers generate) | vllm (GPU, optional)"})
    model_defaults: bool = field(default=False, metadata={
        "help": "false: generate with exactly these settings on every backend (no top-k, min-p or repetition "
                "penalty); true: also apply the top_k, min_p and repetition_penalty of the model's "
                "generation_config.json"})
    vllm: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "vLLM engine arguments, e.g. {tensor_parallel_size: 8, gpu_memory_utilization: 0.9, max_model_len: 40000}"})

    def __post_init__(self) -> None:
        check_fields(self, "eval")
        if self.fallback not in FALLBACKS:
            raise T3SError(f"fallback must be one of {FALLBACKS}, got '{self.fallback}'")
        if self.backend not in ("hf", "vllm"):
            raise T3SError(f"backend must be hf or vllm, got '{self.backend}'")
        if self.k < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise T3SError("k, max_new_tokens and batch_size must be >= 1")
        if self.k > 1 and self.temperature == 0:
            raise T3SError("k > 1 samples need temperature > 0 (greedy samples would all be the same)")


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
    out = {"do_sample": sample, "temperature": cfg.temperature if sample else 0.0,
           "top_p": cfg.top_p if sample else 1.0, **MODEL_SAMPLING_KEYS}
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
        **{k: getattr(original, k) for k in TOKEN_ID_KEYS if getattr(original, k, None) is not None})
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
def generate(model: Any, tok: Any, prompts: list[list[int]], cfg: GenConfig, precision: Any,
             progress: bool = True, desc: str = "generate", row_seeds: list[int] | None = None
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
        max_new_tokens=cfg.max_new_tokens, do_sample=sample,
        temperature=settings["temperature"] if sample else None, top_p=settings["top_p"] if sample else None,
        top_k=settings["top_k"] if sample else None, min_p=(settings["min_p"] or None) if sample else None,
        repetition_penalty=settings["repetition_penalty"],
        num_return_sequences=cfg.k, eos_token_id=stops, pad_token_id=pad, use_cache=True,
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
    bar = tqdm(total=sum(len(order[s : s + cfg.batch_size]) for _, s in mine), unit="prompt", desc=desc,
               disable=not progress or not dist.is_main(), dynamic_ncols=True)
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
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), precision.context(), \
                own_generation_config(model):  # exactly the settings above, nothing from the model's file
            torch.manual_seed(cfg.seed * 100_003 + b)
            extra = {"logits_processor": LogitsProcessorList(
                [RowSampler([row_seeds[i] for i in idx], cfg.temperature, cfg.top_p, device)])} if per_row else {}
            seqs = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), generation_config=gcfg,
                                  **extra, **sync)
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
                model.generate(input_ids=torch.tensor([prompts[order[0]]], device=device), generation_config=gcfg,
                               **sync)
    if dist.launched():
        out = dist.gather_ordered({i: g for i, g in enumerate(out) if g is not None}, len(prompts))
    model.train(was_training)
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- grading


@dataclass
class Sample:
    id: str
    sample: int
    response: str
    extracted: str | None
    correct: bool
    tokens: int | None
    truncated: bool


def grade(rows: list[tuple[str, str, str, int | None, bool]], fallback: str, sample_idx: list[int] | None = None
          ) -> list[Sample]:
    """rows: (id, response, gold, tokens, truncated)."""
    out = []
    for n, (rid, resp, gold, ntok, trunc) in enumerate(rows):
        ans = extract_answer(resp, fallback)
        out.append(Sample(rid, sample_idx[n] if sample_idx else 0, resp, ans, is_correct(ans, gold), ntok, trunc))
    return out


def metrics(samples: list[Sample]) -> dict[str, Any]:
    by_id: dict[str, list[Sample]] = {}
    for s in samples:
        by_id.setdefault(s.id, []).append(s)
    toks = [s.tokens for s in samples if s.tokens is not None]
    k = max(len(v) for v in by_id.values())
    return {
        "prompts": len(by_id),
        "samples": len(samples),
        "k": k,
        "accuracy": sum(s.correct for s in samples) / len(samples),  # avg@k
        "pass_at_k": sum(any(s.correct for s in v) for v in by_id.values()) / len(by_id),
        "mean_tokens": statistics.fmean(toks) if toks else None,
        "median_tokens": statistics.median(toks) if toks else None,
        "no_answer_rate": sum(s.extracted is None for s in samples) / len(samples),
        "truncated_rate": sum(s.truncated for s in samples) / len(samples),
    }


def evaluate_model(model: Any, tok: Any, rows: list, rcfg: Any, gcfg: GenConfig, precision: Any,
                   progress: bool = True, desc: str = "eval", diffusion: Any = None,
                   generator: Any = None) -> list[Sample]:
    """Generate for every row and grade. `diffusion` (a t3s.diffusion.DiffusionConfig): the model is a
    masked-diffusion student and generates with the diffusion sampler instead of `generate`. `generator`: another
    backend with `generate`'s outputs (t3s.vllm_backend), called as generator(prompts, gcfg, progress, desc)."""
    from t3s.data import render_prompt, uses_template

    if model is not None:  # NaN weights would generate garbage that grades as a plain 0%
        from t3s.models import check_finite_weights

        check_finite_weights(model, f"{desc}: the model", "its outputs would be garbage (a diverged training run?)")
    template = uses_template(tok, rcfg)
    prompts = [render_prompt(r, tok, rcfg, template)[0] for r in rows]
    if generator is not None:
        gens = generator(prompts, gcfg, progress, desc)
    elif diffusion is not None:
        from t3s.diffusion import sample

        gens = sample(model, tok, prompts, gcfg, diffusion, precision, progress, desc)
    else:
        gens = generate(model, tok, prompts, gcfg, precision, progress, desc)
    flat, idx = [], []
    for r, g in zip(rows, gens):
        for j, x in enumerate(g):
            flat.append((r.id, x.text, r.answer, len(x.token_ids), x.truncated))
            idx.append(j)
    return grade(flat, gcfg.fallback, idx)


def write_eval(out: str | Path, samples: list[Sample], meta: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    m = {"kind": "t3s-eval", "t3s_version": __version__, **meta, "metrics": metrics(samples)}
    with atomic_dir(out, overwrite) as tmp:
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
        write_json(tmp / "metrics.json", m)
    return m


def format_metrics(m: dict[str, Any]) -> str:
    tok = "" if m["mean_tokens"] is None else f", tokens mean {m['mean_tokens']:.1f} / median {m['median_tokens']:.0f}"
    return (f"accuracy (avg@{m['k']}) {100 * m['accuracy']:.2f}%, pass@{m['k']} {100 * m['pass_at_k']:.2f}% "
            f"over {m['prompts']} prompts{tok}, no answer {100 * m['no_answer_rate']:.1f}%, "
            f"cut off {100 * m['truncated_rate']:.1f}%")


def load_responses(path: str | Path) -> list[tuple[str, str, str, int | None, bool, int]]:
    """Rows of a pre-generated responses file: `response` and `answer` required, `id`, `sample` optional."""
    from t3s.data import raw_rows

    out, count = [], {}
    for where, raw in raw_rows(Path(path), None):
        if not isinstance(raw, dict):
            raise T3SError(f"{where}: a row must be a JSON object")
        for key in ("response", "answer"):
            if key not in raw or raw[key] is None:
                raise T3SError(f"{where}: missing field '{key}'")
        if not isinstance(raw["response"], str):
            raise T3SError(f"{where}: field 'response' must be a string")
        if isinstance(raw["answer"], bool) or not isinstance(raw["answer"], (str, int, float)):
            raise T3SError(f"{where}: field 'answer' must be a string or a number")
        rid = str(raw.get("id", where))
        j = count[rid] = count.get(rid, -1) + 1
        ntok = raw.get("tokens") if isinstance(raw.get("tokens"), int) else None
        out.append((rid, raw["response"], str(raw["answer"]), ntok, bool(raw.get("truncated", False)), j))
    if not out:
        raise T3SError(f"{path}: no rows")
    return out
