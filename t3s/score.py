"""Stage 2: teacher-forced confidence c_t = log p(y_t | y_<t, x) of every response token.

The backbone runs once per batch; the LM head and the log-softmax then run only on the positions that predict
response tokens, `chunk_tokens` positions at a time, so full-vocabulary fp32 logits never exist for a whole
batch. Rows are grouped by length (longest first, under a token budget) so little compute goes to padding.
On CPU the defaults are sized for caches and memory (measured with bench/, see BENCHMARKS.md): the backbone sees
at most 2048 tokens at a time (larger batches were no faster there, and their activations added up to 1 GB of
peak RSS for a 135M-parameter model), and one chunk's fp32 logits are about cache-sized (128 positions for a 49k
vocabulary), so the log-softmax reads them from cache instead of memory.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t3s import T3SError, __version__, dist
from t3s.artifacts import atomic_dir, read_json, read_table, write_json
from t3s.config import RenderConfig, ScoreConfig
from t3s.data import Example
from t3s.models import Precision

SCORES_FILE = "scores.parquet"
META_FILE = "meta.json"


def length_batches(lengths: list[int], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices grouped longest-first so that (rows x longest row) stays under `batch_tokens` (a single longer row
    still gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and ((len(cur) + 1) * lengths[cur[0]] > batch_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _head_transform(model: Any):
    """Post-projection logit transforms some architectures apply (scale, soft-capping); None when there is none."""
    cfg = model.config.get_text_config()
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    if scale is None and not cap:
        return None

    def f(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return f


# fp32 logits per LM-head chunk on CPU (24 MiB): small enough to stay in a server CPU's cache between the matmul
# and the log-softmax; larger chunks were slower in bench/ (the log-softmax then streams from memory).
CPU_CHUNK_LOGITS = 128 * 49152


def default_chunk_tokens(vocab_size: int, device: str) -> int:
    """Positions per LM-head chunk when `chunk_tokens` is 0 (auto): cache-sized on CPU, 1024 on GPU."""
    if device != "cpu":
        return 1024
    return max(16, min(1024, CPU_CHUNK_LOGITS // max(vocab_size, 1)))


def default_batch_tokens(device: str) -> int:
    """Padded tokens per backbone batch when `batch_tokens` is 0 (auto): 2048 on CPU, 16384 on GPU."""
    return 2048 if device == "cpu" else 16384


@torch.no_grad()
def response_logprobs(
    model: Any,
    examples: list[Example],
    precision: Precision,
    *,
    batch_tokens: int = 0,
    max_batch: int = 64,
    chunk_tokens: int = 0,
    progress: bool = True,
    pad_id: int = 0,
) -> list[np.ndarray]:
    """Per example, float32 log-probabilities of its response tokens (in order). `batch_tokens` and
    `chunk_tokens` 0: auto (see default_batch_tokens, default_chunk_tokens)."""
    model.eval()
    if hasattr(model, "get_base_model"):  # a PEFT model (the probe with LoRA): its LoRA layers stay active
        model = model.get_base_model()
    backbone, head, transform = model.base_model, model.get_output_embeddings(), _head_transform(model)
    if head is None or backbone is model:
        raise T3SError(f"{type(model).__name__} has no separate backbone and LM head; it cannot be scored")
    device = next(model.parameters()).device
    if chunk_tokens <= 0:
        chunk_tokens = default_chunk_tokens(model.config.get_text_config().vocab_size, device.type)
    if batch_tokens <= 0:
        batch_tokens = default_batch_tokens(device.type)
    with _cast_once(backbone, head.weight):
        return _score_batches(
            backbone,
            head,
            transform,
            examples,
            precision,
            device,
            batch_tokens,
            max_batch,
            chunk_tokens,
            progress,
            pad_id,
        )


@contextlib.contextmanager
def _cast_once(backbone: Any, head_weight: torch.Tensor):
    """Autocast keeps a low-precision copy of each fp32 weight that requires grad until its context exits, and
    recasts the others at every use. Scoring needs no gradients, so choose by use: the backbone uses each weight
    once per forward, so a copy saves nothing and costs memory (0.2 GB for a 135M-parameter model): its weights
    stop requiring grad for the duration. The LM head's weight is used by every chunk of a batch, so it is made
    to require grad (a frozen head, as under LoRA, would be recast per chunk) and is cast once per batch. Every
    flag is restored after (the probe scores its live training model)."""
    flips = [q for q in backbone.parameters() if q is not head_weight and q.requires_grad]
    if not head_weight.requires_grad and head_weight.is_leaf and head_weight.is_floating_point():
        flips.append(head_weight)  # (a quantized head's integer weight cannot require grad: left as it is)
    try:
        for q in flips:
            q.requires_grad_(not q.requires_grad)
        yield
    finally:
        for q in flips:
            q.requires_grad_(not q.requires_grad)


def _score_batches(
    backbone, head, transform, examples, precision, device, batch_tokens, max_batch, chunk_tokens, progress, pad_id
) -> list[np.ndarray]:
    from tqdm.auto import tqdm

    out: list[np.ndarray | None] = [None] * len(examples)
    lengths = [len(e.input_ids) for e in examples]
    bar = tqdm(total=len(examples), unit="row", desc="score", disable=not progress, dynamic_ncols=True)
    t0, n_tok = time.perf_counter(), 0
    for idx in length_batches(lengths, batch_tokens, max_batch):
        L = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
        att = torch.zeros((len(idx), L), dtype=torch.long)
        rows, cols, targets = [], [], []
        for b, i in enumerate(idx):
            e = examples[i]
            n = len(e.input_ids)
            ids[b, :n] = torch.tensor(e.input_ids)
            att[b, :n] = 1
            # position p predicts token p + 1: response tokens prompt_len..n-1 come from positions prompt_len-1..n-2
            pos = torch.arange(e.prompt_len - 1, n - 1)
            rows.append(torch.full_like(pos, b))
            cols.append(pos)
            targets.append(torch.tensor(e.response_ids))
        ids, att = ids.to(device), att.to(device)
        with precision.context():
            hidden = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        h = hidden[torch.cat(rows).to(device), torch.cat(cols).to(device)]
        del hidden
        tgt = torch.cat(targets).to(device)
        lp = torch.empty(len(tgt), dtype=torch.float32, device=device)
        with precision.context():  # one autocast context: the head's weight is cast to bf16 once, not per chunk
            for s in range(0, len(tgt), chunk_tokens):
                logits = head(h[s : s + chunk_tokens])
                # fp32 log-softmax in one fused pass (it upcasts bf16 logits itself), then the target's entry
                if transform is None:
                    logp = torch.log_softmax(logits, -1, dtype=torch.float32)
                else:
                    logp = torch.log_softmax(transform(logits.float()), -1)
                lp[s : s + chunk_tokens] = logp.gather(1, tgt[s : s + chunk_tokens, None])[:, 0]
                del logits, logp
        lp = lp.cpu().numpy()
        start = 0
        for i in idx:
            n = len(examples[i].response_ids)
            out[i] = lp[start : start + n].copy()
            start += n
        n_tok += int(att.sum())
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{n_tok / max(time.perf_counter() - t0, 1e-9):.0f}")
    bar.close()
    return out  # type: ignore[return-value]


@torch.no_grad()
def check_against_forward(model: Any, example: Example, logprobs: np.ndarray, precision: Precision) -> float:
    """Max |difference| between the fast scorer and the model's own forward (full logits) on one example."""
    device = next(model.parameters()).device
    ids = torch.tensor([example.input_ids], device=device)
    with precision.context():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    ref = torch.log_softmax(logits[example.prompt_len - 1 : -1], -1)
    ref = ref.gather(1, torch.tensor(example.response_ids, device=device)[:, None])[:, 0].cpu().numpy()
    return float(np.abs(ref - logprobs).max())


# ----------------------------------------------------------------------------------------------- artifacts


@dataclass
class ScoreSet:
    meta: dict[str, Any]
    ids: list[str]
    prompt_lens: list[int]
    response_ids: list[np.ndarray]
    logprobs: list[np.ndarray]

    @property
    def path(self) -> str:
        return self.meta.get("path", "")


def write_scores(out: str | Path, examples: list[Example], logprobs: list[np.ndarray], meta: dict, overwrite: bool):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([e.id for e in examples], pa.string()),
            "prompt_len": pa.array([e.prompt_len for e in examples], pa.int32()),
            "response_ids": pa.array([e.response_ids for e in examples], pa.list_(pa.int32())),
            "logprob": pa.array([lp.tolist() for lp in logprobs], pa.list_(pa.float32())),
        }
    )
    all_lp = np.concatenate(logprobs)
    meta = {
        "kind": "t3s-scores",
        "t3s_version": __version__,
        **meta,
        "rows": len(examples),
        "tokens": int(all_lp.size),
        "mean_logprob": float(all_lp.mean()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_dir(out, overwrite) as tmp:
        pq.write_table(table, tmp / SCORES_FILE)
        write_json(tmp / META_FILE, meta)
    return meta


def load_scores(path: str | Path) -> ScoreSet:
    path = Path(path)
    if not (path / META_FILE).exists() or not (path / SCORES_FILE).exists():
        raise T3SError(f"{path}: not a t3s score directory (expected {META_FILE} and {SCORES_FILE})")
    meta = read_json(path / META_FILE)
    if meta.get("kind") != "t3s-scores":
        raise T3SError(f"{path}/{META_FILE}: not a t3s score set")
    t = read_table(path / SCORES_FILE, ("id", "prompt_len", "response_ids", "logprob"), "`t3s score` that wrote it")
    meta["path"] = str(path)
    return ScoreSet(
        meta=meta,
        ids=t.column("id").to_pylist(),
        prompt_lens=t.column("prompt_len").to_pylist(),
        response_ids=[np.asarray(x, dtype=np.int64) for x in t.column("response_ids").to_pylist()],
        logprobs=[np.asarray(x, dtype=np.float32) for x in t.column("logprob").to_pylist()],
    )


def scoring_precision(dtype: str = "auto", device: str | None = None) -> Any:
    """The precision of `t3s score` (pure given the device). `auto` is float32 on every device: a token's anchor
    status is the sign of Δc = c(θ_b) − c(θ_0), and bf16 rounding moves a log-probability by more than many Δc.
    Measured on SmolLM2-135M with θ_b four steps at lr 1e-5 (BENCHMARKS.md, section 5): against a float64
    reference, bf16 autocast scoring gives 4.7% of the tokens the other anchor status (bf16 weights 5.5%), float32
    0.01%. `bfloat16` (2.9x faster there on a CPU with bf16 hardware, and faster on GPUs) stays available where
    that noise is acceptable."""
    from t3s.models import resolve_precision

    return resolve_precision("float32" if dtype == "auto" else dtype, device)


def check_finite_scores(examples: list[Example], logprobs: list[np.ndarray], model: str) -> None:
    """Refuse scores holding NaN or ±inf (a model with broken weights): a selection made from them is garbage."""
    for e, lp in zip(examples, logprobs):
        bad = np.flatnonzero(~np.isfinite(lp))
        if bad.size:
            n = sum(int((~np.isfinite(x)).sum()) for x in logprobs)
            raise T3SError(
                f"{model}: non-finite log-probabilities ({n} tokens; first: row '{e.id}', response "
                f"token {int(bad[0])}: {lp[bad[0]]}); the model's weights or precision are broken, "
                "nothing was written"
            )


# Max |fast scorer − model's own forward| accepted by the self-check, by precision.
CHECK_TOL = {"float32": 1e-3, "other": 0.25}


def run_score(
    model_path: str,
    data_path: str,
    out: str | Path,
    rcfg: RenderConfig,
    scfg: ScoreConfig,
    *,
    split: str | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """`t3s score`: render the rows, score every response token, self-check one row, write the score set."""
    import sys

    from t3s.artifacts import check_can_write
    from t3s.data import fingerprints, load_rows, render_rows
    from t3s.models import (
        describe,
        device_info,
        load_causal_lm,
        load_tokenizer,
        model_fingerprint,
        model_step,
        rounding_note,
        stored_dtype,
    )

    check_can_write(out, overwrite)
    dist.state()  # under torchrun / accelerate launch: join the process group, pick this process's GPU
    progress = progress and dist.is_main()
    precision = scoring_precision(scfg.dtype)
    tok = load_tokenizer(model_path, trust_remote_code)
    rows = load_rows(data_path, split)
    examples, report = render_rows(rows, tok, rcfg)
    if progress:
        print(f"data: {report}", file=sys.stderr)
        print(
            f"scoring {describe(precision)}"
            + (
                ""
                if scfg.dtype != "auto"
                else "; score.dtype=auto is float32, so that rounding does not decide the sign of small Δc"
            ),
            file=sys.stderr,
        )
    rounding = rounding_note(model_path)  # a 16-bit save of fp32 master weights: warned, recorded
    if rounding and dist.is_main():
        print(f"warning: {rounding}", file=sys.stderr)
    model = load_causal_lm(model_path, precision, trust_remote_code)
    # several processes: each scores a share of the rows (balanced by length), gathered back in file order
    lps = dist.map_rows(
        lambda part: response_logprobs(
            model,
            part,
            precision,
            batch_tokens=scfg.batch_tokens,
            max_batch=scfg.max_batch,
            chunk_tokens=scfg.chunk_tokens,
            progress=progress,
            pad_id=tok.pad_token_id,
        ),
        examples,
        [len(e.input_ids) for e in examples],
    )
    check_finite_scores(examples, lps, model_path)
    check = None
    if scfg.check:  # every process checks the same row (cheap), so a failure stops all of them alike
        i = min(range(len(examples)), key=lambda j: len(examples[j].input_ids))
        check = check_against_forward(model, examples[i], lps[i], precision)
        tol = CHECK_TOL["float32" if precision.name == "float32" else "other"]
        if check > tol:
            raise T3SError(
                f"self-check failed: scores differ from {type(model).__name__}'s own forward by {check:.2e} "
                f"(> {tol}); this architecture's output head is not supported by the fast scorer"
            )
    return dist.on_main(
        lambda: write_scores(  # only the main process writes; the others wait for it
            out,
            examples,
            lps,
            {
                "model": str(model_path),
                "model_fingerprint": model_fingerprint(model_path),
                "model_step": model_step(model_path),
                "stored_dtype": stored_dtype(model_path),
                "rounding_warning": rounding,
                "data": str(data_path),
                "fingerprints": fingerprints(rows, tok, rcfg),
                "render_report": report.as_dict(),
                "precision": precision.name,
                "device": device_info(precision.device),
                "self_check_max_abs_diff": check,
            },
            overwrite,
        )
    )
