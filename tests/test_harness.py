"""`t3s eval --harness lm-eval`: lm-evaluation-harness on the tiny model with two local tasks (one multiple
choice, one generated), no network. The multiple-choice accuracy is recomputed here from the model's own
log-likelihoods; the generated answers are checked against the model's own greedy continuation."""

import json

import pytest
import torch
from conftest import t3s_here
from transformers import AutoModelForCausalLM, AutoTokenizer

from t3s import T3SError
from t3s.harness import main_metric

CHOICES = ["{{answer}}", "0", "1"]


def tasks_dir(tmp_path, rows):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    where = tmp_path / "tasks"
    where.mkdir()
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (where / "tiny_choice.yaml").write_text(
        "task: tiny_choice\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_choice: \"{{[answer, '0', '1']}}\"\ndoc_to_target: 0\nmetric_list:\n  - metric: acc\n"
    )
    (where / "tiny_add.yaml").write_text(
        "task: tiny_add\n" + common + "output_type: generate_until\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return where


def loglikelihood(model, tok, context, continuation):
    """log p(continuation | context), split as the harness splits it: the whole string's tokens after the
    context's."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(logits[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_harness_tasks_write_t3s_metrics(tiny, trained, tmp_path):
    rows = [json.loads(x) for x in (tiny / "train.jsonl").read_text().splitlines()[:12]]
    where = tasks_dir(tmp_path, rows)
    out = tmp_path / "eval"
    r = t3s_here(  # in this process, like the harness's other tests (lm-eval's task index loads once)
        "eval", "--quiet", "--harness", "lm-eval", "--model", str(trained), "--tasks", "tiny_choice,tiny_add",
        "--include-path", str(where), "--out", str(out), "dtype=float32", "chat_template=off",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tiny_choice: acc,none" in r.stdout and "tiny_add: exact_match,none" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert m["kind"] == "t3s-eval" and m["harness"]["chat_template"] is False
    assert set(m["metrics"]) >= {"prompts", "samples", "k", "accuracy", "pass_at_k", "mean_tokens", "no_answer_rate"}
    # multiple choice: the harness's accuracy is the share of rows whose gold answer is the likeliest choice
    model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(trained)
    best = []
    for row in rows:
        lls = [loglikelihood(model, tok, row["prompt"], " " + c) for c in (row["answer"], "0", "1")]
        best.append(max(range(3), key=lambda i: lls[i]))
    expected = sum(b == 0 for b in best) / len(rows)
    assert m["tasks"]["tiny_choice"]["value"] == pytest.approx(expected)
    assert m["tasks"]["tiny_choice"]["samples"] == len(rows)
    assert [s["response"] for s in samples if s["task"] == "tiny_choice"] == best
    # generated: each response is the model's greedy continuation, graded by exact match
    gen = [s for s in samples if s["task"] == "tiny_add"]
    assert len(gen) == len(rows)
    for s, row in zip(gen, rows):
        ids = tok(row["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
        cont = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1] :]
        assert tok.decode(cont, skip_special_tokens=True) == s["response"], (tok.decode(cont), s["response"])
        assert s["correct"] == (s["response"].strip() == row["answer"])
    # the t3s-shaped metrics: the mean of the tasks' main metrics over every document
    values = [m["tasks"][t]["value"] for t in ("tiny_choice", "tiny_add")]
    assert m["metrics"]["accuracy"] == pytest.approx(sum(values) / 2) and m["metrics"]["prompts"] == 2 * len(rows)
    assert m["tasks"]["tiny_add"]["value"] == pytest.approx(sum(s["correct"] for s in gen) / len(gen))
    # the chat template, as t3s renders prompts (auto: the tiny tokenizer has one); a `t3s train` directory
    r = t3s_here(
        "eval", "--quiet", "--harness", "lm-eval", "--model", str(trained.parent), "--tasks", "tiny_choice",
        "--include-path", str(where), "--out", str(tmp_path / "chat"), "--limit", "3", "dtype=float32",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    chat = json.loads((tmp_path / "chat" / "metrics.json").read_text())
    assert chat["harness"]["chat_template"] is True and chat["tasks"]["tiny_choice"]["samples"] == 3
    assert chat["metrics"]["accuracy_is"] == "acc,none"


def test_harness_errors(tiny, tmp_path):
    where = tasks_dir(tmp_path, [{"prompt": "1 + 1?", "answer": "2"}])
    harness = ["eval", "--quiet", "--harness", "lm-eval", "--model", tiny / "model"]
    r = t3s_here(*harness, "--tasks", "no_such_task")
    assert r.returncode != 0 and "lm-evaluation-harness has no task no_such_task" in r.stderr
    r = t3s_here(*harness, "--include-path", where)
    assert r.returncode != 0 and "needs --tasks" in r.stderr
    r = t3s_here("eval", "--quiet", "--model", tiny / "model", "--data", tiny / "train.jsonl", "--tasks", "tiny_add")
    assert r.returncode != 0 and "go with --harness lm-eval" in r.stderr
    r = t3s_here(*harness, "--tasks", "x", "--include-path", "nowhere")
    assert r.returncode != 0 and "--include-path nowhere: no such directory" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_main_metric_is_the_first_listed_under_the_first_filter():
    result = {
        "alias": "gsm8k",
        "exact_match,strict-match": 0.25,
        "exact_match_stderr,strict-match": 0.05,
        "exact_match,flexible-extract": 0.5,
        "exact_match_stderr,flexible-extract": 0.07,
        "acc,none": 0.9,
    }
    assert main_metric(result, ["exact_match"]) == ("exact_match,strict-match", 0.25, 0.05)
    assert main_metric(result, ["acc"]) == ("acc,none", 0.9, None)
    assert main_metric(result, []) == ("exact_match,strict-match", 0.25, 0.05)
    with pytest.raises(T3SError, match="no metric"):
        main_metric({"alias": "x"}, ["acc"])
