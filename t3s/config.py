"""One configuration for every command: a YAML file with a few top-level keys and one section per stage.

```yaml
student: runs/tiny/model        # θ_0
train_data: runs/tiny/train.jsonl
eval_data: runs/tiny/heldout.jsonl
modes: [sft, t3s, reverse]
seeds: [0]
render: {max_length: 4096}      # RenderConfig
train: {learning_rate: 1e-5}    # TrainConfig
probe: {eval_every: 5}          # ProbeConfig
eval: {max_new_tokens: 1024}    # GenConfig
score: {dtype: float32}         # ScoreConfig
diffusion: {tau: 0.2}           # DiffusionConfig (objective: diffusion)
launch: {num_processes: 8}      # LaunchConfig (`t3s run`: the stages under torchrun / accelerate)
```

Every section is a dataclass here, with each key's help text and bounds next to it; this module imports no stage
and no torch, so reading a config is cheap and the stages import their settings from one place.

`key=value` overrides take a dotted path (`train.learning_rate=1e-5`, `train.trainer.adam_beta2=0.95`); a
command also accepts bare keys of its own sections (`t3s train ... learning_rate=1e-5`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from t3s import T3SError
from t3s.artifacts import read_text
from t3s.fields import check_fields
from t3s.modes import RUN_MODES, canonical, missing_steps

OVERLONG_POLICIES = ("error", "truncate", "drop")
FALLBACKS = ("last_number", "none")
GRADERS = ("math", "exact", "choice", "regex:PATTERN", "module:function")


def check_grader(spec: Any) -> None:
    """Refuse a malformed grader name (t3s.graders): a config check, no import and no work."""
    if not isinstance(spec, str):
        raise T3SError(f"grader must be one of {', '.join(GRADERS)}, got {spec!r}")
    if spec in ("math", "exact", "choice"):
        return
    if spec.startswith("regex:"):
        try:
            re.compile(spec[len("regex:") :])
        except re.error as e:
            raise T3SError(f"grader {spec}: bad regular expression ({e})") from None
        return
    module, _, name = spec.partition(":")
    if not (module and name and all(p.isidentifier() for p in module.split(".")) and name.isidentifier()):
        raise T3SError(f"grader must be one of {', '.join(GRADERS)}, got '{spec}'")


@dataclass
class RenderConfig:
    """How rows become token ids. Part of every score/selection fingerprint."""

    chat_template: str = field(
        default="auto", metadata={"help": "auto | on | off: use the tokenizer's chat template", "switch": True}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "system turn prepended to string prompts"})
    separator: str = field(default="\n", metadata={"help": "between prompt and response without a template"})
    add_eos: bool = field(default=True, metadata={"help": "append EOS to the response without a template"})
    template_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "extra chat-template variables"})
    max_length: int | None = field(default=None, metadata={"help": "max tokens per row (prompt + response)", "ge": 2})
    overlong: str = field(default="error", metadata={"help": "error | truncate | drop for rows over max_length"})

    def __post_init__(self) -> None:
        check_fields(self, "render")
        if isinstance(self.chat_template, bool):  # YAML 1.1: `off` and `on` are booleans
            self.chat_template = "on" if self.chat_template else "off"
        if self.overlong not in OVERLONG_POLICIES:
            raise T3SError(f"overlong must be one of {OVERLONG_POLICIES}, got '{self.overlong}'")
        if self.chat_template not in ("auto", "on", "off"):
            raise T3SError(f"chat_template must be auto, on or off, got '{self.chat_template}'")


NORMALIZE = ("kept", "response")
# The per-token losses of `train.loss` and the TrainConfig keys each reads. Each reweights the cross-entropy of a
# token from the model being trained, per step (t3s.objectives.token_losses); nll is plain SFT.
LOSSES: dict[str, tuple[str, ...]] = {
    "nll": (),
    "eaft": ("eaft_alpha", "eaft_k"),  # EAFT, arXiv 2601.02151
    "memft": ("memft_threshold",),  # MemFT's hard mask ("ot"), arXiv 2605.30260
    "asft": ("asft_kl_weight",),  # ASFT, arXiv 2509.23753
}
LOSS_KEYS = tuple(k for keys in LOSSES.values() for k in keys)  # every loss's own TrainConfig keys
MASKING_LOSSES = ("memft",)  # the losses that leave tokens out (per step): no "every token" in a summary
# SFTConfig arguments t3s sets itself (`training_arguments`, `make_trainer`): `train.trainer` may not repeat them.
# The value says where the setting lives instead.
MANAGED = {
    "output_dir": "--out",
    "max_steps": "train.max_steps",
    "use_cpu": "train.dtype (the precision plan)",
    "bf16": "train.dtype (the precision plan)",
    "fp16": "train.dtype (the precision plan)",
    "save_strategy": "train.save_steps",
    "disable_tqdm": "--quiet",
    "remove_unused_columns": "nothing (t3s needs its own columns)",
    "max_length": "render.max_length",
    "dataset_kwargs": "nothing (t3s renders the rows itself)",
    "logging_nan_inf_filter": "nothing (t3s stops on a non-finite loss)",
    "gradient_checkpointing": "train.activation_checkpointing",  # its name before transformers 5.23
}


@dataclass
class TrainConfig:
    """Training settings. Keys not listed here can be given under `trainer:` and go to TRL's SFTConfig as is
    (e.g. `deepspeed`, `fsdp`, `eval_strategy`)."""

    learning_rate: float = field(
        default=1e-5, metadata={"help": "peak learning rate", "gt": 0, "le": 10, "why": "a larger one is a typo"}
    )
    max_steps: int = field(
        default=50,
        metadata={
            "help": "optimizer steps; 0 means use num_train_epochs",
            "ge": 0,
            "why": "0 trains num_train_epochs epochs",
        },
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs when max_steps is 0", "gt": 0})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "rows per device per micro-batch", "ge": 1})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step", "ge": 1})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name"})
    warmup_steps: float = field(default=0, metadata={"help": "warm-up steps (a float < 1 is a ratio)", "ge": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "ge": 0})
    optim: str = field(default="adamw_torch", metadata={"help": "transformers optimizer name"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 disables)", "ge": 0})
    seed: int = field(default=42, metadata={"help": "data order and initialisation seed (`t3s run`: each of `seeds`)"})
    normalize: str = field(default="kept", metadata={"help": "kept | response: loss denominator"})
    loss: str = field(
        default="nll",
        metadata={
            "help": "the per-token loss: nll (SFT's cross-entropy) | eaft | memft | asft, each reweighted online from "
            "the current model (docs/method.md); `t3s run` sets it from each mode (dft is TRL's trainer.loss_type)"
        },
    )
    eaft_alpha: float = field(
        default=1.0, metadata={"help": "eaft: weight = (top-k entropy / ln k)^alpha (EAFT's default 1)", "gt": 0}
    )
    eaft_k: int = field(default=20, metadata={"help": "eaft: the k of the top-k entropy (EAFT's default 20)", "ge": 2})
    memft_threshold: float = field(
        default=0.5,
        metadata={
            "help": "memft: train on tokens whose current probability is below this (MemFT's 0.5)",
            "gt": 0,
            "le": 1,
        },
    )
    asft_kl_weight: float = field(
        default=0.1, metadata={"help": "asft: weight of KL(θ_0 || θ) added to DFT's loss (ASFT's default 0.1)", "ge": 0}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "compute dtype: auto | float32 | bfloat16 | float16 (GPU only); weights and optimizer state "
            "stay fp32. "
            "auto: bf16 autocast on a GPU; on a CPU only with AVX512-BF16/AMX, else fp32"
        },
    )
    pure_bf16: bool = field(
        default=False,
        metadata={
            "help": "bf16 weights updated in place, no fp32 master copy: half the memory, but most updates below "
            "about 2^-9 of a weight are lost (at lr 1e-5: most of them)"
        },
    )
    activation_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations to save memory (GPU)"}
    )
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)", "ge": 0})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep Trainer checkpoints after success"})
    logging_steps: int = field(default=1, metadata={"help": "log the loss every N steps", "ge": 1})
    stop_on_divergence: bool = field(
        default=True,
        metadata={
            "help": "stop with an error when the loss stays far above its start (3 logs in a row above "
            "max(3x the first loss, the first + ln vocabulary)); false: train on, warn, and mark the run's summary"
        },
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "none | tensorboard | wandb | a comma-separated list: every probe and training stage logs its loss "
            "and the probe's t3s/* metrics there, and `t3s run` its final table (changes no result)"
        },
    )
    lora_r: int = field(
        default=0, metadata={"help": "PEFT LoRA rank (0: full fine-tuning); the saved model is merged", "ge": 0}
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha", "gt": 0})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout", "ge": 0, "lt": 1})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "LoRA target modules"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow remote code models"})
    trainer: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "passed to TRL's SFTConfig as is (deepspeed, fsdp, adam_beta2, ...)"}
    )

    def __post_init__(self) -> None:
        check_fields(self, "train")
        own = {f.name for f in dataclasses.fields(self)} - {"trainer"}
        for key in self.trainer:
            if key in own or key in MANAGED:
                where = f"train.{key}" if key in own else MANAGED[key]
                raise T3SError(f"train.trainer.{key}: t3s sets '{key}' itself; use {where} instead")
        if self.normalize not in NORMALIZE:
            raise T3SError(f"normalize must be one of {NORMALIZE}, got '{self.normalize}'")
        if self.loss not in LOSSES:
            raise T3SError(f"train.loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        if self.loss != "nll" and self.trainer.get("loss_type", "nll") != "nll":
            raise T3SError(
                f"train.loss={self.loss} and train.trainer.loss_type={self.trainer['loss_type']}: choose one"
            )

    def loss_settings(self) -> dict[str, Any]:
        """The settings the per-token loss reads ({} for nll): part of a training run's fingerprint, the others
        are not (changing eaft_alpha does not retrain a memft run)."""
        return {k: getattr(self, k) for k in LOSSES[self.loss]}

    @property
    def needs_reference(self) -> bool:
        """Whether training needs a second, frozen copy of θ_0: asft's KL term without LoRA (under LoRA θ_0 is
        the adapter-disabled model)."""
        return self.loss == "asft" and self.lora_r == 0


@dataclass
class ProbeConfig:
    """Settings of the probe run (training itself uses the `train` section)."""

    eval_every: int = field(
        default=0, metadata={"help": "evaluate every N steps (0: about 15 points per run)", "ge": 0}
    )
    subset: int = field(
        default=0, metadata={"help": "training prompts evaluated (0: all), a fixed seeded subset", "ge": 0}
    )
    subset_seed: int = field(default=0, metadata={"help": "seed of the subsets"})
    heldout_subset: int = field(default=0, metadata={"help": "held-out prompts evaluated (0: all, -1: none)", "ge": -1})
    k: int = field(default=1, metadata={"help": "samples per prompt: 1 = greedy, >1 = eval sampling, avg@k", "ge": 1})
    online: bool = field(default=False, metadata={"help": "stop once a dip's minimum is confirmed"})
    margin: float | None = field(
        default=None,
        metadata={
            "help": "accuracy margin of a real dip and of the online stop (default: 2 standard errors of the step-0 "
            "accuracy on the probe set)"
        },
    )
    patience: int = field(default=2, metadata={"help": "evaluations above min + margin before an online stop"})
    markers: list[str] = field(default_factory=lambda: ["Wait"], metadata={"help": "style marker phrases"})
    keep_all: bool = field(default=False, metadata={"help": "keep every evaluated checkpoint"})
    continue_without_dip: bool = field(default=False, metadata={"help": "use the lowest checkpoint even with no dip"})
    track_every: int = field(
        default=0, metadata={"help": "pipeline: also evaluate every trained mode every N steps", "ge": 0}
    )
    track_subset: int = field(default=64, metadata={"help": "training prompts evaluated when tracking a mode", "ge": 1})
    track_modes: list[str] | None = field(
        default=None,
        metadata={
            "help": "pipeline: the trained modes that track_every evaluates (default: every one). Tracking costs "
            "an evaluation every track_every steps; controls whose path nobody reads need not pay it"
        },
    )
    backend: str = field(default="hf", metadata={"help": "generation: hf | vllm (GPU only; engine from eval.vllm)"})

    def __post_init__(self) -> None:
        check_fields(self, "probe")
        if self.patience < 1:
            raise T3SError("probe.patience must be >= 1")
        if self.margin is not None and not 0 <= self.margin < 1:
            raise T3SError(f"probe.margin must be in [0, 1) (a fraction of accuracy), got {self.margin}")
        if self.backend not in ("hf", "vllm"):
            raise T3SError(f"probe.backend must be hf or vllm, got '{self.backend}'")
        if not isinstance(self.markers, list) or not all(isinstance(m, str) for m in self.markers):
            raise T3SError(f"probe.markers must be a list of phrases, got {self.markers!r}")
        if self.track_modes is not None and (
            not isinstance(self.track_modes, list) or not all(isinstance(m, str) for m in self.track_modes)
        ):
            raise T3SError(f"probe.track_modes must be a list of mode names, got {self.track_modes!r}")

    @property
    def reads_heldout(self) -> bool:
        """Whether the probe evaluates held-out prompts (heldout_subset -1: none, and the file is not read)."""
        return self.heldout_subset >= 0

    def tracks(self, mode: str) -> bool:
        """Whether a trained mode is evaluated along the way (track_every > 0 and the mode in track_modes)."""
        return self.track_every > 0 and (self.track_modes is None or mode in self.track_modes)


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
    grader: str = field(
        default="math",
        metadata={
            "help": "math (math-verify) | exact | choice (multiple-choice letters) | regex:PATTERN (e.g. "
            "'regex:####\\s*(.+)') | module:function (your own); see t3s/graders.py"
        },
    )
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16 (GPU only)"})
    backend: str = field(default="hf", metadata={"help": "hf (transformers generate) | vllm (GPU, optional)"})
    model_defaults: bool = field(
        default=False,
        metadata={
            "help": "false: generate with exactly these settings on every backend (no top-k, min-p or repetition "
            "penalty); true: also apply the top_k, min_p and repetition_penalty of the model's "
            "generation_config.json"
        },
    )
    vllm: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "vLLM engine arguments, e.g. {tensor_parallel_size: 8, gpu_memory_utilization: 0.9, "
            "max_model_len: 40000}"
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, "eval")
        if self.fallback not in FALLBACKS:
            raise T3SError(f"fallback must be one of {FALLBACKS}, got '{self.fallback}'")
        check_grader(self.grader)
        if self.backend not in ("hf", "vllm"):
            raise T3SError(f"backend must be hf or vllm, got '{self.backend}'")
        if self.k < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise T3SError("k, max_new_tokens and batch_size must be >= 1")
        if self.k > 1 and self.temperature == 0:
            raise T3SError("k > 1 samples need temperature > 0 (greedy samples would all be the same)")


SCHEDULES = ("llada", "dfactory")
FORCED_WEIGHTS = ("one", "inverse_t")
REMASKING = ("low_confidence", "random")
ATTENTIONS = ("auto", "bidirectional", "block_causal")
CACHES = ("none", "prefix")
# Which `diffusion` keys each kind of stage reads: a stage's fingerprint holds only its own, so changing a sampler
# setting re-runs only the stages that sample, and τ only the selections.
DIFFUSION_TRAINING_KEYS = ("mask_schedule", "eps", "t_min", "t_max", "forced_weight", "mask_token_id")
DIFFUSION_SAMPLER_KEYS = ("gen_length", "block_length", "steps", "remasking", "mask_token_id")
# sampler settings added later: in a fingerprint only when set away from these defaults (which reproduce the
# sampler the older fingerprints describe), so finished sampling stages stay valid
DIFFUSION_SAMPLER_DEFAULTS = {"attention": "auto", "cache": "none", "commit_threshold": 1.0}
DIFFUSION_SELECTION_KEYS = ("tau",)


@dataclass
class DiffusionConfig:
    """Masked-diffusion students: the training mask and the sampler (section `diffusion`)."""

    mask_schedule: str = field(
        default="llada", metadata={"help": "llada: t~U(eps,1), CE weighted 1/t | dfactory: t~U(t_min,t_max), no weight"}
    )
    eps: float = field(default=1e-3, metadata={"help": "llada: smallest noise level"})
    t_min: float = field(default=0.3, metadata={"help": "dfactory: noise level range, low end"})
    t_max: float = field(default=0.8, metadata={"help": "dfactory: noise level range, high end"})
    tau: float = field(default=0.2, metadata={"help": "forced set: Δc < −tau (always masked)"})
    forced_weight: str = field(
        default="one",
        metadata={
            "help": "loss weight of a forced position: one (it is masked with probability 1) | inverse_t (1/t like "
            "a randomly masked one: up-weights the forced set by a random factor)"
        },
    )
    mask_token_id: int | None = field(default=None, metadata={"help": "default: the tokenizer's or config's"})
    gen_length: int = field(default=0, metadata={"help": "sampler canvas length (0: eval.max_new_tokens)"})
    block_length: int = field(default=32, metadata={"help": "semi-autoregressive block length"})
    steps: int = field(default=0, metadata={"help": "denoising steps over the canvas (0: gen_length)"})
    remasking: str = field(default="low_confidence", metadata={"help": "low_confidence | random"})
    commit_threshold: float = field(
        default=1.0,
        metadata={
            "help": "parallel decoding: at each step also commit every masked position of the current block whose "
            "predicted token has probability > this (Fast-dLLM 0.9, LLaDA-2 0.95); 1.0: off, the fixed schedule "
            "of `steps` alone"
        },
    )
    attention: str = field(
        default="auto",
        metadata={
            "help": "how the sampler's model reads the canvas: auto (block_causal for LLaDA-2, as its own "
            "generate(); else bidirectional) | bidirectional (every position sees the whole canvas) | "
            "block_causal (a block sees itself and the blocks before it, on a grid from the first prompt token)"
        },
    )
    cache: str = field(
        default="none",
        metadata={
            "help": "none | prefix: keys and values of the positions before the current block are cached, not "
            "recomputed at every step (exact under block_causal attention; under bidirectional, Fast-dLLM's "
            "approximate prefix cache, refreshed at each block); needs a model whose forward takes "
            "past_key_values (LLaDA-2)"
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, "diffusion")
        if self.mask_schedule not in SCHEDULES:
            raise T3SError(f"diffusion.mask_schedule must be one of {SCHEDULES}, got '{self.mask_schedule}'")
        if self.forced_weight not in FORCED_WEIGHTS:
            raise T3SError(f"diffusion.forced_weight must be one of {FORCED_WEIGHTS}, got '{self.forced_weight}'")
        if self.remasking not in REMASKING:
            raise T3SError(f"diffusion.remasking must be one of {REMASKING}, got '{self.remasking}'")
        if self.attention not in ATTENTIONS:
            raise T3SError(f"diffusion.attention must be one of {ATTENTIONS}, got '{self.attention}'")
        if self.cache not in CACHES:
            raise T3SError(f"diffusion.cache must be one of {CACHES}, got '{self.cache}'")
        if not 0 < self.commit_threshold <= 1:
            raise T3SError(f"diffusion.commit_threshold must be in (0, 1] (1: off), got {self.commit_threshold}")
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

    def training(self) -> dict[str, Any]:
        """The settings the diffusion loss reads (a training stage's fingerprint)."""
        return {k: getattr(self, k) for k in DIFFUSION_TRAINING_KEYS}

    def sampler(self) -> dict[str, Any]:
        """The settings the diffusion sampler reads (a sampling stage's fingerprint)."""
        out = {k: getattr(self, k) for k in DIFFUSION_SAMPLER_KEYS}
        out.update({k: getattr(self, k) for k, v in DIFFUSION_SAMPLER_DEFAULTS.items() if getattr(self, k) != v})
        return out

    def selection(self) -> dict[str, Any]:
        """The settings a forced-set selection reads."""
        return {k: getattr(self, k) for k in DIFFUSION_SELECTION_KEYS}


MODES = RUN_MODES


@dataclass
class ScoreConfig:
    """Settings of `t3s score` (and the pipeline's scoring stage)."""

    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (= float32: bf16 rounding would decide the sign of small Δc) | float32 | bfloat16 | "
            "float16 (GPU only)"
        },
    )
    batch_tokens: int = field(
        default=0, metadata={"help": "padded tokens per backbone batch (0: auto, 2048 on CPU, 16384 on GPU)", "ge": 0}
    )
    max_batch: int = field(default=64, metadata={"help": "rows per batch at most", "ge": 1})
    chunk_tokens: int = field(
        default=0,
        metadata={
            "help": "positions per LM-head / log-softmax chunk (0: auto, cache-sized on CPU, 1024 on GPU)",
            "ge": 0,
        },
    )
    check: bool = field(default=True, metadata={"help": "compare one row with the model's own forward"})

    def __post_init__(self) -> None:
        check_fields(self, "score")


LAUNCHERS = ("auto", "none", "torchrun", "accelerate")


@dataclass
class LaunchConfig:
    """How `t3s run` starts its distributed stages (probe, score, train, eval): in its own process, or each as a
    subprocess under an existing launcher (`torchrun`, `accelerate launch`), with select, RRT and the summary in
    the orchestrating process. Part of no fingerprint, except that a training's global batch (rows per device ×
    accumulation × processes) counts the processes."""

    launcher: str = field(
        default="auto",
        metadata={
            "help": "auto | none | torchrun | accelerate. auto: accelerate when config_file is set, torchrun when "
            "num_processes or nodes > 1, else none (every stage in this process)"
        },
    )
    num_processes: int | None = field(
        default=None,
        metadata={"help": "processes over all nodes (default: the accelerate config's num_processes, else 1)", "ge": 1},
    )
    config_file: str | None = field(
        default=None, metadata={"help": "accelerate config file (DDP, DeepSpeed, FSDP: examples/accelerate/)"}
    )
    nodes: int = field(default=1, metadata={"help": "machines; each runs num_processes / nodes processes", "ge": 1})
    main_address: str | None = field(default=None, metadata={"help": "nodes > 1: the address of node 0"})
    main_port: int | None = field(
        default=None,
        metadata={
            "help": "rendezvous port (default: a free one on one node, 29500 over several)",
            "ge": 1,
            "le": 65535,
        },
    )
    prefix: list[str] = field(
        default_factory=list,
        metadata={
            "help": "command that starts the launcher once on every node, e.g. [srun, --nodes=2, "
            "--ntasks-per-node=1] (torchrun); without it, nodes > 1 prints each other node's command per stage"
        },
    )
    args: list[str] = field(default_factory=list, metadata={"help": "extra launcher arguments, passed as is"})
    env: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "environment variables of the stage processes (e.g. NCCL_DEBUG: INFO)"}
    )

    def __post_init__(self) -> None:
        check_fields(self, "launch")
        if self.launcher not in LAUNCHERS:
            raise T3SError(f"launch.launcher must be one of {', '.join(LAUNCHERS)}, got '{self.launcher}'")
        for key in ("prefix", "args"):
            value = getattr(self, key)
            if not isinstance(value, list) or not all(isinstance(x, (str, int, float)) for x in value):
                raise T3SError(f"launch.{key} must be a list of words, got {value!r}")
            setattr(self, key, [str(x) for x in value])
        if not isinstance(self.env, dict):
            raise T3SError(f"launch.env must be a mapping, got {self.env!r}")
        self.env = {str(k): str(v) for k, v in self.env.items()}
        if self.config_file and self.launcher in ("torchrun", "none"):
            raise T3SError(
                f"launch.config_file is an accelerate config: set launch.launcher: accelerate (or auto), not "
                f"{self.launcher}"
            )
        # the process counts are checked by t3s.launch.resolve, which also reads the accelerate config's
        if self.nodes > 1:
            if not self.main_address:
                raise T3SError("launch.nodes > 1 needs launch.main_address (the address of node 0)")
            if self.prefix and self.kind() == "accelerate":
                raise T3SError(
                    "launch.prefix starts one launcher per node, which needs a rendezvous that assigns node ranks: "
                    "use launch.launcher: torchrun (DeepSpeed / FSDP through train.trainer.deepspeed / fsdp), or "
                    "no prefix (t3s prints each other node's command)"
                )

    def kind(self) -> str:
        """The launcher in use: none, torchrun or accelerate (auto resolved; see `launcher`)."""
        if self.launcher != "auto":
            return self.launcher
        if self.config_file:
            return "accelerate"
        return "torchrun" if (self.num_processes or 1) > 1 or self.nodes > 1 else "none"


SECTIONS: dict[str, type] = {
    "render": RenderConfig,
    "train": TrainConfig,
    "probe": ProbeConfig,
    "eval": GenConfig,
    "score": ScoreConfig,
    "diffusion": DiffusionConfig,
    "launch": LaunchConfig,
}
OBJECTIVE_SECTIONS = ("diffusion",)  # the sections that hold an objective's own settings (bare keys on the CLI)


@dataclass
class RunConfig:
    student: str | None = field(default=None, metadata={"help": "θ_0: model directory or hub id"})
    train_data: str | None = field(default=None, metadata={"help": "teacher traces with gold answers"})
    eval_data: str | None = field(default=None, metadata={"help": "held-out prompts with gold answers"})
    modes: list[str] = field(
        default_factory=lambda: ["sft", "t3s"], metadata={"help": f"any of {', '.join(RUN_MODES)} (`none`: sft)"}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "one probe and one training run per mode per seed (data order; replaces train.seed)"},
    )
    threshold: float | str = field(
        default=0.0,
        metadata={
            "help": "anchors: Δc > threshold; auto: 0, with tokens near-certain at θ_0 and θ_b in neither group",
            "words": ("auto",),
        },
    )
    delta_step: int = field(
        default=0,
        metadata={
            "help": "t3s-step: the probe's evaluated checkpoint (its step) whose scores stand in θ_b's place",
            "ge": 0,
        },
    )
    rrt: bool = field(default=True, metadata={"help": "also build θ_0 + (θ_T − θ_b) from the SFT run"})
    objective: str = field(
        default="ar",
        metadata={"help": "the student's objective, a name in t3s.objectives.OBJECTIVES: ar, or diffusion (masked)"},
    )
    selector: str | None = field(
        default=None, metadata={"help": "diffusion: the AR selector model (its probe and scores give Δc)"}
    )
    selector_train: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "diffusion: train keys that differ for the selector's probe"}
    )
    probe_student: bool = field(default=False, metadata={"help": "diffusion: also probe the student itself"})
    teachers: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "teacher mixture: name -> training set (instead of train_data)"}
    )
    mixture_budget: float = field(
        default=0.0, metadata={"help": "mixture steps = train.max_steps × this (0: the number of teachers)", "ge": 0}
    )
    render: RenderConfig = field(default_factory=RenderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: GenConfig = field(default_factory=GenConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def __post_init__(self) -> None:
        check_fields(self, "")
        if isinstance(self.modes, list):
            self.modes = [canonical(m) if isinstance(m, str) else m for m in self.modes]  # `none` is `sft`
        if isinstance(self.threshold, str) and self.threshold != "auto":
            raise T3SError(f"threshold must be a number or auto, got '{self.threshold}'")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in self.seeds):
            raise T3SError(f"seeds must be a list of integers, got {self.seeds!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise T3SError(f"modes must be a non-empty list of {', '.join(MODES)}; got {self.modes}")
        if not self.seeds:
            raise T3SError("seeds must list at least one seed")
        if self.probe.track_modes is not None:
            self.probe.track_modes = [canonical(m) for m in self.probe.track_modes]
            extra = [m for m in self.probe.track_modes if m not in self.modes]
            if extra:
                raise T3SError(f"probe.track_modes names {', '.join(extra)}, not in modes ({', '.join(self.modes)})")
        for mode, key in missing_steps(self):  # t3s-step reads the checkpoint at delta_step
            raise T3SError(f"mode {mode} needs {key}: the step of an evaluated probe checkpoint (> 0)")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def selector_train_config(self) -> TrainConfig:
        """The train section with the selector's own keys applied (diffusion runs)."""
        return dataclasses.replace(self.train, **coerce(TrainConfig, self.selector_train, "selector_train"))


_TOP = {f.name for f in dataclasses.fields(RunConfig)} - set(SECTIONS)
_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(obj: Any) -> Any:
    """YAML 1.1 reads `1e-5` (no dot) as a string; read such strings as floats, as users mean them."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str) and _EXP_FLOAT.match(obj):
        return float(obj)
    return obj


def parse_value(text: str) -> Any:
    return _numbers(yaml.safe_load(text))


def parse_override(text: str) -> Any:
    """The VALUE of a KEY=VALUE override: a YAML scalar or flow collection (`1e-5`, `true`, `[a, b]`,
    `{top_k: 20}`); any other text is taken as it is written, so a prompt such as `Final answer: \\boxed{N}`
    stays a string instead of becoming a mapping or a parse error."""
    stripped = text.strip()
    try:
        value = parse_value(text)
    except yaml.YAMLError:
        if stripped[:1] in "[{":  # meant as a collection: say why it is not one
            raise T3SError(f"cannot read '{text}' as a YAML list or mapping") from None
        return text
    if isinstance(value, (dict, list)) and stripped[:1] not in "[{":
        return text  # block YAML ("a: b", "- a") is never what an override on one command line means
    return value


def coerce(cls: type, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Check keys against a config dataclass and convert values to its field types."""
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    switches = {f.name for f in dataclasses.fields(cls) if f.metadata.get("switch")}
    words = {f.name: f.metadata["words"] for f in dataclasses.fields(cls) if f.metadata.get("words")}
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise T3SError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(types))})")
    out = {}
    for key, value in raw.items():
        base = types[key].split("|")[0].strip()
        if value is None:
            out[key] = value
            continue
        if isinstance(value, str) and value in words.get(key, ()):  # a number field's named values (`auto`)
            out[key] = value
            continue
        if key in switches and isinstance(value, bool):  # YAML 1.1 reads the documented `off` / `on` as booleans
            value = "on" if value else "off"
        expect = {"str": str, "dict": dict, "list": list, "tuple": (list, tuple)}.get(base.split("[")[0])
        if expect is not None:
            if not isinstance(value, expect):
                raise T3SError(f"{where}: bad value for '{key}': {value!r} (expected {base})")
            out[key] = value
            continue
        if base not in ("float", "int", "bool"):
            out[key] = value
            continue
        try:
            if base == "bool":
                if not isinstance(value, bool):
                    raise ValueError("expected true or false")
                out[key] = value
            elif isinstance(value, bool):
                raise ValueError("expected a number")
            elif base == "float":
                out[key] = float(value)
                if not math.isfinite(out[key]):
                    raise ValueError("expected a finite number")
            else:
                f = float(value)
                if not f.is_integer():
                    raise ValueError("expected an integer")
                out[key] = int(f)
        except (TypeError, ValueError) as e:
            raise T3SError(f"{where}: bad value for '{key}': {value!r} ({e})") from None
    return out


def _set(raw: dict[str, Any], path: list[str], value: Any) -> None:
    for p in path[:-1]:
        raw = raw.setdefault(p, {})
        if not isinstance(raw, dict):
            raise T3SError(f"override {'.'.join(path)}: '{p}' is not a mapping")
    raw[path[-1]] = value


def read_resolved(path: str | Path) -> RunConfig:
    """A run's own `config.yaml` (what `t3s run` wrote: every key, typed): the values are taken as they are, not
    converted, so the config a stage's own process reads is the orchestrator's to the bit (an integer default of a
    float key stays an integer) and every fingerprint agrees."""
    try:
        raw = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as e:
        raise T3SError(f"{path}: cannot read config ({e})") from None
    if not isinstance(raw, dict):
        raise T3SError(f"{path}: a config must be a mapping of keys to values")
    try:
        sections = {name: cls(**(raw.pop(name, None) or {})) for name, cls in SECTIONS.items()}
        return RunConfig(**raw, **sections)
    except TypeError as e:
        raise T3SError(f"{path}: not a config written by `t3s run` ({e})") from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, flat: tuple[str, ...] = ("train", "render")
) -> RunConfig:
    """Read a run config and apply overrides. Bare keys resolve to the first section in `flat` that has them."""
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            raw = _numbers(yaml.safe_load(read_text(path)) or {})
        except yaml.YAMLError as e:
            raise T3SError(f"{path}: cannot read config ({e})") from None
        if not isinstance(raw, dict):
            raise T3SError(f"{path}: a config must be a mapping of keys to values")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise T3SError(f"override '{item}' is not key=value")
        parts = key.split(".")
        if parts[0] not in SECTIONS and parts[0] not in _TOP:
            owner = next((s for s in flat if parts[0] in {f.name for f in dataclasses.fields(SECTIONS[s])}), None)
            if owner is None:
                known = sorted({f.name for s in flat for f in dataclasses.fields(SECTIONS[s])})
                raise T3SError(
                    f"unknown config key '{key}' (keys here: {', '.join(known)}; or section.key with "
                    f"sections {', '.join(SECTIONS)})"
                )
            parts = [owner, *parts]
        _set(raw, parts, parse_override(value))
    unknown = sorted(set(raw) - _TOP - set(SECTIONS))
    if unknown:
        raise T3SError(
            f"{where}: unknown key(s) {', '.join(unknown)} "
            f"(top-level keys: {', '.join(sorted(_TOP))}; sections: {', '.join(SECTIONS)})"
        )
    sections = {}
    for name, cls in SECTIONS.items():
        body = raw.get(name) or {}
        if not isinstance(body, dict):
            raise T3SError(f"{where}: section '{name}' must be a mapping")
        values = coerce(cls, body, f"{where} [{name}]")
        try:
            sections[name] = cls(**values)
        except TypeError as e:
            raise T3SError(f"{where} [{name}]: {e}") from None
        except T3SError as e:
            raise T3SError(f"{where}: {e}") from None
    top = {k: raw[k] for k in _TOP if k in raw}
    top = coerce(RunConfig, top, where)
    try:
        return RunConfig(**top, **sections)
    except T3SError as e:
        raise T3SError(f"{where}: {e}") from None
