"""Loading masked-diffusion students: remote code like LLaDA's, LLaDA-2's layout with its head, class choice,
hub ids from the offline cache, placement."""

import json

import numpy as np
import pytest
import torch

from t3s import T3SError
from t3s.config import DiffusionConfig, GenConfig, load_config
from t3s.models import load_tokenizer, resolve_precision
from t3s.objectives.diffusion import load_mask_predictor, sample

FP32 = resolve_precision("float32")

FP32 = resolve_precision("float32")


def _import_remote_code(src, files: dict):
    """Write a model's remote-code files into the package directory `src` and import its modeling module, as
    transformers would from a model directory."""
    import importlib
    import sys

    src.mkdir(exist_ok=True)
    for name, text in files.items():
        (src / name).write_text(text)
    (src / "__init__.py").write_text("")
    sys.path.insert(0, str(src.parent))
    try:
        modeling = next(n for n in files if n.startswith("modeling_"))
        return importlib.import_module(f"{src.name}.{modeling[:-3]}")
    finally:
        sys.path.remove(str(src.parent))


REMOTE_CONFIG = """
from transformers import PretrainedConfig


class TinyLladaConfig(PretrainedConfig):
    model_type = "tinyllada"

    def __init__(self, vocab_size=8, hidden=32, mask_token_id=None, **kw):
        self.vocab_size, self.hidden, self.mask_token_id = vocab_size, hidden, mask_token_id
        super().__init__(**kw)
"""

REMOTE_MODEL = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tinyllada import TinyLladaConfig


class TinyLladaModelLM(PreTrainedModel):
    """Like LLaDA's remote code: registered under AutoModel, forward(input_ids) without an attention mask."""
    config_class = TinyLladaConfig

    def __init__(self, config):
        super().__init__(config)
        self.emb = torch.nn.Embedding(config.vocab_size, config.hidden)
        self.mix = torch.nn.TransformerEncoderLayer(config.hidden, 2, 2 * config.hidden, dropout=0.0, batch_first=True)
        self.head = torch.nn.Linear(config.hidden, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, **kw):
        return MaskedLMOutput(logits=self.head(self.mix(self.emb(input_ids))))
'''


def test_remote_code_student_like_llada(dtiny, tmp_path):
    """A trust_remote_code model registered under AutoModel (as LLaDA is), mask token id from its config, no
    attention_mask argument: it loads, trains with the diffusion objective and samples."""
    import shutil

    from t3s.train import train

    tok = load_tokenizer(dtiny / "dllm")
    tok.mask_token = None  # the mask token id must come from the model's config
    src = tmp_path / "src"
    mod = _import_remote_code(src, {"configuration_tinyllada.py": REMOTE_CONFIG, "modeling_tinyllada.py": REMOTE_MODEL})
    d = tmp_path / "model"
    mod.TinyLladaModelLM(mod.TinyLladaConfig(vocab_size=len(tok), mask_token_id=384)).save_pretrained(d)
    for f in ("configuration_tinyllada.py", "modeling_tinyllada.py"):
        shutil.copy(src / f, d / f)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_tinyllada.TinyLladaConfig",
        "AutoModel": "modeling_tinyllada.TinyLladaModelLM",
    }
    (d / "config.json").write_text(json.dumps(cfg))
    load_tokenizer(dtiny / "dllm").save_pretrained(d)

    from t3s.objectives.diffusion import is_mask_predictor, mask_token_id

    assert is_mask_predictor(d)
    with pytest.raises(T3SError):
        load_mask_predictor(d, FP32)  # remote code needs trust_remote_code
    model = load_mask_predictor(d, FP32, trust_remote_code=True)
    assert type(model).__name__ == "TinyLladaModelLM" and mask_token_id(model, tok) == 384
    out = sample(
        model,
        tok,
        [[5, 6, 7], [5, 6]],
        GenConfig(max_new_tokens=8, batch_size=2),
        DiffusionConfig(block_length=4),
        FP32,
        progress=False,
    )
    assert all(len(o[0].token_ids) <= 8 and 384 not in o[0].token_ids for o in out)
    cfg = load_config(None, ["max_steps=2", "per_device_train_batch_size=4", "dtype=float32", "trust_remote_code=true"])
    s = train(
        str(d),
        str(dtiny / "train.jsonl"),
        tmp_path / "run",
        cfg.train,
        cfg.render,
        progress=False,
        objective=cfg.diffusion,
    )
    assert s["global_step"] == 2 and np.isfinite(s["train_loss"])


# ----------------------------------------------------------------------------------------------- LLaDA-2 layout

LLADA2_CONFIG = REMOTE_CONFIG.replace("TinyLladaConfig", "TinyLlada2Config").replace('"tinyllada"', '"llada2_moe"')

LLADA2_MODEL = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask_for_sdpa
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

from .configuration_tinyllada2 import TinyLlada2Config


class TinyLlada2Model(PreTrainedModel):
    """The bare backbone: what LLaDA2.0-mini's auto_map names under AutoModel. No head, no logits. Its mask
    handling is the published modeling_llada2_moe.py's (sdpa path): whatever attention_mask comes in goes through
    transformers' _prepare_4d_causal_attention_mask_for_sdpa (a 4-D mask passes as it is; a 2-D one with any zero
    becomes causal + padding; none, or all ones, becomes no mask), then into scaled_dot_product_attention with
    is_causal=False (the attention module's is_causal is False)."""
    config_class = TinyLlada2Config
    base_model_prefix = "model"
    _supports_sdpa = True  # as LLaDA2MoePreTrainedModel: loaded with attn_implementation=sdpa

    def __init__(self, config):
        super().__init__(config)
        self.emb = torch.nn.Embedding(config.vocab_size, config.hidden)
        self.qkv = torch.nn.Linear(config.hidden, 3 * config.hidden)
        self.out = torch.nn.Linear(config.hidden, config.hidden)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kw):
        h = self.emb(input_ids)
        mask = _prepare_4d_causal_attention_mask_for_sdpa(attention_mask, input_ids.shape, h, 0)
        q, k, v = self.qkv(h).unsqueeze(1).chunk(3, dim=-1)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return BaseModelOutput(last_hidden_state=h + self.out(a.squeeze(1)))


class TinyLlada2ModelLM(PreTrainedModel):
    """The LM (backbone + head): what its auto_map names under AutoModelForCausalLM, and its architectures."""
    config_class = TinyLlada2Config
    base_model_prefix = "model"
    _supports_sdpa = True  # as LLaDA2MoePreTrainedModel: loaded with attn_implementation=sdpa

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyLlada2Model(config)
        self.lm_head = torch.nn.Linear(config.hidden, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, **kw):
        return CausalLMOutput(logits=self.lm_head(self.model(input_ids, attention_mask).last_hidden_state))
'''


def _llada2_dir(tmp_path, tok, auto_map_keys=("AutoModel", "AutoModelForCausalLM")):
    """A local remote-code model directory with LLaDA2.0-mini's config layout: AutoModel -> the bare backbone,
    AutoModelForCausalLM -> the LM, architectures = the LM."""
    import shutil

    src = tmp_path / "src2"
    mod = _import_remote_code(
        src, {"configuration_tinyllada2.py": LLADA2_CONFIG, "modeling_tinyllada2.py": LLADA2_MODEL}
    )
    d = tmp_path / "llada2"
    torch.manual_seed(0)
    mod.TinyLlada2ModelLM(mod.TinyLlada2Config(vocab_size=len(tok), mask_token_id=tok.mask_token_id)).save_pretrained(d)
    for f in ("configuration_tinyllada2.py", "modeling_tinyllada2.py"):
        shutil.copy(src / f, d / f)
    cfg = json.loads((d / "config.json").read_text())
    full = {
        "AutoConfig": "configuration_tinyllada2.TinyLlada2Config",
        "AutoModel": "modeling_tinyllada2.TinyLlada2Model",
        "AutoModelForCausalLM": "modeling_tinyllada2.TinyLlada2ModelLM",
    }
    cfg["auto_map"] = {k: v for k, v in full.items() if k == "AutoConfig" or k in auto_map_keys}
    if "AutoModelForCausalLM" not in auto_map_keys:
        cfg["architectures"] = ["TinyLlada2Model"]  # a checkpoint of the bare backbone
    (d / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(d)
    return d


def test_llada2_layout_loads_with_its_head(dtiny, tmp_path):
    """LLaDA2.0-mini maps AutoModel to the headless backbone; the loader must take the class with the head."""
    from t3s.objectives.diffusion import is_mask_predictor, mask_predictor_class, read_config

    tok = load_tokenizer(dtiny / "dllm")
    d = _llada2_dir(tmp_path, tok)
    assert is_mask_predictor(d)
    assert mask_predictor_class(read_config(d)) == "AutoModelForCausalLM"
    model = load_mask_predictor(d, FP32, trust_remote_code=True)
    assert type(model).__name__ == "TinyLlada2ModelLM"
    ids = torch.tensor([[5, 6, tok.mask_token_id]])
    assert model(input_ids=ids).logits.shape == (1, 3, len(tok))
    out = sample(
        model,
        tok,
        [[5, 6, 7]],
        GenConfig(max_new_tokens=8, batch_size=1),
        DiffusionConfig(block_length=4),
        FP32,
        progress=False,
    )
    assert len(out[0][0].token_ids) <= 8


def _bidirectional_reference(model, ids):
    """LLaDA-2's intended reading of one unpadded row, computed by hand from the fixture's weights: every
    position attends to every position."""
    m = model.model
    h = m.emb(ids)
    q, k, v = m.qkv(h).chunk(3, dim=-1)
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return model.lm_head(h + m.out(w @ v))


def test_llada2_attention_mask_training_and_sampling_calls(dtiny, tmp_path):
    """Training (no padding mask) and sampling (left-padded prompts) calls to a model that handles masks as the
    published LLaDA-2 code does: both must read the canvas bidirectionally and ignore the padding. A 2-D padding
    mask would make that code attend causally, silently."""
    from t3s.objectives.diffusion import attention_inputs, mask_style, predictor_logits

    tok = load_tokenizer(dtiny / "dllm")
    model = load_mask_predictor(_llada2_dir(tmp_path, tok), FP32, trust_remote_code=True).eval()
    assert mask_style(model) == "4d"
    with torch.no_grad():  # sharper attention than the init's: which positions a query sees changes its logits
        model.model.qkv.weight.mul_(30)
    rows = [torch.tensor([5, 6, 7, 8, 9, 10]), torch.tensor([11, 12, 13])]
    with torch.no_grad():
        refs = [_bidirectional_reference(model, r[None])[0] for r in rows]
        # the training call: one unpadded row, no mask given
        torch.testing.assert_close(predictor_logits(model, rows[0][None], None)[0], refs[0], atol=1e-5, rtol=1e-5)
        # the sampling call: left-padded batch with its padding mask
        L = max(len(r) for r in rows)
        x, att = torch.full((2, L), tok.pad_token_id), torch.zeros(2, L, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, L - len(r) :], att[i, L - len(r) :] = r, 1
        got = predictor_logits(model, x, att)
        for i, r in enumerate(rows):
            torch.testing.assert_close(got[i, L - len(r) :], refs[i], atol=1e-5, rtol=1e-5)
        # what the 2-D mask does to that code: causal attention, other logits (the defect the 4-D mask avoids)
        two_d = model(input_ids=x, attention_mask=att).logits
        assert (two_d[1, L - 3 :] - refs[1]).abs().max() > 1e-4  # 10x the tolerance above
    assert attention_inputs("4d", att, torch.float32)["attention_mask"].shape == (2, 1, L, L)
    out = sample(
        model,
        tok,
        [r.tolist() for r in rows],
        GenConfig(max_new_tokens=4, batch_size=2),
        DiffusionConfig(block_length=4),
        FP32,
        progress=False,
    )
    assert len(out) == 2 and all(len(o[0].token_ids) <= 4 for o in out)


def test_a_headless_mask_predictor_is_refused(dtiny, tmp_path):
    tok = load_tokenizer(dtiny / "dllm")
    d = _llada2_dir(tmp_path, tok, auto_map_keys=("AutoModel",))
    with pytest.raises(T3SError, match="no LM head"):
        load_mask_predictor(d, FP32, trust_remote_code=True)


def test_mask_predictor_class_choice():
    from t3s.objectives.diffusion import mask_predictor_class

    llada2 = {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {
            "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
            "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
            "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
        },
    }
    llada = {
        "architectures": ["LLaDAModelLM"],
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        },
    }
    assert mask_predictor_class(llada2) == "AutoModelForCausalLM"
    assert mask_predictor_class(llada) in ("AutoModel", "AutoModelForCausalLM")  # both name the LM
    assert mask_predictor_class({"architectures": ["ModernBertForMaskedLM"]}) == "AutoModelForMaskedLM"
    assert mask_predictor_class({"auto_map": {"AutoModel": "m.X"}}) == "AutoModel"  # last resort, then checked


def test_is_mask_predictor_reads_a_hub_id_from_the_offline_cache(dtiny, tmp_path):
    """`t3s train --model inclusionAI/LLaDA2.0-mini ...` must be recognised as a diffusion student from the hub
    cache (offline), not only from a local directory; and an AR hub id must not."""
    import subprocess
    import sys

    cache = tmp_path / "hub"
    for repo, cfg in (
        (
            "inclusionAI/LLaDA2.0-mini",
            {
                "architectures": ["LLaDA2MoeModelLM"],
                "model_type": "llada2_moe",
                "auto_map": {"AutoModel": "modeling_llada2_moe.LLaDA2MoeModel"},
            },
        ),
        ("Qwen/Qwen3-8B", {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}),
    ):
        snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps(cfg))
        (snap.parent.parent / "refs").mkdir()
        (snap.parent.parent / "refs" / "main").write_text("abc123")
    code = (
        "from t3s.objectives.diffusion import is_mask_predictor as m; "
        "print(m('inclusionAI/LLaDA2.0-mini'), m('Qwen/Qwen3-8B'))"
    )
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]
    # a hub id that is not in the cache (offline): one clear error
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "t3s",
            "eval",
            "--model",
            "nobody/nothing",
            "--data",
            str(dtiny / "train.jsonl"),
            "--out",
            str(tmp_path / "e"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "cannot read the config of 'nobody/nothing'" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_diffusion_student_honours_placement(dtiny, monkeypatch):
    """As the causal-LM loader: place=False (several processes, the Trainer or accelerate places or shards) leaves
    the weights where loading put them; place=True moves them to the plan's device (`meta` stands in for a GPU: a
    placement that ignored the flag would put them there), with the FSDP loading variables out of the way."""
    from t3s.models import Precision
    from t3s.objectives import MaskedDiffusion

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    seen = []
    import transformers

    real = transformers.PreTrainedModel.from_pretrained.__func__

    def spy(cls, *a, **kw):
        import os

        seen.append(os.environ.get("ACCELERATE_USE_FSDP"))
        return real(cls, *a, **kw)

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(spy))
    meta = Precision(torch.float32, None, "meta")
    left = MaskedDiffusion().load(dtiny / "dllm", meta, place=False)
    assert {p.device.type for p in left.parameters()} == {"cpu"}
    moved = MaskedDiffusion().load(dtiny / "dllm", meta, place=True)
    assert {p.device.type for p in moved.parameters()} == {"meta"}
    assert seen == ["true", None]  # the Trainer's load keeps the FSDP path; a whole-model load does not
    assert __import__("os").environ["ACCELERATE_USE_FSDP"] == "true"  # restored afterwards


# ----------------------------------------------------------------------------------------------- LLaDA 2.1

# LLaDA2.1-mini's published config.json (huggingface.co/inclusionAI/LLaDA2.1-mini), the keys it holds; the sizes
# are scaled down below, everything else is kept as published
LLADA21_MINI_CONFIG = {
    "architectures": ["LLaDA2MoeModelLM"],
    "model_type": "llada2_moe",
    "auto_map": {
        "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
        "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
        "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
    },
    "hidden_size": 2048,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "intermediate_size": 5120,
    "num_experts": 256,
    "num_experts_per_tok": 8,
    "num_shared_experts": 1,
    "moe_intermediate_size": 512,
    "first_k_dense_replace": 1,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "score_function": "sigmoid",
    "rope_theta": 600000,
    "partial_rotary_factor": 0.5,
    "rotary_dim": 64,
    "rope_scaling": None,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
    "pad_token_id": 156892,
    "sliding_window": 4096,
    "use_sliding_window": False,
    "use_qk_norm": True,
    "use_cache": False,
    "vocab_size": 157184,
    "dtype": "bfloat16",
}


def _llada21_dir(tmp_path, tok):
    """A model directory laid out as LLaDA2.1-mini's: its config (sizes scaled to a CPU: 4:1 query to key-value
    heads as published), its auto_map's file and class names, served by t3s's LLaDA-2-shaped remote code."""
    import t3s.tinyllada2 as fixture
    from t3s.tiny import save_llada2_like

    d = save_llada2_like(tmp_path / "llada21", tok, hidden=64, layers=2, heads=4, kv_heads=1)
    (d / "modeling_tinyllada2.py").rename(d / "modeling_llada2_moe.py")
    with (d / "modeling_llada2_moe.py").open("a") as fh:  # the published class names
        fh.write("\nLLaDA2MoeConfig = TinyLlada2Config\nLLaDA2MoeModel = TinyLlada2Model\n")
        fh.write("LLaDA2MoeModelLM = TinyLlada2ForCausalLM\n")
    (d / "configuration_llada2_moe.py").write_text("from .modeling_llada2_moe import LLaDA2MoeConfig  # noqa\n")
    ours = json.loads((d / "config.json").read_text())
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1}
    small |= {"head_dim": 16, "intermediate_size": 128, "rotary_dim": 8, "vocab_size": len(tok)}
    cfg = {**LLADA21_MINI_CONFIG, **small, "pad_token_id": tok.pad_token_id, "mask_token_id": tok.mask_token_id}
    cfg |= {"eos_token_id": tok.eos_token_id, "transformers_version": ours["transformers_version"]}
    (d / "config.json").write_text(json.dumps(cfg))
    assert fixture.TinyLlada2Config.model_type == cfg["model_type"]
    return d


def test_llada21_loads_trains_and_samples_as_llada2(dtiny, tmp_path):
    """LLaDA 2.1 keeps LLaDA 2.0's layout (model_type llada2_moe, the LM under AutoModelForCausalLM): recognised,
    loaded with its head, trained by the diffusion objective, sampled block-causally (auto) with the cache and
    threshold decoding giving the uncached result."""
    from t3s.objectives.diffusion import is_mask_predictor, mask_predictor_class, read_config, sampler_attention
    from t3s.train import train

    tok = load_tokenizer(dtiny / "dllm")
    d = _llada21_dir(tmp_path, tok)
    assert is_mask_predictor(d) and mask_predictor_class(read_config(d)) == "AutoModelForCausalLM"
    model = load_mask_predictor(d, FP32, trust_remote_code=True)
    assert type(model).__name__ == "TinyLlada2ForCausalLM" and model.config.num_key_value_heads == 1
    assert sampler_attention("auto", model) == "block_causal"
    cfg = load_config(None, ["max_steps=2", "per_device_train_batch_size=4", "dtype=float32", "trust_remote_code=true"])
    s = train(
        str(d),
        str(dtiny / "train.jsonl"),
        tmp_path / "run",
        cfg.train,
        cfg.render,
        progress=False,
        objective=cfg.diffusion,
    )
    assert s["global_step"] == 2 and np.isfinite(s["train_loss"])
    trained = load_mask_predictor(tmp_path / "run" / "model", FP32, trust_remote_code=True).double()
    g = GenConfig(max_new_tokens=16, batch_size=2)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    plain = sample(trained, tok, prompts, g, DiffusionConfig(block_length=8), FP32, progress=False)
    fast = DiffusionConfig(block_length=8, cache="prefix", commit_threshold=0.9)
    fast_plain = DiffusionConfig(block_length=8, commit_threshold=0.9)
    assert [o[0].token_ids for o in sample(trained, tok, prompts, g, fast, FP32, progress=False)] == [
        o[0].token_ids for o in sample(trained, tok, prompts, g, fast_plain, FP32, progress=False)
    ]
    assert all(len(o[0].token_ids) <= 16 for o in plain)


def test_a_remote_code_models_rotary_buffer_is_computed_not_left_uninitialised(dtiny, tmp_path):
    """transformers 5 leaves a remote-code model's non-persistent buffers (LLaDA-2's rotary frequencies) as
    uninitialised memory unless its _init_weights covers them; the loaders recompute them from the class."""
    from t3s.models import load_causal_lm

    tok = load_tokenizer(dtiny / "dllm")
    d = _llada2_like = dtiny / "dllm2"
    cfg = json.loads((d / "config.json").read_text())
    rot = int(cfg["head_dim"] * cfg["partial_rotary_factor"]) // 2 * 2
    want = 1.0 / cfg["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)
    for load in (load_mask_predictor, load_causal_lm):
        for _ in range(2):
            model = load(_llada2_like, FP32, trust_remote_code=True)
            torch.testing.assert_close(model.model.rotary_emb.inv_freq, want)
    assert len(tok) == cfg["vocab_size"]


def test_building_the_pretrained_diffusion_world_trains_both_students(tmp_path, monkeypatch):
    """`t3s.tiny.build(diffusion=True)` with its students pretrained (make bench's world; the tests build it
    untrained) trains the AR selector and the ModernBERT student in place, each on the terse answers. The training
    itself is `t3s.tiny.pretrain_student` (recorded here, not run: 2650 steps)."""
    import t3s.tiny as tiny

    calls = []
    monkeypatch.setattr(
        tiny,
        "pretrain_student",
        lambda model, data, steps, diffusion: calls.append(
            (model.name, data.name, steps, diffusion, (model / "config.json").exists())
        ),
    )
    tiny.build(tmp_path / "w", rows=8, diffusion=True, pretrain=True)
    assert calls == [("model", "train-terse.jsonl", 150, False, True), ("dllm", "train-terse.jsonl", 2500, True, True)]
    calls.clear()
    tiny.build(tmp_path / "u", rows=8, diffusion=True, pretrain=False)
    assert calls == []
