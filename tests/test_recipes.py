"""The shipped accelerate configs and paper-scale recipes: they load, their estimate headers are what
bench/estimate.py computes, and the script's parameter counts match the models' published sizes."""

import re
import sys
from pathlib import Path

import pytest

from t3s.config import load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import estimate  # noqa: E402

ACCELERATE = {
    "ddp": ("MULTI_GPU", None),
    "deepspeed-zero2": ("DEEPSPEED", 2),
    "deepspeed-zero3": ("DEEPSPEED", 3),
    "fsdp2": ("FSDP", None),
}


@pytest.mark.parametrize("name", sorted(ACCELERATE))
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    c = load_config_from_file(str(ROOT / "examples" / "accelerate" / f"{name}.yaml"))
    kind, zero = ACCELERATE[name]
    assert str(c.distributed_type).endswith(kind) and c.num_processes == 8 and c.mixed_precision == "bf16"
    if zero:
        assert c.deepspeed_config["zero_stage"] == zero
    if kind == "FSDP":
        assert c.fsdp_config["fsdp_version"] == 2 and c.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_recipe_headers_are_the_scripts_estimates():
    assert estimate.check(ROOT) == []


@pytest.mark.parametrize("recipe", estimate.RECIPES, ids=lambda r: r.file)
def test_recipes_load_with_the_papers_settings(recipe):
    path = ROOT / "examples" / "recipes" / recipe.file
    cfg = load_config(path)
    text = path.read_text()
    assert (ROOT / recipe.accelerate).exists() and recipe.accelerate in text
    t = cfg.train
    rows_per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * recipe.gpus
    assert t.learning_rate == 1e-5 and rows_per_step == 64
    if cfg.objective == "ar":
        assert t.max_steps == 50 and recipe.train_seqs == 64 * 50
        assert cfg.probe.backend == cfg.eval.backend == "vllm" and cfg.eval.k == 16
    else:
        assert t.num_train_epochs == 20 and cfg.render.max_length == 16384 and recipe.train_seqs == 1000 * 20
    assert re.search(rf"{recipe.gpus} GPUs", text)


def test_parameter_counts_match_published_sizes():
    # model cards: Qwen3-8B 8.2B, Qwen3-32B 32.8B; Ling-mini-2.0 / LLaDA2.0-mini 16.26B total, 1.43B activated
    # (activated counts include the embedding table)
    assert estimate.QWEN3_8B.params()[0] / 1e9 == pytest.approx(8.2, rel=0.01)
    assert estimate.QWEN3_32B.params()[0] / 1e9 == pytest.approx(32.8, rel=0.01)
    total, active = estimate.LLADA2_MINI.params()
    emb = estimate.LLADA2_MINI.vocab * estimate.LLADA2_MINI.hidden
    assert total / 1e9 == pytest.approx(16.26, rel=0.01)
    assert (active + emb) / 1e9 == pytest.approx(1.43, rel=0.03)


def test_memory_arithmetic_per_zero_stage():
    r = estimate.RECIPES[0]
    n = r.arch.params()[0]
    by_stage = {
        z: estimate.memory_gb(r.arch, estimate.Recipe(**{**r.__dict__, "zero": z}), 0)["states"] for z in (0, 2, 3)
    }
    assert by_stage[0] * estimate.GIB == pytest.approx(16 * n)  # 2 + 2 + 12 bytes per parameter, unsharded
    assert by_stage[3] * estimate.GIB == pytest.approx(16 * n / r.gpus)
    assert by_stage[0] > by_stage[2] > by_stage[3]
