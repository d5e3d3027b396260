"""A tiny built-in student and data set for tests and the demo (no download needed).

The tokenizer is a byte-level BPE trained offline on generated arithmetic text; the model is a 2-layer Llama
built from a config. Both are saved as an ordinary Hugging Face directory, so every command treats them like
any other model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from t3s.artifacts import atomic_dir

SPECIALS = ["<|pad|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
# Prompt turns end with a newline; the assistant turn ends with EOS, so the response tokens are exactly
# the assistant's text plus EOS.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ '<|eos|>' }}{% else %}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def arithmetic_row(rng: random.Random, i: int) -> dict:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    ones = a % 10 + b % 10
    carry = ones // 10
    tens = a // 10 + b // 10 + carry
    steps = f"Ones: {a % 10} + {b % 10} = {ones}, write {ones % 10} carry {carry}. "
    steps += f"Tens: {a // 10} + {b // 10} + {carry} = {tens}. "
    return {
        "id": f"add-{i:04d}",
        "prompt": f"What is {a} + {b}?",
        "response": f"Let us add column by column. {steps}So the answer is \\boxed{{{a + b}}}.",
        "answer": str(a + b),
    }


def terse_response(row: dict) -> str:
    a, b = row["prompt"].removeprefix("What is ").removesuffix("?").split(" + ")
    return f"{a} + {b} = {row['answer']}. The answer is \\boxed{{{row['answer']}}}."


def make_rows(n: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [arithmetic_row(rng, i) for i in range(n)]


def build_tokenizer(corpus: list[str], vocab_size: int = 384, split_digits: bool = False):
    """Byte-level BPE trained offline on `corpus`, with the chat template above. `split_digits`: words are
    pre-split so that every digit is its own token (an optional leading space included), and numbers are
    spelled digit by digit."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if split_digits:
        words = Regex(r" ?\d| ?[A-Za-z]+| ?[^\sA-Za-z\d]+|\s+")
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(words, behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|eos|>")
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_model(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(torch.float32)


def build_mask_model(vocab_size: int, mask_id: int, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4):
    """A tiny bidirectional mask predictor (ModernBERT from a config) for the diffusion path."""
    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    cfg = ModernBertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=512,
        global_attn_every_n_layers=1,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        cls_token_id=None,
        sep_token_id=None,
    )
    cfg.mask_token_id = mask_id
    torch.manual_seed(seed)
    return ModernBertForMaskedLM(cfg).to(torch.float32)


def save_llada2_like(
    out: str | Path,
    tok,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    **config,
) -> Path:
    """A LLaDA-2-shaped mask predictor (`t3s/tinyllada2.py`, loaded as remote code the way LLaDA2.0-mini is:
    `trust_remote_code`, AutoModelForCausalLM -> the LM, AutoModel -> the bare backbone) saved to `out` with `tok`."""
    import shutil

    import torch

    from t3s import tinyllada2

    out = Path(out)
    cfg = tinyllada2.TinyLlada2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        mask_token_id=tok.mask_token_id,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **config,
    )
    torch.manual_seed(seed)
    tinyllada2.TinyLlada2ForCausalLM(cfg).to(torch.float32).save_pretrained(out)
    shutil.copy(tinyllada2.__file__, out / "modeling_tinyllada2.py")
    c = json.loads((out / "config.json").read_text())
    c["architectures"] = ["TinyLlada2ForCausalLM"]
    c["auto_map"] = {
        "AutoConfig": "modeling_tinyllada2.TinyLlada2Config",
        "AutoModel": "modeling_tinyllada2.TinyLlada2Model",
        "AutoModelForCausalLM": "modeling_tinyllada2.TinyLlada2ForCausalLM",
    }
    (out / "config.json").write_text(json.dumps(c, indent=2))
    tok.save_pretrained(out)
    return out


def pretrain_student(
    model_dir: Path, data: Path, steps: int, diffusion: bool, trust_remote_code: bool = False, progress: bool = False
) -> None:
    """Train a tiny model in place on `data` with t3s's own trainer (quietly, unless `progress`): lr 3e-3 cosine,
    batch 16, float32."""
    import shutil

    from t3s.config import RenderConfig, TrainConfig
    from t3s.objectives import Autoregressive, MaskedDiffusion
    from t3s.train import train

    cfg = TrainConfig(
        learning_rate=3e-3,
        max_steps=steps,
        per_device_train_batch_size=16,
        dtype="float32",
        lr_scheduler_type="cosine",
        logging_steps=max(1, steps),
        trust_remote_code=trust_remote_code,
    )
    work = model_dir.with_name(f".{model_dir.name}.pretrain")
    train(
        str(model_dir),
        str(data),
        work,
        cfg,
        RenderConfig(),
        progress=progress,
        objective=MaskedDiffusion() if diffusion else Autoregressive(),
    )
    shutil.rmtree(model_dir)
    (work / "model").rename(model_dir)
    (model_dir / "t3s_step.json").unlink(missing_ok=True)  # this is θ_0 of the runs that start from it
    shutil.rmtree(work)


def build(
    out: str | Path,
    rows: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    diffusion: bool = False,
    pretrain: bool = True,
) -> Path:
    """Write `out/model` (tokenizer + model), `out/train.jsonl` and `out/train-terse.jsonl` (the same prompts
    answered by a terser "teacher", for mixtures). `diffusion`: the tokenizer also gets a mask
    token, `out/dllm` holds a tiny bidirectional student sharing it (`out/model` is then its AR selector) and
    `out/dllm2` a LLaDA-2-shaped one (remote code, never pretrained: the sampler's cache and attention tests);
    with `pretrain`, both are first trained to answer the prompts in the terse style (they memorise them), so that
    SFT on the step-by-step traces shows an imitation shock (≈ 30 s)."""
    data = make_rows(rows, seed)
    corpus = [r["prompt"] + "\n" + r["response"] for r in make_rows(512, seed + 1)]
    with atomic_dir(out, overwrite) as tmp:
        tok = build_tokenizer(corpus)
        if diffusion:
            tok.add_special_tokens({"mask_token": "<|mask|>"})  # appended: the other ids do not move
        model = build_model(len(tok), seed)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        if diffusion:
            dllm = build_mask_model(len(tok), tok.mask_token_id, seed)
            dllm.save_pretrained(tmp / "dllm")
            tok.save_pretrained(tmp / "dllm")
            save_llada2_like(tmp / "dllm2", tok, seed)
        with (tmp / "train.jsonl").open("w") as fh:
            for r in data:
                fh.write(json.dumps(r) + "\n")
        with (tmp / "train-terse.jsonl").open("w") as fh:  # a second "teacher": the same prompts, tersely
            for r in data:
                fh.write(json.dumps({**r, "response": terse_response(r)}) + "\n")
        if diffusion and pretrain:
            pretrain_student(tmp / "model", tmp / "train-terse.jsonl", 150, diffusion=False)
            pretrain_student(tmp / "dllm", tmp / "train-terse.jsonl", 2500, diffusion=True)
    return Path(out)
