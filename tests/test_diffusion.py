"""The masked-diffusion path: joint masking, the loss formula, the sampler, Δc projection, and a tiny run."""

import json

import numpy as np
import pytest
import torch
from conftest import write_jsonl

from t3s import T3SError
from t3s.config import DiffusionConfig, GenConfig, RenderConfig, load_config
from t3s.data import fingerprints, load_rows, render_rows
from t3s.models import load_tokenizer, resolve_precision
from t3s.objectives.diffusion import Collator, build_mask, draw_noise, load_mask_predictor, sample
from t3s.objectives.projection import project_row, projector, response_spans
from t3s.select import Selection, forced_mask, load_selection, select_forced, write_selection

FP32 = resolve_precision("float32")


@pytest.fixture(scope="module")
def dtiny(tmp_path_factory):
    """Tiny AR selector (model/) + tiny ModernBERT student (dllm/) sharing one tokenizer with a mask token."""
    from t3s.tiny import build

    return build(tmp_path_factory.mktemp("dtiny") / "t", rows=12, diffusion=True, pretrain=False)


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


def test_sampler_step_runs_with_logits_on_another_device():
    """One denoising step with the model's logits on another device than the CPU generator (meta here)."""
    from t3s.objectives.diffusion import commit_step

    g = torch.Generator().manual_seed(0)
    logits = torch.zeros((2, 4, 11), device="meta")
    block = torch.full((2, 4), 10, dtype=torch.long, device="meta")
    masked = torch.ones((2, 4), dtype=torch.bool, device="meta")
    for temperature, remasking in ((0.0, "low_confidence"), (0.7, "low_confidence"), (0.7, "random")):
        out = commit_step(logits, block, masked, 2, temperature, remasking, g)
        assert out.device.type == "meta" and out.shape == (2, 4)
    # on the CPU it commits exactly k positions per row, the most confident ones
    logits = torch.randn((2, 4, 11), generator=torch.Generator().manual_seed(1))
    out = commit_step(
        logits, torch.full((2, 4), 99), torch.ones((2, 4), dtype=torch.bool), 2, 0.0, "low_confidence", g
    )  # 99: the mask id, outside the 11-token vocabulary
    assert ((out != 99).sum(1) == 2).all()
    conf = logits.softmax(-1).max(-1).values
    assert ((out != 99) == (conf >= conf.topk(2, dim=-1).values[:, -1:])).all()
    assert (out[out != 99] == logits.argmax(-1)[out != 99]).all()


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


# ----------------------------------------------------------------------------------------------- the sampler


class Recorder(torch.nn.Module):
    """Wraps a mask predictor and records the canvas it is shown at every denoising step."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.seen = model, []
        self.config = model.config

    def forward(self, input_ids, attention_mask=None):
        self.seen.append(input_ids.clone())
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_sampler_fills_every_mask_block_by_block_and_is_deterministic(dtiny):
    tok = load_tokenizer(dtiny / "dllm")
    model = Recorder(load_mask_predictor(dtiny / "dllm", FP32))
    mask_id = tok.mask_token_id
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    g = GenConfig(max_new_tokens=24, batch_size=2)
    d = DiffusionConfig(block_length=8, steps=12)  # 3 blocks, 4 steps each, 2 tokens per step
    a = sample(model, tok, prompts, g, d, FP32, progress=False)
    P = 5
    assert len(model.seen) == 12  # the random model never ends early (it commits no EOS)
    for n, x in enumerate(model.seen):
        blk, j = divmod(n, 4)
        canvas = x[:, P:]
        masked = canvas == mask_id
        # earlier blocks complete, later blocks untouched, the current one has 2 commits per step so far
        assert not masked[:, : blk * 8].any()
        assert masked[:, (blk + 1) * 8 :].all()
        assert (masked[:, blk * 8 : (blk + 1) * 8].sum(1) == 8 - 2 * j).all()
        assert (x[1, :2] == tok.pad_token_id).all()  # left padding of the shorter prompt (longest first)
    final = model.seen[-1][:, P:]
    assert (final == mask_id).sum() == 2 * 2  # the last step commits the last two positions of each row
    for gen in (a[0][0], a[1][0]):
        assert mask_id not in gen.token_ids and len(gen.token_ids) == 24 and gen.truncated
    b = sample(model.inner, tok, prompts, g, d, FP32, progress=False)
    assert [x[0].token_ids for x in a] == [x[0].token_ids for x in b]
    # temperature > 0: seeded, so repeatable, and different from greedy
    gs = GenConfig(max_new_tokens=24, batch_size=2, temperature=1.0, seed=4)
    c1 = sample(model.inner, tok, prompts, gs, d, FP32, progress=False)
    c2 = sample(model.inner, tok, prompts, gs, d, FP32, progress=False)
    assert [x[0].token_ids for x in c1] == [x[0].token_ids for x in c2] != [x[0].token_ids for x in a]


class EOSAfter(torch.nn.Module):
    """A fake mask predictor: predicts token 7 for the first 5 canvas positions and EOS after them."""

    def __init__(self, vocab, eos, start):
        super().__init__()
        self.vocab, self.eos, self.start, self.calls = vocab, eos, start, 0
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"mask_token_id": None})()

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        B, L = input_ids.shape
        logits = torch.zeros(B, L, self.vocab)
        logits[:, :, self.eos] = 5.0
        logits[:, self.start : self.start + 5, self.eos] = 0.0
        logits[:, self.start : self.start + 5, 7] = 5.0
        return type("O", (), {"logits": logits})()


def test_sampler_stops_once_every_row_has_ended(dtiny):
    tok = load_tokenizer(dtiny / "dllm")
    fake = EOSAfter(len(tok), tok.eos_token_id, start=3)
    g = GenConfig(max_new_tokens=32, batch_size=2)
    d = DiffusionConfig(block_length=8, steps=32, mask_token_id=tok.mask_token_id)
    out = sample(fake, tok, [[5, 6, 7]], g, d, FP32, progress=False)
    gen = out[0][0]
    assert gen.token_ids == [7] * 5 and not gen.truncated
    assert fake.calls == 8  # the first block held the EOS: the other three blocks were never sampled


# ----------------------------------------------------------------------------------------------- projection


def test_project_row_takes_the_minimum_over_overlapping_characters():
    src = [(0, 3), (3, 5), (5, 9), None]
    delta = np.array([0.1, -0.5, 0.3, -9.0], dtype=np.float32)
    dst = [(0, 2), (2, 4), (4, 9), None, (9, 9)]
    got = project_row(delta, src, dst)
    assert got[:3].tolist() == pytest.approx([0.1, -0.5, -0.5])
    assert np.isnan(got[3]) and np.isnan(got[4])


def test_projection_between_two_tokenizers_matches_a_character_map(dtiny):
    """Selector: the tiny BPE; student: a BPE with another vocabulary. Each student token's Δc must be the
    minimum over the selector tokens covering any of its characters, computed here from a char→token map."""
    from t3s.tiny import build_tokenizer, make_rows

    rows = load_rows(dtiny / "train.jsonl")
    sel_tok = load_tokenizer(dtiny / "model")
    stu_tok = build_tokenizer([r["prompt"] + "\n" + r["response"] for r in make_rows(200, 9)], vocab_size=300)
    rcfg = RenderConfig()
    examples, _ = render_rows(rows, sel_tok, rcfg)
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=len(e.response_ids)).astype(np.float32) for e in examples]
    base = Selection(
        meta={"fingerprints": {}},
        ids=[e.id for e in examples],
        response_ids=[np.array(e.response_ids) for e in examples],
        keep=[np.ones(len(d), bool) for d in deltas],
        delta=deltas,
    )
    projected, stu_ids, fps, missing = projector(rows, stu_tok, sel_tok, rcfg)(base)
    assert fps == fingerprints(rows, stu_tok, rcfg)
    assert missing == len(rows)  # exactly the student's EOS per row has no characters
    for r, d, p, ids in zip(rows, deltas, projected, stu_ids):
        text = r.response
        owner = np.full(len(text), -1)
        pos = 0
        for k, tid in enumerate(sel_tok(text, add_special_tokens=False)["input_ids"]):
            piece = sel_tok.decode([tid])
            owner[pos : pos + len(piece)] = k
            pos += len(piece)
        assert pos == len(text)
        pos = 0
        for j, tid in enumerate(ids):
            if tid == stu_tok.eos_token_id:
                assert np.isnan(p[j])
                continue
            piece = stu_tok.decode([tid])
            want = min(d[k] for k in set(owner[pos : pos + len(piece)]))
            assert p[j] == pytest.approx(want)
            pos += len(piece)


def test_projection_refuses_a_tokenizer_without_offsets(dtiny):
    rows = load_rows(dtiny / "train.jsonl")

    class NoOffsets:
        chat_template = None
        eos_token_id = 1

        def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
            if return_offsets_mapping:
                raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
            return {"input_ids": [3] * len(text)}

    with pytest.raises(T3SError, match="no character offsets"):
        response_spans(rows[0], NoOffsets(), RenderConfig(chat_template="off"), 10)


def test_select_forced_reports_the_forced_fraction(tmp_path):
    from test_select import scoreset

    c0 = [[-0.1, -2.0, -0.5, -3.0], [-1.0, -0.2, -4.0]]
    cb = [[-0.05, -2.5, -0.4, -3.1], [-2.0, -0.1, -4.0]]  # Δc: +.05 -.5 +.1 -.1 | -1 +.1 0
    sel = select_forced(scoreset(c0), scoreset(cb, path="b"), "t3s", tau=0.2)
    assert [f.tolist() for f in sel.forced] == [[False, True, False, False], [True, False, False]]
    assert sel.meta["stats"]["forced_fraction"] == pytest.approx(2 / 7)
    write_selection(sel, tmp_path / "s")
    back = load_selection(tmp_path / "s")
    assert [f.tolist() for f in back.forced] == [f.tolist() for f in sel.forced]
    r = select_forced(scoreset(c0), scoreset(cb, path="b"), "random", tau=0.2, seed=3)
    assert sum(int(f.sum()) for f in r.forced) == 2


# ----------------------------------------------------------------------------------------------- end to end


def test_tiny_diffusion_run_end_to_end(dtiny, tmp_path):
    import time

    from conftest import started

    from t3s.config import load_config
    from t3s.pipeline import plan_stages, run

    t0 = time.perf_counter()
    cfg = load_config(
        "examples/tiny-diffusion-run.yaml",
        [
            f"student={dtiny / 'dllm'}",
            f"selector={dtiny / 'model'}",
            f"train_data={dtiny / 'train.jsonl'}",
            "train.max_steps=4",
            "selector_train.max_steps=4",
            "probe.eval_every=2",
            "probe.subset=6",
            "eval.max_new_tokens=16",
            "diffusion.block_length=8",
            "diffusion.steps=8",
            "diffusion.tau=0.0",
        ],
        flat=(),
    )
    summary, code = run(cfg, tmp_path / "run", progress=False)
    assert code == 0
    assert time.perf_counter() - t0 < 180
    out = tmp_path / "run"
    assert started(out) == [k for k, _ in plan_stages(cfg)]  # `t3s run --plan` lists the stages the run took
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == ["base", "sft", "t3s", "random"]
    for m in ("sft", "t3s", "random"):
        metrics = json.loads((out / "seed-0" / "eval" / m / "metrics.json").read_text())["metrics"]
        assert rows[m]["accuracy"] == metrics["accuracy"] and rows[m]["mean_tokens"] == metrics["mean_tokens"]
        train = json.loads((out / "seed-0" / "train" / m / "train.json").read_text())
        assert train["objective"] == "diffusion" and train["global_step"] == 4
    for m in ("t3s", "random"):
        stats = json.loads((out / "seed-0" / "selections" / m / "selection.json").read_text())["stats"]
        assert rows[m]["forced_fraction"] == stats["forced_fraction"]
    t3s_stats = json.loads((out / "seed-0" / "selections" / "t3s" / "selection.json").read_text())["stats"]
    assert t3s_stats["forced_tokens"] > 0  # τ = 0: some tokens lose confidence on the way to θ_b
    assert "forced (always masked) tokens %" in summary["markdown"]
    assert json.loads((out / "seed-0" / "probe-student" / "probe.json").read_text())["objective"] == "diffusion"
    assert "Probe of the diffusion student itself" in summary["markdown"]
    assert not (out / "seed-0" / "rrt").exists()
    from t3s.report import build_report

    page = build_report(out, gradients=False, log=lambda m: None).read_text()
    assert "forced tokens %" in page


def test_command_line_diffusion_chain(dtiny, tmp_path):
    """score the selector at θ_0 and θ_b → select --forced → train the diffusion student (detected from its
    config) → eval with the sampler; an AR model refuses the forced set."""
    from conftest import t3s_here  # score, select, eval and the refusal in this process; training as commands
    from test_cli import t3s

    sel, stu, d = dtiny / "model", dtiny / "dllm", dtiny / "train.jsonl"
    r = t3s(
        "train",
        "--model",
        sel,
        "--data",
        d,
        "--out",
        tmp_path / "selector",
        "--quiet",
        "max_steps=3",
        "learning_rate=1e-2",
        "per_device_train_batch_size=4",
        "dtype=float32",
    )
    assert r.returncode == 0, r.stderr
    for name, model in (("s0", sel), ("sb", tmp_path / "selector")):
        r = t3s_here("score", "--model", model, "--data", d, "--out", tmp_path / name, "--quiet", "--dtype", "float32")
        assert r.returncode == 0, r.stderr
    r = t3s_here(
        "select",
        "--forced",
        "--init",
        tmp_path / "s0",
        "--bottleneck",
        tmp_path / "sb",
        "--mode",
        "t3s",
        "--tau",
        "0",
        "--student",
        stu,
        "--out",
        tmp_path / "forced",
    )
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "forced" / "selection.json").read_text())
    assert meta["objective"] == "diffusion" and not meta["projected"] and meta["stats"]["forced_tokens"] > 0
    assert "forced (always masked)" in r.stdout
    r = t3s(
        "train",
        "--model",
        stu,
        "--data",
        d,
        "--selection",
        tmp_path / "forced",
        "--out",
        tmp_path / "dtrain",
        "--quiet",
        "max_steps=2",
        "per_device_train_batch_size=4",
        "dtype=float32",
    )
    assert r.returncode == 0, r.stderr
    tr = json.loads((tmp_path / "dtrain" / "train.json").read_text())
    assert tr["objective"] == "diffusion" and tr["forced_tokens"] == meta["stats"]["forced_tokens"]
    r = t3s_here(
        "eval",
        "--model",
        tmp_path / "dtrain",
        "--data",
        d,
        "--out",
        tmp_path / "ev",
        "--quiet",
        "max_new_tokens=16",
        "diffusion.block_length=8",
        "dtype=float32",
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["diffusion"]["block_length"] == 8 and ev["metrics"]["mean_tokens"] is not None
    samples = [json.loads(x) for x in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert all(s["tokens"] <= 16 for s in samples)
    r = t3s_here(
        "train",
        "--model",
        sel,
        "--data",
        d,
        "--selection",
        tmp_path / "forced",
        "--out",
        tmp_path / "bad",
        "--quiet",
        "max_steps=1",
    )
    assert r.returncode == 2 and "forced set for a masked-diffusion student" in r.stderr
    assert not (tmp_path / "bad" / "model").exists()


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


def test_vllm_with_a_diffusion_student_is_refused_before_any_work(dtiny, tmp_path):
    from t3s.cli import main

    with pytest.raises(T3SError, match="diffusion student"):
        load_config(None, ["objective=diffusion", "modes=[sft,t3s]", "eval.backend=vllm"], flat=())
    with pytest.raises(T3SError, match="probe_student"):
        load_config(None, ["objective=diffusion", "modes=[sft]", "probe_student=true", "probe.backend=vllm"], flat=())
    load_config(None, ["objective=diffusion", "modes=[sft]", "probe.backend=vllm"], flat=())  # the AR selector's
    out = tmp_path / "e"
    assert (
        main(
            [
                "eval",
                "--model",
                str(dtiny / "dllm"),
                "--data",
                str(dtiny / "train.jsonl"),
                "--out",
                str(out),
                "--backend",
                "vllm",
                "--quiet",
            ]
        )
        == 2
    )
    assert not out.exists()
    assert (
        main(
            [
                "probe",
                "--model",
                str(dtiny / "dllm"),
                "--data",
                str(dtiny / "train.jsonl"),
                "--out",
                str(tmp_path / "p"),
                "--quiet",
                "probe.backend=vllm",
            ]
        )
        == 2
    )
    assert not (tmp_path / "p").exists()


def test_a_setting_reruns_only_the_stages_that_read_it(dtiny, tmp_path):
    """Each stage's fingerprint holds the settings it reads: a sampler setting (diffusion.steps) re-runs only the
    stages that sample (evaluations, the student's own probe), τ only the selections and what follows them, a
    loss setting the trainings (and the student's probe, which trains) and what follows them; the AR selector's
    probe and the scores never."""
    import re

    from t3s.config import load_config
    from t3s.ledger import train_inputs
    from t3s.objectives import objective_for
    from t3s.pipeline import run

    overrides = [
        f"student={dtiny / 'dllm'}",
        f"selector={dtiny / 'model'}",
        f"train_data={dtiny / 'train.jsonl'}",
        "modes=[sft,t3s]",
        "train.max_steps=2",
        "selector_train.max_steps=2",
        "probe.eval_every=1",
        "probe.subset=4",
        "eval.max_new_tokens=8",
        "diffusion.block_length=8",
        "diffusion.steps=8",
        "diffusion.tau=0.0",
    ]
    out = tmp_path / "run"

    def ran(*more: str) -> set[str]:
        overrides.extend(more)
        log = out / "run.log"
        before = log.read_text().count("\n") if log.exists() else 0
        summary, code = run(load_config("examples/tiny-diffusion-run.yaml", overrides, flat=()), out, progress=False)
        assert code == 0
        lines = log.read_text().splitlines()[before:]
        return {m.group(1) for line in lines if (m := re.search(r"\] (\S+): running$", line))}

    first = ran()
    assert {"seed-0/probe", "scores-init", "seed-0/train-sft", "seed-0/eval-t3s"} <= first
    samplers = {"eval-base", "seed-0/eval-sft", "seed-0/eval-t3s", "seed-0/probe-student"}
    assert ran("diffusion.steps=4") == samplers
    assert ran("diffusion.tau=0.1") == {"seed-0/select-t3s", "seed-0/train-t3s", "seed-0/eval-t3s"}
    assert ran("diffusion.forced_weight=inverse_t") == {
        "seed-0/probe-student",
        "seed-0/train-sft",
        "seed-0/train-t3s",
        "seed-0/eval-sft",
        "seed-0/eval-t3s",
    }
    assert ran() == set()
    # a tracked training samples along the way: then a sampler setting reaches it too
    cfg = load_config(None, ["objective=diffusion", "modes=[sft]"], flat=())
    tracked = load_config(None, ["objective=diffusion", "modes=[sft]", "probe.track_every=1"], flat=())
    steps = load_config(
        None, ["objective=diffusion", "modes=[sft]", "probe.track_every=1", "diffusion.steps=4"], flat=()
    )
    untracked_steps = load_config(None, ["objective=diffusion", "modes=[sft]", "diffusion.steps=4"], flat=())
    fp = {
        name: train_inputs(c, objective_for(c), c.train)
        for name, c in (("cfg", cfg), ("tracked", tracked), ("steps", steps), ("untracked_steps", untracked_steps))
    }
    assert fp["cfg"] == fp["untracked_steps"] and fp["tracked"] != fp["steps"]


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
