import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl

from t3s import T3SError
from t3s.config import RenderConfig, TrainConfig, load_config
from t3s.data import fingerprints, load_rows, render_rows
from t3s.models import load_causal_lm, resolve_precision
from t3s.select import Selection, write_selection
from t3s.train import make_trainer, prepare, train

FP32 = resolve_precision("float32")


def _tr(cfg):
    return cfg.train, cfg.render


# One optimizer step of plain SGD over exactly one global batch: 2 rows x 2 accumulation steps.
SGD = dict(
    optim="sgd",
    learning_rate=0.5,
    max_steps=1,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    max_grad_norm=0.0,
    dtype="float32",
    logging_steps=1,
)


@pytest.fixture(scope="module")
def four(tiny, tmp_path_factory):
    rows = [json.loads(line) for line in open(tiny / "train.jsonl")][:4]
    return write_jsonl(tmp_path_factory.mktemp("four") / "four.jsonl", rows)


def crafted_selection(path, tok, data_path, pattern):
    """A selection that keeps response token j of row i iff pattern(i, j)."""
    rows = load_rows(data_path)
    examples, _ = render_rows(rows, tok, RenderConfig())
    keep = [np.array([pattern(i, j) for j in range(len(e.response_ids))]) for i, e in enumerate(examples)]
    sel = Selection(
        meta={
            "kind": "t3s-selection",
            "mode": "crafted",
            "threshold": 0.0,
            "seed": None,
            "fingerprints": fingerprints(rows, tok, RenderConfig()),
            "stats": {},
        },
        ids=[e.id for e in examples],
        response_ids=[np.array(e.response_ids) for e in examples],
        keep=keep,
        delta=[np.zeros(len(k), dtype=np.float32) for k in keep],
    )
    write_selection(sel, path)
    return examples, keep


def expected_sgd_step(model_dir, examples, keep, lr, normalize):
    """θ − lr · ∇L with L = Σ_kept CE / N (N = kept or response tokens of the batch), computed row by row."""
    model = load_causal_lm(model_dir, FP32)
    total, n_kept, n_resp = 0.0, 0, 0
    for e, k in zip(examples, keep):
        logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]
        ce = F.cross_entropy(logits[e.prompt_len - 1 : -1], torch.tensor(e.response_ids), reduction="none")
        total = total + (ce * torch.tensor(k, dtype=ce.dtype)).sum()
        n_kept, n_resp = n_kept + int(k.sum()), n_resp + len(k)
    loss = total / (n_kept if normalize == "kept" else n_resp)
    loss.backward()
    return {n: (p - lr * p.grad).detach() for n, p in model.named_parameters()}, float(loss)


@pytest.mark.parametrize(
    "normalize, loss_kwargs", [("kept", True), ("response", True), ("kept", False), ("response", False)]
)
def test_one_step_equals_masked_cross_entropy(tiny, tok, four, tmp_path, monkeypatch, normalize, loss_kwargs):
    """loss_kwargs=False: a model class that declares `accepts_loss_kwargs = False` (several multimodal and newer
    classes), for which transformers computes no `num_items_in_batch`: the mean must still be exact."""
    if not loss_kwargs:
        from transformers import LlamaForCausalLM

        monkeypatch.setattr(LlamaForCausalLM, "accepts_loss_kwargs", False, raising=False)
    examples, keep = crafted_selection(tmp_path / "sel", tok, four, lambda i, j: (i + j) % 3 != 0)
    kept_per_micro_batch = [int(keep[0].sum() + keep[1].sum()), int(keep[2].sum() + keep[3].sum())]
    assert kept_per_micro_batch[0] != kept_per_micro_batch[1]  # a mean of means would differ from the mean
    cfg, rcfg = _tr(load_config(None, [f"{k}={v}" for k, v in SGD.items()] + [f"normalize={normalize}"]))
    s = train(str(tiny / "model"), str(four), tmp_path / "run", cfg, rcfg, str(tmp_path / "sel"), progress=False)
    assert s["kept_tokens"] == sum(int(k.sum()) for k in keep) < s["response_tokens"]
    got = dict(load_causal_lm(tmp_path / "run" / "model", FP32).named_parameters())
    want, want_loss = expected_sgd_step(tiny / "model", examples, keep, SGD["learning_rate"], normalize)
    moved = 0
    for name, w in want.items():
        torch.testing.assert_close(got[name].detach(), w, atol=2e-6, rtol=1e-5, msg=name)
        moved += int(not torch.equal(w, dict(load_causal_lm(tiny / "model", FP32).named_parameters())[name]))
    assert moved > 0
    # the logged loss of the step is the same masked mean, computed independently
    first = next(h for h in s["log_history"] if "loss" in h)
    assert first["loss"] == pytest.approx(want_loss, rel=1e-3)


def test_dropped_positions_get_no_gradient(tiny, tok, four, tmp_path):
    crafted_selection(tmp_path / "sel", tok, four, lambda i, j: j % 2 == 0)
    cfg = TrainConfig(**{**SGD, "max_steps": 1})
    data = prepare(str(tiny / "model"), str(four), cfg, RenderConfig(), str(tmp_path / "sel"))
    model = load_causal_lm(tiny / "model", FP32)
    trainer = make_trainer(model, data, cfg, tmp_path / "ck", progress=False)
    batch = trainer.data_collator([data.dataset[i] for i in range(4)])
    grads = {}

    # The final norm's output at position p feeds only the prediction of token p + 1.
    def keep_grad(module, inputs, output):
        output.register_hook(lambda g: grads.setdefault("g", g))

    h = model.model.norm.register_forward_hook(keep_grad)
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=None)
    loss.backward()
    h.remove()
    g = grads["g"].abs().sum(-1)  # (batch, seq)
    labels = batch["labels"]
    predicts_kept = torch.zeros_like(labels, dtype=torch.bool)
    predicts_kept[:, :-1] = labels[:, 1:] != -100
    assert (g[~predicts_kept] == 0).all()  # prompt, padding and dropped tokens: exactly zero
    assert (g[predicts_kept] > 0).all()


def test_train_with_selection_saves_a_loadable_model_and_refuses_mismatches(tiny, tok, four, tmp_path):
    crafted_selection(tmp_path / "sel", tok, four, lambda i, j: j % 2 == 0)
    cfg, rcfg = _tr(load_config(None, ["max_steps=2", "per_device_train_batch_size=2", "learning_rate=1e-3"]))
    s = train(str(tiny / "model"), str(four), tmp_path / "run", cfg, rcfg, str(tmp_path / "sel"), progress=False)
    assert s["global_step"] == 2 and (tmp_path / "run" / "train.json").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()  # removed unless keep_checkpoints
    load_causal_lm(tmp_path / "run", FP32)  # a run directory resolves to its model/
    assert json.load(open(tmp_path / "run" / "model" / "t3s_step.json"))["global_step"] == 2
    with pytest.raises(T3SError, match="already holds a finished training run"):
        train(str(tiny / "model"), str(four), tmp_path / "run", cfg, rcfg, str(tmp_path / "sel"), progress=False)
    # a selection made on other data is refused before any training
    with pytest.raises(T3SError, match="different data"):
        train(str(tiny / "model"), str(tiny / "train.jsonl"), tmp_path / "run2", cfg, rcfg, str(tmp_path / "sel"))
    assert not (tmp_path / "run2").exists()


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny, four, tmp_path):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    over = ["max_steps=4", "save_steps=2", "per_device_train_batch_size=2", "learning_rate=1e-2", "dtype=float32"]
    cfg, rcfg = _tr(load_config(None, over))
    with pytest.raises(KeyboardInterrupt):
        train(str(tiny / "model"), str(four), tmp_path / "a", cfg, rcfg, progress=False, callbacks=[Stop()])
    assert not (tmp_path / "a" / "model").exists() and (tmp_path / "a" / "checkpoints" / "checkpoint-2").exists()
    with pytest.raises(T3SError, match="pass --resume"):
        train(str(tiny / "model"), str(four), tmp_path / "a", cfg, rcfg, progress=False)
    other, _ = _tr(load_config(None, over + ["learning_rate=1e-3"]))
    with pytest.raises(T3SError, match="cannot resume"):
        train(str(tiny / "model"), str(four), tmp_path / "a", other, rcfg, resume=True, progress=False)
    s = train(str(tiny / "model"), str(four), tmp_path / "a", cfg, rcfg, resume=True, progress=False)
    assert s["global_step"] == 4
    train(str(tiny / "model"), str(four), tmp_path / "b", cfg, rcfg, progress=False)
    a = dict(load_causal_lm(tmp_path / "a", FP32).named_parameters())
    for name, p in load_causal_lm(tmp_path / "b", FP32).named_parameters():
        torch.testing.assert_close(a[name], p, atol=1e-6, rtol=1e-5, msg=name)


def test_lora_training_saves_merged_model_and_adapter(tiny, four, tmp_path):
    cfg, rcfg = _tr(
        load_config(None, ["max_steps=1", "lora_r=4", "learning_rate=1e-2", "per_device_train_batch_size=4"])
    )
    train(str(tiny / "model"), str(four), tmp_path / "run", cfg, rcfg, progress=False)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    merged = dict(load_causal_lm(tmp_path / "run", FP32).named_parameters())
    base = dict(load_causal_lm(tiny / "model", FP32).named_parameters())
    assert set(merged) == set(base)  # a plain model, no LoRA wrappers
    assert any(not torch.equal(merged[n], base[n]) for n in base)


def test_config_file_and_errors(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "train:\n  learning_rate: 1e-5\n  max_steps: 7\n  trainer:\n    adam_beta2: 0.95\nrender:\n  max_length: 128\n"
    )
    cfg, rcfg = _tr(load_config(tmp_path / "c.yaml", ["max_steps=9", "trainer.adam_epsilon=1e-6"]))
    assert cfg.learning_rate == 1e-5 and cfg.max_steps == 9 and rcfg.max_length == 128
    assert cfg.trainer == {"adam_beta2": 0.95, "adam_epsilon": 1e-6}
    assert load_config(None, ["eval.max_new_tokens=64", "probe.online=true"]).probe.online is True
    with pytest.raises(T3SError, match="unknown config key 'lr'"):
        load_config(None, ["lr=1"])
    with pytest.raises(T3SError, match="bad value for 'max_steps'"):
        load_config(None, ["max_steps=many"])
    with pytest.raises(T3SError, match="normalize must be one of"):
        load_config(None, ["normalize=all"])
    with pytest.raises(T3SError, match=r"\[train\]: unknown key\(s\) lr"):
        load_config(None, ["train.lr=1"])
    (tmp_path / "bad.yaml").write_text("learning_rate: 1e-5\n")
    with pytest.raises(T3SError, match="bad.yaml: unknown key\\(s\\) learning_rate"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(T3SError, match="modes must be"):
        load_config(None, ["modes=[sft, best]"])


@pytest.mark.parametrize("normalize", ["kept", "response"])
def test_token_count_runs_on_the_batch_device(tiny, tok, four, tmp_path, normalize):
    """The global token count of the loss is taken where the Trainer put the batch (the training device); on the
    `meta` device an op mixing a CPU tensor with the batch raises, as a GPU would. On the CPU it is the exact count
    of kept (or response) tokens after the causal shift."""
    crafted_selection(tmp_path / "sel", tok, four, lambda i, j: j % 2 == 0)
    cfg = TrainConfig(**{**SGD, "normalize": normalize})
    data = prepare(str(tiny / "model"), str(four), cfg, RenderConfig(), str(tmp_path / "sel"))
    trainer = make_trainer(load_causal_lm(tiny / "model", FP32), data, cfg, tmp_path / "ck", progress=False)
    batches = [
        trainer.data_collator([data.dataset[i] for i in (0, 1)]),
        trainer.data_collator([data.dataset[i] for i in (2, 3)]),
    ]
    on_meta = [{k: v.to("meta") if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
    assert trainer._get_num_items_in_batch(on_meta, torch.device("meta")).device.type == "meta"
    key = "labels" if normalize == "kept" else "response_labels"
    want = sum(sum(1 for x in data.dataset[i][key] if x != -100) for i in range(4))  # each row starts with the prompt
    assert int(trainer._get_num_items_in_batch(batches, torch.device("cpu"))) == want
