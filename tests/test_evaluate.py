import json
import subprocess
import sys
import threading

import pytest
import torch
from conftest import t3s_here, write_jsonl

from t3s import T3SError
from t3s.config import GenConfig, RenderConfig
from t3s.data import load_rows, render_prompt
from t3s.evaluate import Sample, metrics
from t3s.generation import generate
from t3s.graders import extract_answer, is_correct
from t3s.models import load_causal_lm, resolve_precision

FP32 = resolve_precision("float32")


@pytest.mark.parametrize(
    "text, fallback, want",
    [
        (r"first \boxed{3} then \boxed{\frac{1}{2}}.", "last_number", r"\frac{1}{2}"),  # last box, nested braces
        (r"\boxed{\{1, 2\} \cup \{3\}}", "last_number", r"\{1, 2\} \cup \{3\}"),
        (r"So the answer is \boxed{7}. The answer is 8.", "last_number", "7"),  # boxed wins
        ("Thus, the answer is 42.", "last_number", "42"),
        ("The final answer is: $-\\frac{3}{4}$", "last_number", "-\\frac{3}{4}"),
        ("the answer is Paris.\n", "last_number", "Paris"),
        ("We get 12 apples and then 1,234 pears", "last_number", "1,234"),
        ("We get 12 apples and then 1,234 pears", "none", None),
        ("I do not know", "last_number", None),
        (r"\boxed 5", "last_number", "5"),
        (r"unbalanced \boxed{1 and more", "none", None),
    ],
)
def test_extract_answer(text, fallback, want):
    assert extract_answer(text, fallback) == want


@pytest.mark.parametrize(
    "pred, gold, want",
    [
        (r"\dfrac{1}{2}", "1/2", True),
        ("0.5", r"\frac{1}{2}", True),
        ("0.25", r"\frac{1}{2}", False),
        (r"50\%", "0.5", True),
        ("-3", "-3", True),
        ("3", "-3", False),
        ("1,000", "1000", True),
        ("1,001", "1000", False),
        ("(1, 2]", "(1,2]", True),
        ("[1, 2]", "(1,2]", False),
        ("3.0", "3", True),
        (r"\text{Paris}", "Paris", True),
        ("London", "Paris", False),
        (None, "1", False),
        ("x + 1", "1 + x", True),
    ],
)
def test_is_correct_tricky_pairs(pred, gold, want):
    assert is_correct(pred, gold) is want


def test_grading_is_safe_in_threads():
    out = []
    t = threading.Thread(target=lambda: out.append((is_correct("0.5", r"\frac12"), is_correct("2", "3"))))
    t.start()
    t.join()
    assert out == [(True, False)]


def test_metrics_avg_and_pass_at_k():
    s = [
        Sample("a", 0, "", "1", True, 10, False),
        Sample("a", 1, "", None, False, 30, True),
        Sample("b", 0, "", "2", False, 20, False),
        Sample("b", 1, "", "3", False, 40, False),
    ]
    m = metrics(s)
    assert (m["accuracy"], m["pass_at_k"], m["k"], m["prompts"]) == (0.25, 0.5, 2, 2)
    assert (m["mean_tokens"], m["median_tokens"], m["no_answer_rate"], m["truncated_rate"]) == (25, 25, 0.25, 0.25)


def test_batched_greedy_equals_one_prompt_at_a_time(tiny, tok, trained):
    rows = load_rows(tiny / "train.jsonl")[:6]
    rows[1].prompt = "Please tell me: " + rows[1].prompt  # prompts of different lengths: real left padding
    prompts = [render_prompt(r, tok, RenderConfig(), True)[0] for r in rows]
    assert len({len(p) for p in prompts}) > 1
    model = load_causal_lm(trained, FP32)
    cfg = GenConfig(max_new_tokens=24, batch_size=6)
    batched = generate(model, tok, prompts, cfg, FP32, progress=False)
    for p, (g,) in zip(prompts, batched):
        ref = model.generate(
            input_ids=torch.tensor([p]),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )[0, len(p) :].tolist()
        ref = ref[: ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref
        assert g.token_ids == ref
        assert g.truncated == (len(ref) == 24 and tok.eos_token_id not in ref)


def test_sampling_k_and_seed(tiny, tok, trained):
    rows = load_rows(tiny / "train.jsonl")[:3]
    prompts = [render_prompt(r, tok, RenderConfig(), True)[0] for r in rows]
    model = load_causal_lm(trained, FP32)
    cfg = GenConfig(temperature=1.0, k=4, max_new_tokens=12, seed=3)
    a, b = generate(model, tok, prompts, cfg, FP32, False), generate(model, tok, prompts, cfg, FP32, False)
    assert all(len(g) == 4 for g in a)
    assert [[x.token_ids for x in g] for g in a] == [[x.token_ids for x in g] for g in b]
    with pytest.raises(T3SError, match="need temperature > 0"):
        GenConfig(k=2)


def test_eval_cli_model_and_responses(tiny, trained, tmp_path):
    def t3s(*a):
        return subprocess.run([sys.executable, "-m", "t3s", *map(str, a)], capture_output=True, text=True)

    r = t3s(
        "eval",
        "--model",
        trained,
        "--data",
        tiny / "train.jsonl",
        "--out",
        tmp_path / "ev",
        "--quiet",
        "max_new_tokens=48",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    lines = [json.loads(x) for x in open(tmp_path / "ev" / "samples.jsonl")]
    assert len(lines) == 16 and set(lines[0]) == {
        "id",
        "sample",
        "response",
        "extracted",
        "correct",
        "tokens",
        "truncated",
    }
    assert m["accuracy"] == sum(x["correct"] for x in lines) / 16
    assert f"accuracy (avg@1) {100 * m['accuracy']:.2f}%" in r.stdout
    resp = write_jsonl(
        tmp_path / "resp.jsonl",
        [
            {"id": "a", "response": r"so \boxed{\dfrac{1}{2}}", "answer": "0.5"},
            {"id": "a", "response": "the answer is 3", "answer": "0.5"},
            {"id": "b", "response": "no idea", "answer": "7"},
        ],
    )
    r = t3s_here("eval", "--responses", resp, "--out", tmp_path / "graded")  # grading and errors: in this process
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "graded" / "metrics.json").read_text())["metrics"]
    assert (m["accuracy"], m["pass_at_k"], m["no_answer_rate"]) == (1 / 3, 0.5, 1 / 3)
    assert "accuracy (avg@2) 33.33%" in r.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "response": "x"}])
    r = t3s_here("eval", "--responses", bad, "--out", tmp_path / "g2")
    assert r.returncode == 2 and "bad.jsonl:1: missing field 'answer'" in r.stderr and not (tmp_path / "g2").exists()
    r = t3s_here("eval", "--model", trained, "--data", tiny / "train.jsonl", "--out", tmp_path / "g3", "k=2")
    assert r.returncode == 2 and "need temperature > 0" in r.stderr


def _manual_greedy(model, prompt, n, eos, penalty=1.0):
    """Greedy decoding written out: the full forward at every step, argmax, optional repetition penalty (CTRL's
    rule: positive logits of seen tokens divided by it, negative ones multiplied)."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].clone()
            if penalty != 1.0:
                seen = torch.tensor(sorted(set(ids)))
                v = logits[seen]
                logits[seen] = torch.where(v > 0, v / penalty, v * penalty)
            t = int(logits.argmax())
            if t == eos:
                break
            out.append(t)
            ids.append(t)
    return out


def test_generation_uses_exactly_the_configured_settings(tiny, tok, trained, tmp_path):
    """A model whose generation_config.json asks for sampling, top-k, a repetition penalty and beam search:
    greedy evaluation must still be plain greedy decoding (transformers would inherit every one of them);
    `model_defaults: true` applies the model's top_k / min_p / repetition_penalty, and only those."""
    from transformers import GenerationConfig

    from t3s.generation import sampling_settings

    model = load_causal_lm(trained, FP32)
    d = tmp_path / "vendor"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    GenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_k=3,
        repetition_penalty=5.0,
        num_beams=2,
        no_repeat_ngram_size=2,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    ).save_pretrained(d)
    vendor = load_causal_lm(d, FP32)
    assert vendor.generation_config.repetition_penalty == 5.0
    rows = load_rows(tiny / "train.jsonl")[:4]
    prompts = [render_prompt(r, tok, RenderConfig(), True)[0] for r in rows]
    got = generate(vendor, tok, prompts, GenConfig(max_new_tokens=20, batch_size=4), FP32, progress=False)
    want = [_manual_greedy(model, p, 20, tok.eos_token_id) for p in prompts]
    assert [g[0].token_ids for g in got] == want
    assert vendor.generation_config.repetition_penalty == 5.0  # the model's own config is left as it was
    # the model's settings, on request: the repetition penalty applies (greedy: top-k does not)
    cfg = GenConfig(max_new_tokens=20, batch_size=4, model_defaults=True)
    assert sampling_settings(cfg, vendor.generation_config)["repetition_penalty"] == 5.0
    got = generate(vendor, tok, prompts, cfg, FP32, progress=False)
    want_pen = [_manual_greedy(model, p, 20, tok.eos_token_id, penalty=5.0) for p in prompts]
    assert [g[0].token_ids for g in got] == want_pen != want


def test_sampling_settings_are_the_same_for_every_backend():
    from types import SimpleNamespace

    from t3s.generation import sampling_settings
    from t3s.vllm_backend import sampling_kwargs

    vendor = SimpleNamespace(top_k=20, min_p=0.05, repetition_penalty=1.05)
    plain = sampling_settings(GenConfig(temperature=0.6, top_p=0.95), vendor)
    assert (plain["top_k"], plain["min_p"], plain["repetition_penalty"]) == (0, 0.0, 1.0)
    kw = sampling_kwargs(GenConfig(temperature=0.6, top_p=0.95), [1], 0, vendor)
    assert not {"top_k", "min_p", "repetition_penalty"} & set(kw)  # neutral: vLLM's own defaults
    kw = sampling_kwargs(GenConfig(temperature=0.6, top_p=0.95, model_defaults=True), [1], 0, vendor)
    assert (kw["top_k"], kw["min_p"], kw["repetition_penalty"]) == (20, 0.05, 1.05)
