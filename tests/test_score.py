import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t3s import T3SError
from t3s.config import RenderConfig
from t3s.data import load_rows, render_rows
from t3s.models import load_causal_lm, resolve_precision
from t3s.score import (
    default_batch_tokens,
    default_chunk_tokens,
    length_batches,
    load_scores,
    response_logprobs,
    write_scores,
)

FP32 = resolve_precision("float32")


@pytest.fixture(scope="module")
def examples(tiny, tok):
    rows = load_rows(tiny / "train.jsonl")
    return render_rows(rows, tok, RenderConfig())[0]


def reference_ce(model, ex):
    """Per-token cross-entropy of the response from the model's own full forward, one row at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0].float()
    tgt = torch.tensor(ex.input_ids[1:])
    ce = F.cross_entropy(logits[:-1], tgt, reduction="none")
    return -ce[ex.prompt_len - 1 :].numpy()


def other_architectures(vocab, tmp_path):
    """Small causal LMs of other families (tied embeddings, other backbone names) built from configs."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    yield "gpt2", GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=256))
    yield (
        "qwen2",
        Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                tie_word_embeddings=True,
            )
        ),
    )


def test_scores_equal_independent_cross_entropy(tiny, tok, examples, tmp_path):
    model = load_causal_lm(tiny / "model", FP32)
    models = [("llama", model), *other_architectures(len(tok), tmp_path)]
    for name, m in models:
        m.eval()
        got = response_logprobs(m, examples, FP32, batch_tokens=200, chunk_tokens=7, progress=False)
        for ex, lp in zip(examples, got):
            assert lp.shape == (len(ex.response_ids),)
            np.testing.assert_allclose(lp, reference_ce(m, ex), atol=1e-4, rtol=0, err_msg=name)


def test_batching_and_chunking_do_not_change_scores(tiny, examples):
    model = load_causal_lm(tiny / "model", FP32)
    a = response_logprobs(model, examples, FP32, batch_tokens=10**6, chunk_tokens=10**6, progress=False)
    b = response_logprobs(model, examples, FP32, batch_tokens=1, chunk_tokens=3, progress=False)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_lm_head_never_sees_more_than_a_chunk(tiny, examples):
    model = load_causal_lm(tiny / "model", FP32)
    seen = []
    h = model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    response_logprobs(model, examples, FP32, batch_tokens=10**6, chunk_tokens=16, progress=False)
    h.remove()
    total = sum(len(e.response_ids) for e in examples)
    assert all(len(s) == 2 and s[0] <= 16 for s in seen)  # flat positions, never (batch, seq, vocab)
    assert sum(s[0] for s in seen) == total  # only response positions go through the head


def test_length_batches_respect_budget_and_cover_all():
    lengths = [5, 50, 7, 49, 3, 100, 51]
    batches = length_batches(lengths, batch_tokens=110, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 110)
    assert batches[0] == [5]  # longest first: fails fast if memory is short


def test_write_and_load_round_trip(tiny, examples, tmp_path):
    model = load_causal_lm(tiny / "model", FP32)
    lps = response_logprobs(model, examples, FP32, progress=False)
    write_scores(tmp_path / "s", examples, lps, {"fingerprints": {}, "precision": "float32"}, overwrite=False)
    s = load_scores(tmp_path / "s")
    assert s.ids == [e.id for e in examples] and s.meta["tokens"] == sum(len(x) for x in lps)
    for ex, ids, lp, ref in zip(examples, s.response_ids, s.logprobs, lps):
        assert ids.tolist() == ex.response_ids
        np.testing.assert_array_equal(lp, ref)
    with pytest.raises(T3SError, match="already exists"):
        write_scores(tmp_path / "s", examples, lps, {}, overwrite=False)
    with pytest.raises(T3SError, match="not a t3s score directory"):
        load_scores(tmp_path)


def test_precision_rules():
    with pytest.raises(T3SError, match="float16 is not supported on CPU"):
        resolve_precision("float16", "cpu")
    # auto is bf16 autocast only on a CPU that executes bf16 fast (t3s.models.cpu_bf16_fast)
    p = resolve_precision("auto", "cpu", cpu_bf16=True)
    assert p.weights == torch.float32 and p.autocast == torch.bfloat16
    assert resolve_precision("auto", "cpu", cpu_bf16=False).autocast is None
    assert resolve_precision("float32", "cpu").autocast is None
    assert resolve_precision("bfloat16", "cpu", cpu_bf16=False).autocast == torch.bfloat16  # asked for: given


def test_auto_sizes_on_cpu_and_gpu():
    # CPU: one chunk of fp32 logits stays about cache-sized (24 MiB), within [16, 1024] positions; GPU: big batches
    assert default_chunk_tokens(49152, "cpu") == 128 and default_chunk_tokens(151936, "cpu") == 41
    assert default_chunk_tokens(384, "cpu") == 1024 and default_chunk_tokens(10**7, "cpu") == 16
    assert default_chunk_tokens(49152, "cuda") == 1024
    assert default_batch_tokens("cpu") == 2048 and default_batch_tokens("cuda") == 16384


def test_scoring_casts_the_head_once_and_keeps_no_copies_of_backbone_weights(tiny, examples):
    """Autocast caches a bf16 copy of each fp32 weight that requires grad and recasts the others at each use:
    during scoring the backbone's weights must not require grad and the head's must (its copy serves every
    chunk), frozen or not beforehand; every flag comes back after, and the scores are unchanged."""
    bf16 = resolve_precision("bfloat16", "cpu")
    model = load_causal_lm(tiny / "model", bf16)
    head = model.get_output_embeddings()
    frozen = next(q for q in model.base_model.parameters() if q is not head.weight)
    frozen.requires_grad_(False)  # a frozen weight (as under LoRA) stays frozen afterwards
    for head_frozen in (False, True):
        head.weight.requires_grad_(not head_frozen)
        before = {n: q.requires_grad for n, q in model.named_parameters()}
        seen, seen_head = [], []
        hooks = [
            model.base_model.register_forward_pre_hook(
                lambda mod, args: seen.append([q.requires_grad for q in mod.parameters() if q is not head.weight])
            ),
            head.register_forward_pre_hook(lambda mod, args: seen_head.append(mod.weight.requires_grad)),
        ]
        got = response_logprobs(model, examples, bf16, chunk_tokens=8, progress=False)
        for h in hooks:
            h.remove()
        assert seen and not any(any(flags) for flags in seen)
        assert seen_head and all(seen_head)
        assert {n: q.requires_grad for n, q in model.named_parameters()} == before
        model.requires_grad_(False)  # the same scores with every weight frozen by hand
        want = response_logprobs(model, examples, bf16, chunk_tokens=8, progress=False)
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y)
        for n, q in model.named_parameters():
            q.requires_grad_(before[n])
