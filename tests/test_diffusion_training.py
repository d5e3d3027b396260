"""The masked-diffusion trainer: joint masking of the forced set, the loss formula (pinned against an independent
computation), the batch on another device, and selections that belong to one objective."""

import numpy as np
import pytest
import torch
from conftest import write_jsonl

from t3s import T3SError
from t3s.config import DiffusionConfig, RenderConfig, load_config
from t3s.data import fingerprints, load_rows, render_rows
from t3s.models import load_tokenizer, resolve_precision
from t3s.objectives.diffusion import Collator, build_mask, draw_noise, load_mask_predictor
from t3s.objectives.masked import forced_mask
from t3s.select import Selection, load_selection, write_selection

FP32 = resolve_precision("float32")

FP32 = resolve_precision("float32")


# ----------------------------------------------------------------------------------------------- masking


def test_forced_positions_always_masked_and_prompt_never(dtiny):
    tok = load_tokenizer(dtiny / "dllm")
    rows = load_rows(dtiny / "train.jsonl")
    examples, _ = render_rows(rows, tok, RenderConfig())
    rng = np.random.default_rng(0)
    items = [
        {
            "input_ids": e.input_ids,
            "prompt_len": e.prompt_len,
            "row": i,
            "forced": (rng.random(len(e.response_ids)) < 0.2).tolist(),
        }
        for i, e in enumerate(examples[:6])
    ]
    batch = Collator(tok.eos_token_id)(items)
    for schedule in ("llada", "dfactory"):
        cfg = DiffusionConfig(mask_schedule=schedule)
        fractions = []
        for step in range(150):
            mask, forced_pos, t, answer = build_mask(batch, cfg, seed=3, step=step)
            for i, it in enumerate(items):
                p = it["prompt_len"]
                assert not mask[i, :p].any()
                forced = np.flatnonzero(it["forced"]) + p
                assert mask[i, forced].all()
                assert answer[i] == batch["input_ids"].shape[1] - p
            fractions.append(float(t.mean()))
            lo, hi = (cfg.eps, 1.0) if schedule == "llada" else (cfg.t_min, cfg.t_max)
            assert ((t >= lo) & (t <= hi)).all()
        # the noise level really varies over steps (≈ uniform on its range)
        assert np.std(fractions) > 0.05
    # the noise of a row does not depend on the batch it is in
    t1, u1 = draw_noise(DiffusionConfig(), 3, 7, [4, 5], [10, 20])
    t2, u2 = draw_noise(DiffusionConfig(), 3, 7, [5], [20])
    assert t1[1] == t2[0] and torch.equal(u1[1], u2[0])


def test_forced_mask_modes():
    delta = np.array([0.5, -0.3, -0.1, np.nan, -0.25, 0.0, -0.9], dtype=np.float32)
    assert forced_mask("t3s", delta, 0.2).tolist() == [False, True, False, False, True, False, True]
    assert forced_mask("sft", delta, 0.2).sum() == 0
    r = forced_mask("random", delta, 0.2, seed=1)
    assert r.sum() == 3 and not r[3]  # as many as t3s; never a token without a Δc
    assert (forced_mask("random", delta, 0.2, seed=1) == r).all()
    with pytest.raises(T3SError, match="forced-set mode"):
        forced_mask("reverse", delta, 0.2)


# ----------------------------------------------------------------------------------------------- the loss


def _equal_length_rows(path, n=4):
    """n rows of identical token length (the same text under different ids): EOS padding cannot differ between a
    batch of n and micro-batches of n/2."""
    base = {"prompt": "What is 12 + 34?", "response": "Ones: 2 + 4 = 6. Tens: 1 + 3 = 4. \\boxed{46}", "answer": "46"}
    return write_jsonl(path, [{**base, "id": f"r{i}"} for i in range(n)])


def _forced_selection(path, tok, data_path, pattern):
    rows = load_rows(data_path)
    examples, _ = render_rows(rows, tok, RenderConfig())
    forced = [np.array([pattern(i, j) for j in range(len(e.response_ids))]) for i, e in enumerate(examples)]
    sel = Selection(
        meta={
            "kind": "t3s-selection",
            "mode": "crafted",
            "objective": "diffusion",
            "tau": 0.2,
            "threshold": None,
            "seed": None,
            "fingerprints": fingerprints(rows, tok, RenderConfig()),
            "stats": {},
        },
        ids=[e.id for e in examples],
        response_ids=[np.array(e.response_ids) for e in examples],
        keep=[np.ones(len(f), dtype=bool) for f in forced],
        delta=[np.zeros(len(f), np.float32) for f in forced],
        forced=forced,
    )
    write_selection(sel, path)
    return examples, forced


@pytest.mark.parametrize(
    "schedule, forced_weight",
    [("llada", "one"), ("llada", "inverse_t"), ("dfactory", "one"), ("dfactory", "inverse_t")],
)
def test_one_sgd_step_equals_the_documented_loss(dtiny, tmp_path, schedule, forced_weight):
    """2 rows x 2 accumulation steps, one SGD step: θ − lr·∇L, computed row by row with its own log-softmax:
    llada:    L = mean over rows of (Σ_random CE / t + Σ_forced w_f·CE) / L_answer
    dfactory: L = (Σ_random CE + Σ_forced w_f·CE) / (masked positions of the whole batch)
    with w_f = 1 (forced_weight=one) or 1/t (inverse_t)."""
    from t3s.train import train

    tok = load_tokenizer(dtiny / "dllm")
    data = _equal_length_rows(tmp_path / "d.jsonl")
    examples, forced = _forced_selection(tmp_path / "sel", tok, data, lambda i, j: (i + 2 * j) % 5 == 0)
    lr = 0.5
    cfg = load_config(
        None,
        [
            "optim=sgd",
            f"learning_rate={lr}",
            "max_steps=1",
            "per_device_train_batch_size=2",
            "gradient_accumulation_steps=2",
            "max_grad_norm=0",
            "dtype=float32",
            f"diffusion.mask_schedule={schedule}",
            f"diffusion.forced_weight={forced_weight}",
        ],
    )
    s = train(
        str(dtiny / "dllm"),
        str(data),
        tmp_path / "run",
        cfg.train,
        cfg.render,
        str(tmp_path / "sel"),
        progress=False,
        objective=cfg.diffusion,
    )
    assert s["forced_tokens"] == sum(int(f.sum()) for f in forced) > 0

    model = load_mask_predictor(dtiny / "dllm", FP32)
    mask_id = tok.mask_token_id
    total, n_masked = 0.0, 0
    for i, (e, f) in enumerate(zip(examples, forced)):
        n = len(e.response_ids)
        t, (u,) = draw_noise(cfg.diffusion, cfg.train.seed, 0, [i], [n])
        t = float(t[0])
        f = torch.tensor(f, dtype=torch.bool)
        rand = (u < t) & ~f
        masked = torch.zeros(len(e.input_ids), dtype=torch.bool)
        masked[e.prompt_len :] = rand | f
        x = torch.tensor(e.input_ids).masked_fill(masked, mask_id)
        logp = model(input_ids=x[None]).logits[0].log_softmax(-1)
        ce = -logp[e.prompt_len :].gather(1, torch.tensor(e.response_ids)[:, None])[:, 0]
        w_rand = 1.0 / t if schedule == "llada" else 1.0
        w_forced = 1.0 / t if forced_weight == "inverse_t" else 1.0
        row = (ce * rand).sum() * w_rand + (ce * f).sum() * w_forced
        total = total + (row / n if schedule == "llada" else row)
        n_masked += int((rand | f).sum())
    loss = total / (len(examples) if schedule == "llada" else n_masked)
    loss.backward()
    got = dict(load_mask_predictor(tmp_path / "run" / "model", FP32).named_parameters())
    moved = 0
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        want = (p - lr * p.grad).detach()
        torch.testing.assert_close(got[name].detach(), want, atol=3e-6, rtol=1e-5, msg=name)
        moved += int(not torch.allclose(want, p.detach()))
    assert moved > 0
    first = next(h for h in s["log_history"] if "loss" in h)
    assert first["loss"] == pytest.approx(loss.item(), rel=1e-4)


def test_forced_weight_one_keeps_the_forced_share_of_the_loss_bounded(dtiny):
    """With w_f = 1/t the forced set's share of the loss follows 1/t (a random factor up to 1/ε); with w_f = 1
    a forced position weighs what a randomly masked one weighs in expectation (E[1{u<t}/t] = 1)."""
    from t3s.objectives.diffusion import position_weights

    tok = load_tokenizer(dtiny / "dllm")
    examples, _ = render_rows(load_rows(dtiny / "train.jsonl"), tok, RenderConfig())
    items = [
        {
            "input_ids": e.input_ids,
            "prompt_len": e.prompt_len,
            "row": i,
            "forced": [j % 20 == 0 for j in range(len(e.response_ids))],
        }
        for i, e in enumerate(examples[:8])
    ]
    batch = Collator(tok.eos_token_id)(items)
    shares = {}
    for fw in ("one", "inverse_t"):
        cfg = DiffusionConfig(forced_weight=fw)
        per_step = []
        for step in range(400):
            mask, forced, t, answer = build_mask(batch, cfg, seed=1, step=step)
            w = position_weights(mask, forced, t, answer, cfg)
            per_step.append(float(w[forced].sum() / w.sum()))  # the forced set's share of the weight
        shares[fw] = np.array(per_step)
    # the forced set is 5% of the response positions: with w_f = 1 its share stays near 5% on average...
    assert 0.02 < shares["one"].mean() < 0.1
    # ...with w_f = 1/t it is larger and swings far more from step to step
    assert shares["inverse_t"].mean() > 1.5 * shares["one"].mean()
    assert shares["inverse_t"].std() > 2 * shares["one"].std()


# ----------------------------------------------------------------------------------------------- devices


def test_diffusion_loss_runs_with_the_batch_on_another_device(dtiny):
    """The Trainer moves the batch to the training device; the noise is drawn on the CPU. On the `meta` device
    any op that mixes a CPU tensor with a meta tensor raises, as a GPU would (the old mask did)."""
    import torch.fx.experimental._config as fxc

    from t3s.objectives.diffusion import position_weights, weighted_loss_sum

    tok = load_tokenizer(dtiny / "dllm")
    examples, _ = render_rows(load_rows(dtiny / "train.jsonl"), tok, RenderConfig())
    items = [
        {
            "input_ids": e.input_ids,
            "prompt_len": e.prompt_len,
            "row": i,
            "forced": [j % 3 == 0 for j in range(len(e.response_ids))],
        }
        for i, e in enumerate(examples[:4])
    ]
    batch = Collator(tok.eos_token_id)(items)
    on_meta = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()}  # what the Trainer does
    cfg = DiffusionConfig()
    mask, forced, t, answer = build_mask(on_meta, cfg, seed=0, step=0)
    assert {x.device.type for x in (mask, forced, t, answer)} == {"meta"}
    logits = torch.zeros((*on_meta["input_ids"].shape, len(tok)), device="meta")
    old = fxc.meta_nonzero_assume_all_nonzero
    fxc.meta_nonzero_assume_all_nonzero = True  # boolean indexing on meta needs a shape guess
    try:
        loss = weighted_loss_sum(logits, on_meta["input_ids"], mask, position_weights(mask, forced, t, answer, cfg))
    finally:
        fxc.meta_nonzero_assume_all_nonzero = old
    assert loss.device.type == "meta"
    # the same batch on the CPU gives a mask equal to the one the CPU path computes, forced positions included
    m_cpu, f_cpu, _, _ = build_mask(batch, cfg, seed=0, step=0)
    for i, it in enumerate(items):
        p = it["prompt_len"]
        assert f_cpu[i, p : p + len(it["forced"])].tolist() == it["forced"] and not m_cpu[i, :p].any()


def test_ar_and_diffusion_selections_are_not_interchangeable(dtiny, tmp_path):
    from t3s.train import prepare

    tok = load_tokenizer(dtiny / "dllm")
    data = _equal_length_rows(tmp_path / "d.jsonl")
    _forced_selection(tmp_path / "sel", tok, data, lambda i, j: j == 1)
    cfg = load_config(None, [])
    with pytest.raises(T3SError, match="forced set for a masked-diffusion student"):
        prepare(str(dtiny / "model"), str(data), cfg.train, cfg.render, str(tmp_path / "sel"))
    sel = load_selection(tmp_path / "sel")
    sel.forced = None
    sel.meta["objective"] = None
    write_selection(sel, tmp_path / "ar")
    with pytest.raises(T3SError, match="needs a forced set"):
        prepare(str(dtiny / "dllm"), str(data), cfg.train, cfg.render, str(tmp_path / "ar"), cfg.diffusion)
