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
            [pre_tokenizers.Split(words, behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
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
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=512,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(torch.float32)


def build(out: str | Path, rows: int = 64, seed: int = 0, overwrite: bool = False) -> Path:
    """Write `out/model` (tokenizer + model) and `out/train.jsonl`."""
    data = make_rows(rows, seed)
    corpus = [r["prompt"] + "\n" + r["response"] for r in make_rows(512, seed + 1)]
    with atomic_dir(out, overwrite) as tmp:
        tok = build_tokenizer(corpus)
        model = build_model(len(tok), seed)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        with (tmp / "train.jsonl").open("w") as fh:
            for r in data:
                fh.write(json.dumps(r) + "\n")
    return Path(out)
