"""The online token losses (train.loss: eaft, memft, asft) against computations written another way: one or two
optimizer steps of plain SGD over a global batch of 2 rows x 2 accumulation steps, compared with θ − lr·∇L where
L is computed here row by row from the full softmax (no top-k, no log_softmax, no fused head). The two-process
runs are in tests/test_distributed.py."""

import math

import pytest
import torch
from test_train import SGD, four  # noqa: F401 -- the fixture

from t3s import T3SError
from t3s.config import RenderConfig, RunConfig, TrainConfig, load_config
from t3s.data import load_rows, render_rows
from t3s.ledger import training_settings
from t3s.models import load_causal_lm, resolve_precision
from t3s.objectives import token_losses as tl
from t3s.train import config_for_mode, make_trainer, prepare, train

FP32 = resolve_precision("float32")


def row_terms(model, e):
    """Per response token of row `e`: the probabilities over the vocabulary and the label's index."""
    logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, e.prompt_len - 1 : -1]
    return torch.softmax(logits.double(), dim=-1), torch.tensor(e.response_ids)


def expected_loss(model, ref, examples, loss, settings):
    """The loss of the whole global batch, from probabilities: Σ w·(−ln p_y) (+ λ KL) / N."""
    total, n, kept = 0.0, 0, 0
    for e in examples:
        probs, y = row_terms(model, e)
        p_y = probs[torch.arange(len(y)), y]
        ce = -torch.log(p_y)
        n += len(y)
        if loss == "eaft":
            k = settings["eaft_k"]
            top = torch.sort(probs.detach(), dim=-1, descending=True).values[:, :k]
            q = top / top.sum(-1, keepdim=True)
            h = -(q * torch.log(q)).sum(-1)
            total = total + ((h / math.log(k)) ** settings["eaft_alpha"] * ce).sum()
        elif loss == "memft":
            keep = p_y.detach() < settings["memft_threshold"]
            kept += int(keep.sum())
            total = total + (ce * keep).sum()
        else:  # asft
            with torch.no_grad():
                q = row_terms(ref, e)[0]
            kl = (q * (torch.log(q) - torch.log(probs))).sum(-1)
            total = total + (p_y.detach() * ce).sum() + settings["asft_kl_weight"] * kl.sum()
    return total / (kept if loss == "memft" else n), kept, n


def sgd_steps(model_dir, examples, loss, settings, steps, lr):
    """θ after `steps` SGD steps on the whole batch, and the loss at each step."""
    model = load_causal_lm(model_dir, FP32).double()
    ref = load_causal_lm(model_dir, FP32).double()
    losses, counts = [], []
    for _ in range(steps):
        model.zero_grad()
        value, kept, n = expected_loss(model, ref, examples, loss, settings)
        value.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        losses.append(float(value.detach()))
        counts.append((kept, n))
    return {k: v.detach().float() for k, v in model.named_parameters()}, losses, counts


@pytest.mark.parametrize(
    "loss, steps, extra",
    [
        ("eaft", 1, {"eaft_k": 20, "eaft_alpha": 1.0}),
        ("eaft", 1, {"eaft_k": 5, "eaft_alpha": 2.0}),
        ("memft", 1, {"memft_threshold": 0.5}),
        ("asft", 2, {"asft_kl_weight": 0.1}),  # at step 1 θ = θ_0: the KL term and its gradient are 0
        ("asft", 2, {"asft_kl_weight": 5.0}),
    ],
)
def test_sgd_steps_equal_the_loss_computed_another_way(trained, tok, four, tmp_path, loss, steps, extra):  # noqa: F811
    """From the tiny model after a little SFT: confident on some tokens, not on others."""
    overrides = {**SGD, "max_steps": steps, "loss": loss, **extra}
    cfg, rcfg = (lambda c: (c.train, c.render))(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    s = train(str(trained), str(four), tmp_path / "run", cfg, rcfg, progress=False)
    examples, _ = render_rows(load_rows(four), tok, RenderConfig())
    want, want_losses, counts = sgd_steps(trained, examples, loss, cfg.loss_settings(), steps, SGD["learning_rate"])
    if loss == "memft":  # the mask keeps some tokens, not all
        kept, n = counts[0]
        assert 0 < kept < n, counts
    got = dict(load_causal_lm(tmp_path / "run" / "model", FP32).named_parameters())
    base = dict(load_causal_lm(trained, FP32).named_parameters())
    assert any(not torch.equal(base[k], got[k]) for k in got)
    for name, w in want.items():
        torch.testing.assert_close(got[name].detach(), w, atol=3e-6, rtol=1e-5, msg=name)
    logged = [h["loss"] for h in s["log_history"] if "loss" in h]
    assert logged == pytest.approx(want_losses, rel=1e-4)
    assert s["config"]["loss"] == loss


def test_memft_is_normalised_by_the_global_kept_count_not_per_micro_batch(trained, tok, four, tmp_path):  # noqa: F811
    """With normalize=response the same kept tokens are divided by every labelled token instead: the two runs'
    updates differ by exactly kept/labelled (SGD, no clipping, one step), which a per-micro-batch mean would not
    give."""
    runs = {}
    for norm in ("kept", "response"):
        cfg = TrainConfig(**{**SGD, "loss": "memft", "normalize": norm})
        train(str(trained), str(four), tmp_path / norm, cfg, RenderConfig(), progress=False)
        runs[norm] = dict(load_causal_lm(tmp_path / norm / "model", FP32).named_parameters())
    examples, _ = render_rows(load_rows(four), tok, RenderConfig())
    _, _, [(kept, n)] = sgd_steps(trained, examples, "memft", {"memft_threshold": 0.5}, 1, 0.0)
    assert 0 < kept < n
    base = dict(load_causal_lm(trained, FP32).named_parameters())
    name = "lm_head.weight" if "lm_head.weight" in base else next(iter(base))
    d_kept, d_resp = (runs["kept"][name] - base[name]).detach(), (runs["response"][name] - base[name]).detach()
    torch.testing.assert_close(d_resp, d_kept * kept / n, atol=1e-6, rtol=1e-4)


def test_asft_under_lora_reads_the_adapter_disabled_model(tiny, four, tmp_path):  # noqa: F811
    """θ_0 under LoRA is the model with its adapter off: no copy is loaded, and once the adapter has moved the
    model, the reference logits are still the base model's."""
    cfg = TrainConfig(**{**SGD, "loss": "asft", "lora_r": 4})
    data = prepare(str(tiny / "model"), str(four), cfg, RenderConfig())
    trainer = make_trainer(load_causal_lm(tiny / "model", FP32), data, cfg, tmp_path / "ck", progress=False)
    assert trainer.reference is None
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    batch = trainer.data_collator([data.dataset[i] for i in range(2)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    ref = trainer.reference_logits(trainer.model, inputs)
    base = load_causal_lm(tiny / "model", FP32)(**inputs).logits
    torch.testing.assert_close(ref, base.detach(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(trainer.model(**inputs).logits, base, atol=1e-3)
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
    assert torch.isfinite(loss) and loss.requires_grad


def test_eaft_weights_are_one_for_a_flat_top_k_and_near_zero_when_confident():
    flat = torch.zeros(1, 50)
    flat[0, :20] = 3.0  # the top 20 equal: entropy ln 20
    sharp = torch.zeros(1, 50)
    sharp[0, 0] = 30.0
    assert tl.eaft_weights(flat, 20, 1.0).item() == pytest.approx(1.0, abs=1e-6)
    assert tl.eaft_weights(sharp, 20, 1.0).item() < 1e-9
    assert tl.eaft_weights(flat, 100, 1.0).shape == (1,)  # k above the vocabulary: capped


def test_modes_set_the_loss_and_only_its_settings_enter_the_fingerprint():
    assert config_for_mode(TrainConfig(), "eaft").loss == "eaft"
    assert config_for_mode(TrainConfig(loss="memft"), "sft").loss == "nll"  # the mode decides
    assert config_for_mode(TrainConfig(), "dft").trainer == {"loss_type": "dft"}
    nll = training_settings(TrainConfig())
    assert "loss" not in nll and "eaft_alpha" not in nll  # runs made before train.loss keep their fingerprints
    eaft = training_settings(config_for_mode(TrainConfig(), "eaft"))
    assert eaft["loss"] == "eaft" and eaft["eaft_k"] == 20 and "memft_threshold" not in eaft
    assert training_settings(TrainConfig(loss="memft", eaft_alpha=3.0)) == training_settings(TrainConfig(loss="memft"))
    with pytest.raises(T3SError, match="train.loss must be one of nll, eaft, memft, asft"):
        TrainConfig(loss="focal")
    with pytest.raises(T3SError, match="choose one"):
        TrainConfig(loss="eaft", trainer={"loss_type": "dft"})


def test_a_run_sets_the_loss_per_mode_and_a_diffusion_student_refuses_it():
    from t3s.objectives import objective_for

    with pytest.raises(T3SError, match="add eaft to modes instead"):
        objective_for(RunConfig(student="s", train_data="d", modes=["sft"], train=TrainConfig(loss="eaft")))
    with pytest.raises(T3SError, match="a diffusion student trains the modes sft, t3s, random; not eaft"):
        objective_for(RunConfig(student="s", train_data="d", modes=["eaft"], objective="diffusion", rrt=False))


def test_the_trl_api_trains_the_same_loss(trained, tok, four, tmp_path):  # noqa: F811
    """t3s.api.sft_trainer in a user's own SFTConfig and dataset: the same SGD step as `t3s train loss=memft`
    (whose step tests/test_token_losses.py checks against the independent computation)."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from t3s.api import labeled_dataset, sft_trainer
    from t3s.objectives.base import checkpointing_argument

    train(
        str(trained),
        str(four),
        tmp_path / "cli",
        TrainConfig(**{**SGD, "loss": "memft"}),
        RenderConfig(),
        progress=False,
    )
    args = SFTConfig(
        output_dir=str(tmp_path / "api"),
        optim="sgd",
        learning_rate=SGD["learning_rate"],
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **checkpointing_argument(False),
    )
    ds = labeled_dataset(str(four), None, tok)
    model = AutoModelForCausalLM.from_pretrained(trained)
    trainer = sft_trainer(model=model, args=args, train_dataset=ds, processing_class=tok, loss="memft")
    trainer.train()
    want = dict(load_causal_lm(tmp_path / "cli" / "model", FP32).named_parameters())
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.detach(), want[name].detach(), atol=2e-6, rtol=1e-5, msg=name)
    with pytest.raises(T3SError, match="eaft_k: not a setting of loss=memft"):
        sft_trainer(model=model, args=args, train_dataset=ds, processing_class=tok, loss="memft", eaft_k=5)
    with pytest.raises(T3SError, match="asft needs θ_0"):
        sft_trainer(model=model, args=args, train_dataset=ds, processing_class=tok, loss="asft")
