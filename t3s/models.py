"""Loading students, selectors and teachers, and choosing their numeric precision.

Precision is one of `auto`, `float32`, `bfloat16`, `float16`:
- `auto`: on CUDA, bf16 weights where supported (else fp16); on CPU, fp32 weights with bf16 autocast (about 2x
  faster than fp32 on recent CPUs).
- `bfloat16` on CPU means bf16 autocast over fp32 weights; on CUDA, bf16 weights.
- `float16` is refused on CPU: PyTorch's CPU fp16 kernels run at about 1 GFLOP/s.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t3s import T3SError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Precision:
    weights: torch.dtype  # dtype the parameters are loaded in
    autocast: torch.dtype | None  # autocast dtype for forward passes, or None
    device: str

    @property
    def name(self) -> str:
        a = f"+autocast-{str(self.autocast).removeprefix('torch.')}" if self.autocast else ""
        return f"{str(self.weights).removeprefix('torch.')}{a}"

    def context(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.autocast)


def training_precision(p: Precision) -> Precision:
    """What to load for training: fp16 training keeps fp32 master weights (the Trainer's fp16 AMP then runs the
    forward in fp16); loading fp16 weights would make the gradient scaler fail."""
    return Precision(torch.float32, None, p.device) if p.weights == torch.float16 else p


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(dtype: str = "auto", device: str | None = None) -> Precision:
    device = device or default_device()
    if dtype not in PRECISIONS:
        raise T3SError(f"dtype must be one of {', '.join(PRECISIONS)}, got '{dtype}'")
    if device == "cpu":
        if dtype == "float16":
            raise T3SError("float16 is not supported on CPU (PyTorch runs it at ~1 GFLOP/s); use bfloat16 or float32")
        if dtype == "float32":
            return Precision(torch.float32, None, device)
        return Precision(torch.float32, torch.bfloat16, device)
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return Precision(getattr(torch, dtype), None, device)


def resolve_model_path(path: str | Path) -> str:
    """Accept a model directory, a `t3s train` output directory (its `model/`), or a hub id."""
    p = Path(path)
    if (p / "model" / "config.json").exists() and not (p / "config.json").exists():
        return str(p / "model")
    if p.exists() and not (p / "config.json").exists():
        raise T3SError(f"{p}: not a Hugging Face model directory (no config.json)")
    return str(path)


def _hub_kwargs(trust_remote_code: bool) -> dict[str, Any]:
    # transformers and huggingface_hub honour HF_HUB_OFFLINE themselves; local_files_only makes the intent explicit.
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return {"trust_remote_code": trust_remote_code, "local_files_only": offline}


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, **_hub_kwargs(trust_remote_code))
    except OSError as e:
        raise T3SError(f"cannot load a tokenizer from '{path}': {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, precision: Precision, trust_remote_code: bool = False, place: bool = True) -> Any:
    """`place=False` leaves the weights where loading put them: for training on several processes, where the
    Trainer (DDP) or accelerate (DeepSpeed, FSDP, whose low-RAM loading leaves them on the meta device on all
    but one process) moves them."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=precision.weights, **_hub_kwargs(trust_remote_code))
    except OSError as e:
        raise T3SError(f"cannot load a causal LM from '{path}': {e}") from None
    return model.to(precision.device) if place else model


def model_fingerprint(path: str | Path) -> str:
    from t3s.artifacts import fingerprint_model_dir, sha256_json

    p = Path(resolve_model_path(path))
    if p.is_dir():
        return fingerprint_model_dir(p)
    return sha256_json({"hub_id": str(path)})


def model_step(path: str | Path) -> int | None:
    """The training step of a Trainer checkpoint (from trainer_state.json or t3s's own record), if known."""
    import json

    p = Path(resolve_model_path(path))
    for name in ("trainer_state.json", "t3s_step.json"):
        f = p / name
        if f.exists():
            with contextlib.suppress(Exception):
                return int(json.loads(f.read_text())["global_step"])
    return None
