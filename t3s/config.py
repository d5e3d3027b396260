"""One configuration for every command: a YAML file with a few top-level keys and one section per stage.

```yaml
student: runs/tiny/model        # θ_0
train_data: runs/tiny/train.jsonl
eval_data: runs/tiny/heldout.jsonl
modes: [sft, t3s, reverse]
seeds: [0]
render: {max_length: 4096}      # t3s.data.RenderConfig
train: {learning_rate: 1e-5}    # t3s.train.TrainConfig
probe: {eval_every: 5}          # t3s.probe.ProbeConfig
eval: {max_new_tokens: 1024}    # t3s.evaluate.GenConfig
score: {dtype: float32}         # t3s.config.ScoreConfig
```

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
from t3s.modes import RUN_MODES
from t3s.data import RenderConfig
from t3s.diffusion import DIFFUSION_MODES, DiffusionConfig
from t3s.evaluate import GenConfig
from t3s.probe import ProbeConfig
from t3s.train import TrainConfig

MODES = RUN_MODES


@dataclass
class ScoreConfig:
    """Settings of `t3s score` (and the pipeline's scoring stage)."""

    dtype: str = field(default="auto", metadata={
        "help": "auto (= float32: bf16 rounding would decide the sign of small Δc) | float32 | bfloat16 | "
                "float16 (GPU only)"})
    batch_tokens: int = field(default=0, metadata={
        "help": "padded tokens per backbone batch (0: auto, 2048 on CPU, 16384 on GPU)", "ge": 0})
    max_batch: int = field(default=64, metadata={"help": "rows per batch at most", "ge": 1})
    chunk_tokens: int = field(default=0, metadata={
        "help": "positions per LM-head / log-softmax chunk (0: auto, cache-sized on CPU, 1024 on GPU)", "ge": 0})
    check: bool = field(default=True, metadata={"help": "compare one row with the model's own forward"})

    def __post_init__(self) -> None:
        check_fields(self, "score")


SECTIONS: dict[str, type] = {
    "render": RenderConfig, "train": TrainConfig, "probe": ProbeConfig, "eval": GenConfig, "score": ScoreConfig,
    "diffusion": DiffusionConfig,
}
OBJECTIVES = ("ar", "diffusion")


@dataclass
class RunConfig:
    student: str | None = field(default=None, metadata={"help": "θ_0: model directory or hub id"})
    train_data: str | None = field(default=None, metadata={"help": "teacher traces with gold answers"})
    eval_data: str | None = field(default=None, metadata={"help": "held-out prompts with gold answers"})
    modes: list[str] = field(default_factory=lambda: ["sft", "t3s"], metadata={"help": f"any of {MODES}"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "training seeds (data order)"})
    threshold: float | str = field(default=0.0, metadata={
        "help": "anchors: Δc > threshold; auto: 0, with tokens near-certain at θ_0 and θ_b in neither group",
        "words": ("auto",)})
    rrt: bool = field(default=True, metadata={"help": "also build θ_0 + (θ_T − θ_b) from the SFT run"})
    objective: str = field(default="ar", metadata={"help": "ar | diffusion (a masked-diffusion student)"})
    selector: str | None = field(default=None, metadata={"help": "diffusion: the AR selector model (its probe "
                                                                  "and scores give Δc)"})
    selector_train: dict[str, Any] = field(default_factory=dict, metadata={"help": "diffusion: train keys that "
                                                                                   "differ for the selector's probe"})
    probe_student: bool = field(default=False, metadata={"help": "diffusion: also probe the student itself"})
    teachers: dict[str, Any] = field(default_factory=dict, metadata={"help": "teacher mixture: name -> training "
                                                                              "set (instead of train_data)"})
    mixture_budget: float = field(default=0.0, metadata={"help": "mixture steps = train.max_steps × this "
                                                                 "(0: the number of teachers)",
                                                                 "ge": 0})
    render: RenderConfig = field(default_factory=RenderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: GenConfig = field(default_factory=GenConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        check_fields(self, "")
        if isinstance(self.threshold, str) and self.threshold != "auto":
            raise T3SError(f"threshold must be a number or auto, got '{self.threshold}'")
        if self.objective not in OBJECTIVES:
            raise T3SError(f"objective must be one of {OBJECTIVES}, got '{self.objective}'")
        if self.objective == "diffusion":
            bad = [m for m in self.modes if m not in DIFFUSION_MODES]
            if bad:
                raise T3SError(f"a diffusion student trains the modes {', '.join(DIFFUSION_MODES)}; "
                               f"not {', '.join(bad)}")
            # vLLM serves autoregressive models only: refuse before any stage runs
            if self.eval.backend == "vllm":
                raise T3SError("eval.backend=vllm cannot evaluate a diffusion student (vLLM has no masked-diffusion "
                               "models); use eval.backend=hf (the diffusion sampler)")
            if self.probe_student and self.probe.backend == "vllm":
                raise T3SError("probe.backend=vllm cannot probe a diffusion student (probe_student: true); use "
                               "probe.backend=hf, or probe_student: false (the AR selector's probe may use vllm)")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in self.seeds):
            raise T3SError(f"seeds must be a list of integers, got {self.seeds!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise T3SError(f"modes must be a non-empty list of {', '.join(MODES)}; got {self.modes}")
        if not self.seeds:
            raise T3SError("seeds must list at least one seed")

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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                flat: tuple[str, ...] = ("train", "render")) -> RunConfig:
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
                raise T3SError(f"unknown config key '{key}' (keys here: {', '.join(known)}; or section.key with "
                               f"sections {', '.join(SECTIONS)})")
            parts = [owner, *parts]
        _set(raw, parts, parse_value(value))
    unknown = sorted(set(raw) - _TOP - set(SECTIONS))
    if unknown:
        raise T3SError(f"{where}: unknown key(s) {', '.join(unknown)} "
                       f"(top-level keys: {', '.join(sorted(_TOP))}; sections: {', '.join(SECTIONS)})")
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
