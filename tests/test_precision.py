"""Every precision decision is a pure function (t3s.models): the inference precision, the training plan, and
whether a CPU runs bf16 fast. These tests pin them for GPUs and both kinds of CPU on any machine, and show on
the CPU what the GPU default protects against: a 1e-5 AdamW update that bf16 weights cannot hold."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from t3s import T3SError
from t3s.models import bf16_decision, resolve_precision, training_plan

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
AVX512_BF16 = {"sse2", "avx", "avx2", "avx512f", "avx512_bf16"}
AVX2_ONLY = {"sse2", "avx", "avx2", "fma"}


@pytest.mark.parametrize(
    "flags, cap, isa, env, want",
    [
        (AVX512_BF16, "AVX512", None, None, True),
        ({"sse2", "avx2", "avx512f", "amx_bf16", "amx_tile"}, "AVX512", None, None, True),
        (AVX2_ONLY, "AVX2", None, None, False),  # e.g. AMD EPYC (Zen 2/3), most laptops: bf16 at ~1 GFLOP/s
        ({"sse2", "avx2", "avx512f"}, "AVX512", None, None, False),  # AVX-512 without BF16 (Skylake, Cascade Lake)
        (AVX512_BF16, "AVX2", None, None, False),  # ATEN_CPU_CAPABILITY=avx2 lowers PyTorch's kernels
        (AVX512_BF16, "AVX512", "AVX2", None, False),  # ONEDNN_MAX_CPU_ISA caps the matmuls
        (AVX512_BF16, "AVX512", "AVX512_CORE_BF16", None, True),
        (AVX2_ONLY, "AVX2", None, "1", True),  # T3S_CPU_BF16 forces the answer
        (AVX512_BF16, "AVX512", None, "0", False),
    ],
)
def test_bf16_decision_on_x86(flags, cap, isa, env, want):
    assert bf16_decision(flags, cap, isa, env)[0] is want


def test_bf16_decision_elsewhere_measures():
    assert bf16_decision(None, "DEFAULT", None, None, measure=lambda: 3.0)[0] is True  # e.g. Apple M2 and later
    assert bf16_decision({"fp", "asimd"}, "DEFAULT", None, None, measure=lambda: 0.05)[0] is False  # ARM w/o bf16
    assert bf16_decision(None, "DEFAULT", None, None)[0] is False  # nothing known: fp32


def test_training_plan_on_a_gpu_keeps_fp32_master_weights():
    p = training_plan("auto", "cuda", gpu_bf16=True)
    assert (p.load, p.compute, p.master, p.optimizer_state) == (F32, BF16, F32, F32)
    assert p.trainer_bf16 and not p.trainer_fp16
    p = training_plan("auto", "cuda", gpu_bf16=False)  # e.g. V100: fp16 autocast with a gradient scaler
    assert (p.load, p.compute, p.master, p.trainer_fp16, p.trainer_bf16) == (F32, F16, F32, True, False)
    p = training_plan("float32", "cuda", gpu_bf16=True)
    assert (p.load, p.compute, p.trainer_bf16, p.trainer_fp16) == (F32, F32, False, False)
    p = training_plan("auto", "cuda", pure_bf16=True, gpu_bf16=True)  # opt-in, says what it costs
    assert (p.load, p.compute, p.master, p.optimizer_state) == (BF16, BF16, BF16, BF16) and "lost" in p.note
    p = training_plan("auto", "cuda", lora=True, gpu_bf16=True)  # fp32 base: adapters merge into it exactly
    assert (p.load, p.compute, p.master) == (F32, BF16, F32)
    with pytest.raises(T3SError, match="pure_bf16 needs bf16"):
        training_plan("float32", "cuda", pure_bf16=True)


def test_training_plan_on_each_kind_of_cpu():
    fast = training_plan("auto", "cpu", cpu_bf16=True)
    assert (fast.load, fast.compute, fast.master, fast.trainer_bf16) == (F32, BF16, F32, True)
    slow = training_plan("auto", "cpu", cpu_bf16=False)
    assert (slow.load, slow.compute, slow.master, slow.trainer_bf16) == (F32, F32, F32, False)
    with pytest.raises(T3SError, match="float16 is not supported on CPU"):
        training_plan("float16", "cpu")
    assert resolve_precision("auto", "cpu", cpu_bf16=False).name == "float32"
    assert resolve_precision("auto", "cpu", cpu_bf16=True).name == "float32+autocast-bfloat16"
    assert resolve_precision("auto", "cuda").weights in (BF16, F16)  # inference on a GPU: half-precision weights


def test_trainer_arguments_follow_the_plan():
    from t3s.config import TrainConfig
    from t3s.objectives.base import training_arguments

    args = training_arguments(TrainConfig(), "x", False, plan=training_plan("auto", "cuda", gpu_bf16=True))
    assert args["bf16"] and not args["fp16"] and not args["use_cpu"]
    args = training_arguments(TrainConfig(), "x", False, plan=training_plan("auto", "cpu", cpu_bf16=False))
    assert not args["bf16"] and not args["fp16"] and args["use_cpu"]


def _resolved_in(env: dict) -> str:
    code = (
        "from t3s.models import resolve_precision, training_plan, cpu_bf16_fast; "
        "print(resolve_precision('auto', 'cpu').name, training_plan('auto', 'cpu').compute, cpu_bf16_fast()[1])"
    )
    e = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "T3S_CPU_BF16")}
    r = subprocess.run([sys.executable, "-c", code], env={**e, **env}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_auto_on_an_avx2_only_cpu_is_fp32():
    """ATEN_CPU_CAPABILITY=avx2 + ONEDNN_MAX_CPU_ISA=AVX2 make this machine compute like an AVX2-only one (bf16
    matmuls then run at a few GFLOP/s here): `auto` must choose fp32 there, and T3S_CPU_BF16 overrides."""
    out = _resolved_in({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert out.startswith("float32 torch.float32 ")
    out = _resolved_in({"T3S_CPU_BF16": "1"})
    assert out.startswith("float32+autocast-bfloat16 torch.bfloat16 T3S_CPU_BF16=1")
    out = _resolved_in({"T3S_CPU_BF16": "0"})
    assert out.startswith("float32 torch.float32 T3S_CPU_BF16=0")


def _lost(before: dict, kept: dict, pure: dict, norm: bool) -> float:
    """Among the weights the fp32-master step moved, the fraction the pure-bf16 step left at their value."""
    names = [n for n in before if ("norm" in n) == norm and before[n].dim() == (1 if norm else 2)]
    moved = lost = 0
    for n in names:
        m = kept[n] != before[n]
        moved += int(m.sum())
        lost += int((m & (pure[n] == before[n].to(BF16))).sum())
    assert moved > 0
    return lost / moved


def test_pure_bf16_weights_lose_a_1e5_adamw_update_that_the_default_keeps(tiny, tmp_path):
    """One AdamW step at the paper's lr (1e-5) through `t3s train`: with the default plan (fp32 master weights)
    every weight with a gradient moves; with pure-bf16 weights most matrix weights and every norm weight keep
    their value (the update is below half of bf16's spacing)."""
    from t3s.config import load_config
    from t3s.train import train

    before = load_file(str(tiny / "model" / "model.safetensors"))
    common = ["max_steps=1", "learning_rate=1e-5", "per_device_train_batch_size=8", "max_grad_norm=0"]
    cfg = load_config(None, common + ["dtype=bfloat16"])
    s = train(
        str(tiny / "model"), str(tiny / "train.jsonl"), tmp_path / "default", cfg.train, cfg.render, progress=False
    )
    assert s["precision_plan"]["master"] == "float32"
    cfg = load_config(None, common + ["dtype=bfloat16", "pure_bf16=true"])
    s = train(str(tiny / "model"), str(tiny / "train.jsonl"), tmp_path / "pure", cfg.train, cfg.render, progress=False)
    assert s["precision_plan"]["master"] == "bfloat16"
    kept = load_file(str(tmp_path / "default" / "model" / "model.safetensors"))
    pure = load_file(str(tmp_path / "pure" / "model" / "model.safetensors"))
    assert all(v.dtype == F32 for v in kept.values()) and all(v.dtype == BF16 for v in pure.values())
    # the default moves every weight that has a gradient (embedding rows of unseen tokens have none)
    assert all(bool((kept[n] != before[n]).any()) for n in before)
    assert _lost(before, kept, pure, norm=False) > 0.5  # most matrix updates are lost...
    assert _lost(before, kept, pure, norm=True) == 1.0  # ...and every norm update (weights near 1, spacing 2^-7)


def test_a_deepspeed_save_is_its_fp32_master_weights(tiny, tmp_path):
    """DeepSpeed trains a bf16 module against fp32 master weights; what t3s saves (θ_b, trained models) is the
    masters, so Δc does not inherit bf16 rounding. A stand-in engine: the module cast to bf16, one parameter
    frozen (no master copy), masters that bf16 cannot represent, reached through DeepSpeed's own entry point
    (`deepspeed.utils.safe_get_full_fp32_param`, a stand-in here: DeepSpeed needs a GPU; `make gpu-check` runs
    the real one).
    The record beside the save, and the warning `t3s score` gives for a 16-bit save of fp32 masters."""
    import json
    import types

    from transformers import AutoModelForCausalLM

    from t3s.dist import save_trained
    from t3s.models import rounding_note, saved_step_record, stored_dtype

    model = AutoModelForCausalLM.from_pretrained(tiny / "model", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    masters = {n: p.detach() + 1e-4 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    frozen = "model.norm.weight"
    model.get_parameter(frozen).requires_grad_(False)
    model.to(torch.bfloat16)  # the engine's module
    name_of = {id(p): n for n, p in model.named_parameters()}
    gathered = []

    def safe_get_full_fp32_param(p):  # every process calls it for every parameter, in order (a collective)
        gathered.append(name_of[id(p)])
        return None if not p.requires_grad else masters[name_of[id(p)]].clone()

    class Engine:  # what the Trainer exposes under DeepSpeed
        is_deepspeed_enabled = True
        args = types.SimpleNamespace(should_save=True)
        accelerator = types.SimpleNamespace(unwrap_model=lambda m: m)

        def __init__(self, m):
            self.model = m

        def save_model(self, out):  # the Trainer's own save: the 16-bit module (what t3s saved before)
            self.model.save_pretrained(out)

    out = tmp_path / "saved"
    save_trained(Engine(model), out, safe_get_full_fp32_param)
    assert gathered == [n for n, _ in model.named_parameters()]
    saved = load_file(out / "model.safetensors")
    for n, w in masters.items():
        if n != frozen:
            assert saved[n].dtype == torch.float32 and torch.equal(saved[n], w), n
    assert saved[frozen].dtype == torch.float32  # the module's value, widened exactly
    assert torch.equal(saved[frozen], model.get_parameter(frozen).detach().float())
    assert stored_dtype(out) == "float32" and json.loads((out / "config.json").read_text())["dtype"] == "float32"
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.equal(reloaded.get_parameter("model.embed_tokens.weight"), masters["model.embed_tokens.weight"])

    (out / "t3s_step.json").write_text(json.dumps(saved_step_record(3, stored_dtype(out), "float32")))
    assert rounding_note(out) is None
    rounded = tmp_path / "rounded"  # the engine's module, as the Trainer's own save writes it
    Engine(model).save_model(rounded)
    assert stored_dtype(rounded) == "bfloat16"
    (rounded / "t3s_step.json").write_text(json.dumps(saved_step_record(3, "bfloat16", "float32")))
    assert "trained with float32 master weights but saved in bfloat16" in rounding_note(rounded)
    assert rounding_note(tiny / "model") is None  # a base model's dtype is its own


def test_activation_checkpointing_uses_the_field_the_installed_transformers_has():
    """transformers 5.23 renamed gradient_checkpointing to activation_checkpointing (the old name is a deprecated
    alias there); the lent GPU image's 5.17 has only the old name."""
    import dataclasses

    from transformers import TrainingArguments

    from t3s.objectives.base import checkpointing_argument

    assert checkpointing_argument(True, ["gradient_checkpointing", "bf16"]) == {"gradient_checkpointing": True}
    both = ["activation_checkpointing", "gradient_checkpointing"]
    assert checkpointing_argument(False, both) == {"activation_checkpointing": False}
    (name,) = checkpointing_argument(True)
    assert name in {f.name for f in dataclasses.fields(TrainingArguments)}
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none", **checkpointing_argument(True))
    assert getattr(args, name) is True


def test_the_loss_stays_scaled_on_a_trainer_without_loss_is_scaled_for_ga():
    """transformers < 5.19 (the GPU image's 5.17) has no Trainer.loss_is_scaled_for_ga: t3s's trainers then set
    the flags by which that Trainer leaves their already-normalised loss alone, and drop TRL's string stand-in."""
    from types import SimpleNamespace

    import transformers
    from packaging.version import Version

    from t3s.objectives import base

    class Old:  # a Trainer class of transformers 5.17: no such attribute
        pass

    class New:
        loss_is_scaled_for_ga = None

    old = Version(transformers.__version__) < Version("5.19")
    assert base.loss_scaled_without_the_flag(transformers.Trainer) is old  # the installed one, by its version
    assert base.loss_scaled_without_the_flag(Old) and not base.loss_scaled_without_the_flag(New)
    t = SimpleNamespace(model_accepts_loss_kwargs=False, compute_loss_func="non-None value to disable scaling")
    base.keep_the_loss_scaled(t, New)  # a Trainer with the flag: nothing to change
    assert t.model_accepts_loss_kwargs is False and t.compute_loss_func is not None
    base.keep_the_loss_scaled(t, Old)
    assert t.model_accepts_loss_kwargs is True and t.compute_loss_func is None
