"""Loading students, selectors and teachers, and choosing their numeric precision.

Every precision decision is made by the pure functions here (`resolve_precision` for inference, `training_plan`
for training), so it can be tested on any machine.

`dtype` is one of `auto`, `float32`, `bfloat16`, `float16`:
- Inference (score, generation): on CUDA `auto` loads bf16 weights (fp16 where bf16 is unsupported). On a CPU,
  `auto` means bf16 autocast over fp32 weights only where the CPU executes bf16 fast (AVX512-BF16 or AMX; see
  `cpu_bf16_fast`), else plain fp32: on AVX2-only CPUs bf16 matmuls run at about 1 GFLOP/s against 70-100 for
  fp32. `bfloat16` on a CPU always means bf16 autocast; `float16` is refused on a CPU (about 1 GFLOP/s).
- Training (`training_plan`): the weights the optimizer updates are fp32 master weights, with bf16 (or fp16)
  compute through autocast (the Trainer's `bf16=True` / `fp16=True` on fp32 weights; DeepSpeed and FSDP keep
  their own fp32 masters the same way). A bf16 weight cannot hold an update smaller than half its spacing (2^-9
  to 2^-8 of its magnitude): at the paper's lr of 1e-5 most AdamW updates to bf16 weights are lost, which would
  change the probe's trajectory, θ_b, every mode and RRT. Pure-bf16 training (bf16 weights updated in place) is
  an explicit opt-in (`train.pure_bf16`). Under LoRA the adapters and the frozen base are fp32 too, so that merging the
  adapters into the base (the probe's checkpoints, the trained model) keeps the small updates.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t3s import T3SError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Precision:
    """Inference precision: the dtype the weights are loaded in and the autocast dtype of forward passes."""

    weights: torch.dtype  # dtype the parameters are loaded in
    autocast: torch.dtype | None  # autocast dtype for forward passes, or None
    device: str

    @property
    def name(self) -> str:
        a = f"+autocast-{_dt(self.autocast)}" if self.autocast else ""
        return f"{_dt(self.weights)}{a}"

    def context(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.autocast)


def _dt(d: torch.dtype | None) -> str:
    return "none" if d is None else str(d).removeprefix("torch.")


@dataclass(frozen=True)
class TrainingPlan:
    """Who holds which dtype during training (decided by `training_plan`, a pure function)."""

    device: str
    load: torch.dtype  # dtype the model is loaded in (what the Trainer wraps)
    compute: torch.dtype  # dtype of the matmuls in forward and backward
    master: torch.dtype  # dtype of the weights the optimizer updates
    optimizer_state: torch.dtype  # dtype of AdamW's moments
    trainer_bf16: bool  # TrainingArguments.bf16: autocast (or DeepSpeed/FSDP mixed precision) in bf16
    trainer_fp16: bool  # TrainingArguments.fp16: fp16 autocast with a gradient scaler
    note: str = ""

    @property
    def name(self) -> str:
        return (
            f"weights {_dt(self.master)}, compute {_dt(self.compute)}, optimizer state {_dt(self.optimizer_state)}"
            + (f" ({self.note})" if self.note else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "load": _dt(self.load),
            "compute": _dt(self.compute),
            "master": _dt(self.master),
            "optimizer_state": _dt(self.optimizer_state),
            "trainer_bf16": self.trainer_bf16,
            "trainer_fp16": self.trainer_fp16,
            "note": self.note,
        }

    def inference(self) -> Precision:
        """How the model being trained is run for generation and scoring along the way (the probe)."""
        auto = self.compute if self.compute != self.load else None
        return Precision(self.load, auto, self.device)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------------- CPU bf16


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_decision(
    flags: set[str] | None, capability: str, onednn_isa: str | None, env: str | None, measure: Any = None
) -> tuple[bool, str]:
    """Whether bf16 compute is fast on this CPU, and why (pure: every input is given).

    flags: /proc/cpuinfo feature flags (None where unreadable); capability: torch's ATen CPU capability
    (`ATEN_CPU_CAPABILITY` lowers it); onednn_isa: `ONEDNN_MAX_CPU_ISA` (caps oneDNN's matmul kernels); env:
    `T3S_CPU_BF16` (1/0 forces the answer); measure: a function returning the fp32/bf16 matmul time ratio, used
    only where the flags cannot be read (macOS, ARM)."""
    if env is not None and env.strip().lower() in ("1", "true", "yes", "0", "false", "no"):
        on = env.strip().lower() in ("1", "true", "yes")
        return on, f"T3S_CPU_BF16={env.strip()}"
    if flags is not None and ("avx2" in flags or "avx" in flags or "sse2" in flags):  # x86
        hw = [f for f in BF16_FLAGS if f in flags]
        if not hw:
            return False, f"x86 CPU without AVX512-BF16 or AMX ({capability})"
        if capability not in ("AVX512",):
            return False, f"{'/'.join(hw)} present but PyTorch runs {capability} kernels"
        isa = (onednn_isa or "ALL").upper()
        if isa != "ALL" and not any(k in isa for k in ("BF16", "AMX", "AVX10")):
            return False, f"{'/'.join(hw)} present but ONEDNN_MAX_CPU_ISA={isa}"
        return True, "/".join(hw)
    if measure is None:
        return False, f"unknown CPU ({capability}); no measurement"
    ratio = measure()
    return ratio > 1.2, f"bf16 matmul {ratio:.2f}x the fp32 speed (measured)"


def _measure_bf16_ratio() -> float:
    """fp32 time / bf16 time of a small matmul (about 0.1 s on a CPU without bf16 hardware)."""
    a, b = torch.randn(128, 256), torch.randn(256, 256)

    def t(dtype: torch.dtype) -> float:
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        t0 = time.perf_counter()
        for _ in range(3):
            x @ y
        return time.perf_counter() - t0

    return t(torch.float32) / max(t(torch.bfloat16), 1e-9)


@functools.lru_cache(maxsize=None)
def _cpu_bf16_cached(env: str | None, isa: str | None) -> tuple[bool, str]:
    return bf16_decision(_cpu_flags(), torch.backends.cpu.get_cpu_capability(), isa, env, _measure_bf16_ratio)


def cpu_bf16_fast() -> tuple[bool, str]:
    """(fast, reason): whether this CPU executes bf16 matmuls fast (see `bf16_decision`)."""
    return _cpu_bf16_cached(os.environ.get("T3S_CPU_BF16"), os.environ.get("ONEDNN_MAX_CPU_ISA"))


def device_info(device: str | None = None) -> dict[str, Any]:
    """What artifacts record next to their precision: the device and, on a CPU, its bf16 capability."""
    device = device or default_device()
    if device == "cpu":
        fast, why = cpu_bf16_fast()
        return {
            "device": "cpu",
            "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16_fast": fast,
            "cpu_bf16_reason": why,
        }
    info: dict[str, Any] = {"device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(precision: "Precision | TrainingPlan") -> str:
    """One line for the logs: the precision chosen and, on a CPU, why bf16 was or was not used."""
    where = ""
    if precision.device == "cpu":
        fast, why = cpu_bf16_fast()
        where = f" (CPU {torch.backends.cpu.get_cpu_capability()}: bf16 {'fast' if fast else 'slow'}, {why})"
    return f"precision: {precision.name}{where}"


# ----------------------------------------------------------------------------------------------- decisions


def compute_dtype(dtype: str, device: str, cpu_bf16: bool | None = None, gpu_bf16: bool | None = None) -> str:
    """The dtype a setting computes in on a device (pure given `cpu_bf16` / `gpu_bf16`, else detected): `auto` is
    bf16 where the device runs it fast (a CPU with AVX512-BF16 / AMX, a GPU with bf16), else float32 on a CPU and
    float16 on a GPU; float16 is refused on a CPU."""
    if dtype not in PRECISIONS:
        raise T3SError(f"dtype must be one of {', '.join(PRECISIONS)}, got '{dtype}'")
    if device == "cpu":
        if dtype == "float16":
            raise T3SError("float16 is not supported on CPU (PyTorch runs it at ~1 GFLOP/s); use bfloat16 or float32")
        if dtype == "auto":
            return "bfloat16" if (cpu_bf16_fast()[0] if cpu_bf16 is None else cpu_bf16) else "float32"
    elif dtype == "auto":
        return "bfloat16" if (torch.cuda.is_bf16_supported() if gpu_bf16 is None else gpu_bf16) else "float16"
    return dtype


def resolve_precision(dtype: str = "auto", device: str | None = None, cpu_bf16: bool | None = None) -> Precision:
    """Inference precision: on a CPU fp32 weights with bf16 autocast or none; on a GPU weights in the dtype."""
    device = device or default_device()
    dtype = compute_dtype(dtype, device, cpu_bf16)
    if device == "cpu":
        return Precision(torch.float32, None if dtype == "float32" else torch.bfloat16, device)
    return Precision(getattr(torch, dtype), None, device)


def training_plan(
    dtype: str = "auto",
    device: str | None = None,
    *,
    pure_bf16: bool = False,
    lora: bool = False,
    cpu_bf16: bool | None = None,
    gpu_bf16: bool | None = None,
) -> TrainingPlan:
    """The precision plan of a training run (pure given `device`, `cpu_bf16` and `gpu_bf16`).

    - fp32 master weights and fp32 optimizer state by default, with compute in bf16 (autocast) where the device
      runs it fast, fp16 autocast on GPUs without bf16 (`dtype=float16`), else fp32.
    - `pure_bf16`: bf16 weights updated in place, bf16 optimizer state (half the memory; loses most updates
      smaller than about 2^-9 of a weight, e.g. at lr 1e-5).
    - `lora`: the adapters (created by PEFT in fp32) are the master weights; the frozen base is loaded in fp32 as
      well, because the probe's checkpoints and the trained model are the base with the adapters merged in, and a
      merge into bf16 weights would lose the small updates again (at twice the base's memory of a bf16 load).
    """
    device = device or default_device()
    dtype = compute_dtype(dtype, device, cpu_bf16, gpu_bf16)
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    if pure_bf16:
        if dtype != "bfloat16":
            raise T3SError(f"train.pure_bf16 needs bf16 compute (train.dtype bfloat16 or auto), not {dtype}")
        if lora:
            raise T3SError("train.pure_bf16 does not apply to LoRA: the adapters are kept in fp32 by PEFT")
        return TrainingPlan(
            device, bf16, bf16, bf16, bf16, True, False, "pure bf16: updates below about 2^-9 of a weight are lost"
        )
    compute = {"float32": f32, "bfloat16": bf16, "float16": f16}[dtype]
    return TrainingPlan(
        device,
        f32,
        compute,
        f32,
        f32,
        compute == bf16,
        compute == f16,
        "LoRA: adapters and the frozen base in fp32, merged exactly" if lora else "",
    )


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (`org/name`): absolute, relative with ./ or ../, or deeper."""
    return path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def resolve_model_path(path: str | Path) -> str:
    """Accept a model directory, a `t3s train` output directory (its `model/`), or a hub id."""
    p = Path(path)
    if not p.exists() and _looks_local(str(path)):
        raise T3SError(f"{path}: no such model directory (a model is a local directory or a hub id like org/name)")
    if (p / "model" / "config.json").exists() and not (p / "config.json").exists():
        p = p / "model"
    elif not p.exists():
        return str(path)  # a hub id
    if not (p / "config.json").exists():
        raise T3SError(f"{p}: not a Hugging Face model directory (no config.json)")
    from t3s.artifacts import read_json

    if not isinstance(read_json(p / "config.json"), dict):  # a truncated or corrupt config: one line naming it
        raise T3SError(f"{p / 'config.json'}: not a model config (a JSON object)")
    return str(p)


# Any of these files is a tokenizer transformers can load (fast, sentencepiece, BPE or WordPiece vocabularies).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_error(what: str, path: str | Path, e: BaseException) -> T3SError:
    """One line for a model or tokenizer that cannot be loaded (set T3S_DEBUG=1 for the traceback)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > 300:
        text = text[:300] + " ..."
    if type(e).__name__ == "SafetensorError" or "deserializ" in text:
        text = f"a weight file is truncated or corrupt ({text})"
    elif not Path(path).exists():
        text = f"no such local directory, and not a model in the Hugging Face cache (offline?) ({text})"
    return T3SError(f"cannot load {what} from '{path}': {text}")


def hub_kwargs(trust_remote_code: bool) -> dict[str, Any]:
    # transformers and huggingface_hub honour HF_HUB_OFFLINE themselves; local_files_only makes the intent explicit.
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return {"trust_remote_code": trust_remote_code, "local_files_only": offline}


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    if Path(path).is_dir() and not any((Path(path) / f).exists() for f in TOKENIZER_FILES):
        raise T3SError(
            f"{path}: no tokenizer files (none of {', '.join(TOKENIZER_FILES[:2])}, ...); copy in the "
            "tokenizer of the model it was trained from"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path, **hub_kwargs(trust_remote_code))
    except Exception as e:  # noqa: BLE001 -- a user's files: any failure is one line naming them
        raise load_error("a tokenizer", path, e) from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


# What accelerate's FSDP launcher exports. With both set in a process group, transformers loads as if FSDP
# preparation followed: on every process but the first of its node it leaves placeholders (zeros for
# non-persistent buffers, uninitialised missing keys) that FSDP is expected to broadcast from the first.
FSDP_LOADING_VARS = ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING")


@contextlib.contextmanager
def whole_model_loading() -> Any:
    """Inside, `from_pretrained` loads the whole model on every process: the FSDP loading path is switched off
    (see FSDP_LOADING_VARS) and switched back on after. For models that no Trainer will wrap (scoring,
    evaluation, generation), which every process runs as it loaded them."""
    saved = {k: os.environ.pop(k) for k in FSDP_LOADING_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def restore_buffers(model: Any) -> Any:
    """Recompute the non-persistent buffers of a remote-code model (rotary frequencies and the like) after loading.

    transformers 5 builds a model on the meta device, loads the checkpoint, and re-creates the buffers that are not
    in the checkpoint only through the model's `_init_weights`. Remote code written for transformers 4 (LLaDA-2's
    `LLaDA2MoeRotaryEmbedding.inv_freq`, for one) initialises linear layers and embeddings there and nothing else,
    so such a buffer is left as uninitialised memory: a model that reads garbage positions, differently on every
    load. The class's own constructor computes them: build it with parameters on the meta device (nothing is
    allocated) and copy its buffers over. Native transformers models are left alone; buffers still on the meta
    device (FSDP's low-RAM loading, filled from process 0) too."""
    is_custom = getattr(type(model), "is_custom_code", None)
    if not callable(is_custom) or not is_custom():
        return model
    todo = [(n, b) for n, b in model.named_non_persistent_buffers() if b is not None and b.device.type != "meta"]
    if not todo:
        return model
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        fresh = dict(type(model)(model.config).named_buffers())
    with torch.no_grad():
        for name, buf in todo:
            new = fresh.get(name)
            if new is not None and new.device.type != "meta" and new.shape == buf.shape:
                buf.copy_(new.to(buf.dtype))
    return model


def placed(model: Any, device: str, path: str, place: bool) -> Any:
    """The loaded model on `device` when `place` (and, on several processes, checked to hold the same weights on
    every one), else as loading left it: the Trainer (DDP) or accelerate (DeepSpeed, FSDP, whose low-RAM loading
    leaves the weights on the meta device on all but one process) places it."""
    if not place:
        return model
    from t3s import dist

    model = model.to(device)
    dist.check_same_weights(model, path)
    return model


def load_causal_lm(path: str | Path, precision: Precision, trust_remote_code: bool = False, place: bool = True) -> Any:
    """`place=False` leaves the weights where loading put them (for a Trainer to wrap: see `placed`); `place=True`
    loads the whole model on every process, on `precision.device`."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(path)
    try:
        with whole_model_loading() if place else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=precision.weights, **hub_kwargs(trust_remote_code))
    except Exception as e:  # noqa: BLE001 -- a user's files: any failure is one line naming them
        raise load_error("a causal LM", path, e) from e
    return placed(restore_buffers(model), precision.device, path, place)


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


_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8}
_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn"}


def stored_dtype(path: str | Path) -> str | None:
    """The narrowest floating-point dtype in a local model's safetensors files, read from their headers (no
    tensor is loaded): what a save actually wrote, whatever the config claims. None: no safetensors files."""
    import json
    import struct

    p = Path(resolve_model_path(path))
    found: set[str] = set()
    for f in sorted(p.glob("*.safetensors")) if p.is_dir() else []:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        found |= {t["dtype"] for k, t in header.items() if k != "__metadata__" and t["dtype"] in _BITS}
    if not found:
        return None
    narrowest = min(found, key=lambda d: (_BITS[d], d != "BF16"))  # bf16 keeps fewer mantissa bits than fp16
    return _NAMES.get(narrowest, narrowest.lower())


def saved_step_record(step: int, stored: str | None, master: str) -> dict[str, Any]:
    """What t3s writes beside a model it trained (t3s_step.json): the step, the dtype the files hold, and the
    dtype of the weights training updated (the optimizer's master copy)."""
    return {"global_step": step, "stored_dtype": stored, "master_dtype": master}


def rounding_note(path: str | Path) -> str | None:
    """A warning when a checkpoint t3s trained holds weights narrower than the master weights it was trained with
    (a 16-bit save of a DeepSpeed engine from before t3s saved fp32): its confidences, and so Δc, inherit the
    rounding. None otherwise (a base model's own dtype is its true weights)."""
    import json

    f = Path(resolve_model_path(path)) / "t3s_step.json"
    if not f.is_file():
        return None
    with contextlib.suppress(Exception):
        rec = json.loads(f.read_text())
        stored, master = stored_dtype(f.parent), rec.get("master_dtype")
        if stored and master and _width(stored) < _width(master):
            return (
                f"{f.parent}: trained with {master} master weights but saved in {stored}; its confidences (and "
                f"Δc) inherit the {stored} rounding (BENCHMARKS.md: 5.5% of anchors flip on bf16 weights). Re-run "
                "the stage that saved it with this t3s (it saves the fp32 masters)"
            )
    return None


def _width(dtype: str) -> tuple[int, int]:
    return {"float64": (64, 1), "float32": (32, 1), "float16": (16, 1), "bfloat16": (16, 0)}.get(dtype, (8, 0))


def nonfinite_weights(model: Any) -> list[str]:
    """Names of the parameters holding a NaN or an infinity. One flag per tensor is gathered on the first
    tensor's device and read once (this runs at every probe evaluation: no host round trip per tensor); empty
    (ZeRO-3) and meta-device tensors hold no values and are skipped."""
    params = [(n, p) for n, p in model.named_parameters() if p.numel() and p.device.type != "meta"]
    if not params:
        return []
    dev = params[0][1].device
    flags = torch.stack([torch.isfinite(p).all().to(dev) for _, p in params])
    if bool(flags.all()):
        return []
    return [n for (n, _), ok in zip(params, flags.tolist()) if not ok]


TRAINING_HINT = "the run diverged (lower train.learning_rate, or check train.dtype)"


def check_finite_weights(model: Any, what: str, hint: str = TRAINING_HINT) -> None:
    """Refuse a model with non-finite parameters (a diverged run). Sharded parameters (ZeRO-3, FSDP) are
    skipped: each process holds a slice, and a check failing on one process alone would hang the others."""
    from t3s import dist

    if dist.params_sharded(model):
        return
    bad = nonfinite_weights(model)
    if bad:
        raise T3SError(f"{what}: {len(bad)} parameter tensor(s) hold NaN or inf (first: {bad[0]}); {hint}")
