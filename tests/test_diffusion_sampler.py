"""The diffusion sampler: block by block, deterministic, stops once every row has ended, logits on another device."""

import pytest
import torch

from t3s.config import DiffusionConfig, GenConfig
from t3s.models import load_tokenizer, resolve_precision
from t3s.objectives.diffusion import load_mask_predictor, sample

FP32 = resolve_precision("float32")

FP32 = resolve_precision("float32")


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


# ----------------------------------------------------------------------------------------------- parallel decoding,
# block-causal reading, the cache


def fixed_schedule_reference(model, tok, prompts, gcfg, dcfg):
    """The sampler as it was before parallel decoding and the cache (t3s 2026-12-06), written out: left-padded
    prompts, canvas blocks from the end of the padded prompt, a full forward over prompt + canvas at every step,
    the fixed number of commits per step; returns each job's answer (token ids before the first EOS)."""
    from t3s.objectives.diffusion import attention_inputs, mask_style

    gen, block, steps = dcfg.canvas(gcfg.max_new_tokens)
    per_block, mask_id = steps // (gen // block), tok.mask_token_id
    jobs = sorted(((i, j) for i in range(len(prompts)) for j in range(gcfg.k)), key=lambda x: -len(prompts[x[0]]))
    answers = {}
    for b, s in enumerate(range(0, len(jobs), gcfg.batch_size)):
        batch = jobs[s : s + gcfg.batch_size]
        P = max(len(prompts[i]) for i, _ in batch)
        x = torch.full((len(batch), P + gen), mask_id)
        att = torch.ones_like(x)
        for r, (i, _) in enumerate(batch):
            x[r, : P - len(prompts[i])], att[r, : P - len(prompts[i])] = tok.pad_token_id, 0
            x[r, P - len(prompts[i]) : P] = torch.tensor(prompts[i])
        g = torch.Generator().manual_seed(gcfg.seed * 100_003 + b)
        for blk in range(gen // block):
            lo, hi = P + blk * block, P + (blk + 1) * block
            n = [block // per_block + (1 if q < block % per_block else 0) for q in range(per_block)]
            for n_commit in n:
                masked = x[:, lo:hi] == mask_id
                k = min(n_commit, int(masked.sum(1).max()))
                if k == 0:
                    continue
                with torch.no_grad():
                    extra = attention_inputs(mask_style(model), att, torch.float32)
                    logits = model(input_ids=x, **extra).logits[:, lo:hi].float()
                if gcfg.temperature > 0:
                    u = torch.rand(logits.shape, generator=g).clamp_(1e-10, 1 - 1e-10)
                    pred = (logits - gcfg.temperature * torch.log(-torch.log(u))).argmax(-1)
                else:
                    pred = logits.argmax(-1)
                if dcfg.remasking == "low_confidence":
                    conf = torch.softmax(logits, -1).gather(-1, pred[..., None])[..., 0]
                else:
                    conf = torch.rand(masked.shape, generator=g)
                conf = torch.where(masked, conf, torch.tensor(-float("inf")))
                take = torch.zeros_like(masked).scatter_(1, conf.topk(k, dim=-1).indices, True) & masked
                x[:, lo:hi] = torch.where(take, pred, x[:, lo:hi])
        for r in range(len(batch)):
            seq = x[r, P:].tolist()
            answers[batch[r]] = seq[: seq.index(tok.eos_token_id)] if tok.eos_token_id in seq else seq
    return [[answers[(i, j)] for j in range(gcfg.k)] for i in range(len(prompts))]


def llada2_generate_reference(model, prompt, gen, block, threshold, mask_id, eos):
    """LLaDA-2's own generate() for one prompt, greedy, one commit per step as its default schedule (block_length
    steps per block), written from its published description: the canvas is padded to whole blocks on a grid
    from the first prompt token; block b is sampled with a forward over positions [0, (b+1)·block) only, under the
    additive block-causal mask (a block sees itself and earlier blocks) and position ids 0..; each step commits
    the masked positions above `threshold` if there are at least one, else the most confident one; after a block
    holding an EOS it stops; the answer is the canvas up to the first EOS, at most `gen` tokens."""
    p = len(prompt)
    n_blocks = (p + gen + block - 1) // block
    x = torch.full((1, n_blocks * block), mask_id)
    x[0, :p] = torch.tensor(prompt)
    ids = torch.arange(n_blocks * block) // block
    allowed = ids[None, :] <= ids[:, None]
    dtype = next(model.parameters()).dtype
    full = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
    for b in range(p // block, n_blocks):
        end = (b + 1) * block
        for _ in range(block):
            active = x[0, end - block : end] == mask_id
            if not active.any():
                break
            with torch.no_grad():
                logits = model(
                    input_ids=x[:, :end], attention_mask=full[:, :, :end, :end], position_ids=torch.arange(end)[None]
                ).logits[0, -block:]
            prob, pred = logits.float().softmax(-1).max(-1)
            conf = torch.where(active, prob, torch.tensor(-float("inf")))
            take = conf > threshold
            if take.sum() < 1:
                take = torch.zeros_like(active)
                take[conf.argmax()] = True
            x[0, end - block : end] = torch.where(take, pred, x[0, end - block : end])
        if (x[0, p:end] == eos).any():
            break
    seq = x[0, p : p + gen].tolist()
    return seq[: seq.index(eos)] if eos in seq else seq


def _sharp_llada2(dtiny, scale=3.0):
    """The LLaDA-2-shaped fixture with sharper weights than its init's: which positions a query reads changes its
    predictions, so a wrong mask, position or cache shows in the tokens. In float64: a random model has near-ties
    that float32 rounding (which differs between one long forward and a cached short one, ~1e-6) would flip."""
    model = load_mask_predictor(dtiny / "dllm2", FP32, trust_remote_code=True).eval().double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18, 19, 20], [21, 22, 23, 24, 25, 26, 27, 28, 29, 30]]


def _ids(out):
    return [[g.token_ids for g in row] for row in out]


@pytest.mark.parametrize("student", ["dllm", "dllm2"])
def test_the_default_settings_reproduce_the_fixed_schedule_sampler(dtiny, student):
    """commit_threshold 1.0 and no cache, bidirectional: the sampler as it was, token for token, greedy and
    sampled, with both remasking rules (a batch of 2 with uneven prompts, so padding and batches are exercised)."""
    tok = load_tokenizer(dtiny / "dllm")
    model = load_mask_predictor(dtiny / student, FP32, trust_remote_code=True)
    for temperature, remasking, k in ((0.0, "low_confidence", 1), (1.0, "low_confidence", 2), (0.7, "random", 1)):
        g = GenConfig(max_new_tokens=16, batch_size=2, temperature=temperature, seed=3, k=k)
        d = DiffusionConfig(block_length=8, steps=8, remasking=remasking, attention="bidirectional")
        assert _ids(sample(model, tok, PROMPTS, g, d, FP32, progress=False)) == fixed_schedule_reference(
            model, tok, PROMPTS, g, d
        )


def test_block_causal_sampling_is_llada2_generate_and_batches_change_nothing(dtiny):
    """attention auto on a LLaDA-2 model = block_causal: each prompt's answer is what LLaDA-2's generate() gives
    it alone (grid from the first prompt token, including prompts ending on a block boundary: 8 tokens), with and
    without the threshold, with and without the cache, and sampled in one batch of uneven prompts."""
    tok = load_tokenizer(dtiny / "dllm")
    model = _sharp_llada2(dtiny)
    g = GenConfig(max_new_tokens=16, batch_size=4)
    for threshold in (1.0, 0.3):
        ref = [
            [llada2_generate_reference(model, p, 16, 8, threshold, tok.mask_token_id, tok.eos_token_id)]
            for p in PROMPTS
        ]
        assert len({len(r[0]) for r in ref}) + len({tuple(r[0]) for r in ref}) > 2  # the answers differ
        for cache in ("none", "prefix"):
            d = DiffusionConfig(block_length=8, commit_threshold=threshold, cache=cache)
            assert _ids(sample(model, tok, PROMPTS, g, d, FP32, progress=False)) == ref, (threshold, cache)


class Counter(torch.nn.Module):
    """Wraps a model (keeping its forward's signature visible) and counts the query tokens of every forward."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.tokens = model, model.config, []

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        self.tokens.append(input_ids.shape[1])
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )


def test_the_exact_cache_gives_the_uncached_result_and_recomputes_only_the_current_blocks(dtiny):
    """block_causal + cache: the same tokens as without (greedy and sampled), with far fewer positions run through
    the model; every cached forward covers at most the previous and the current block of the batch's rows."""
    tok = load_tokenizer(dtiny / "dllm")
    model = _sharp_llada2(dtiny)
    for temperature in (0.0, 1.0):
        g = GenConfig(max_new_tokens=24, batch_size=2, temperature=temperature, seed=5)
        a, b = Counter(model), Counter(model)
        plain = sample(a, tok, PROMPTS, g, DiffusionConfig(block_length=8), FP32, progress=False)
        cached = sample(b, tok, PROMPTS, g, DiffusionConfig(block_length=8, cache="prefix"), FP32, progress=False)
        assert _ids(plain) == _ids(cached)
        assert len(a.tokens) == len(b.tokens) and sum(b.tokens) < 0.6 * sum(a.tokens)
        # the longest prompt of a batch (10 tokens) and a grid offset between its rows add at most 2 blocks
        assert max(b.tokens[1:]) <= 8 * 2 + 8


def test_the_approximate_cache_on_a_bidirectional_canvas_refreshes_at_each_block(dtiny):
    """bidirectional + cache (Fast-dLLM's prefix cache): a full forward at the first step of each block, then
    the block and what follows it only; answers complete and within the canvas."""
    tok = load_tokenizer(dtiny / "dllm")
    counter = Counter(_sharp_llada2(dtiny))
    g = GenConfig(max_new_tokens=16, batch_size=2)
    d = DiffusionConfig(block_length=8, attention="bidirectional", cache="prefix")
    out = sample(counter, tok, PROMPTS[:2], g, d, FP32, progress=False)
    P = 5
    assert counter.tokens[0] == P + 16 and counter.tokens[1:8] == [16] * 7  # block 0: refresh, then from P on
    assert counter.tokens[8] == P + 16 and counter.tokens[9:] == [8] * 7  # block 1: refresh, then from P + 8 on
    assert all(len(r[0].token_ids) <= 16 and tok.mask_token_id not in r[0].token_ids for r in out)


def test_threshold_commits_the_confident_ones_and_at_least_k():
    """commit_step with a threshold: the union of the k most confident and those above the threshold, which is
    LLaDA-2's rule (above-threshold ones if at least k, else the top k) and, with k = 1, Fast-dLLM's."""
    from t3s.objectives.diffusion import commit_step

    gen = torch.Generator().manual_seed(0)
    for seed in range(20):
        logits = 3 * torch.randn((3, 8, 11), generator=torch.Generator().manual_seed(seed))
        masked = torch.rand((3, 8), generator=torch.Generator().manual_seed(100 + seed)) < 0.7
        masked[:, 0] = True
        prob, pred = logits.softmax(-1).max(-1)
        for k, thr in ((1, 0.5), (2, 0.7), (3, 0.9)):
            out = commit_step(logits, torch.full((3, 8), 99), masked, k, 0.0, "low_confidence", gen, thr)
            for r in range(3):
                conf = torch.where(masked[r], prob[r], torch.tensor(-1.0))
                high = masked[r] & (conf > thr)
                kk = min(k, int(masked[r].sum()))
                want = (
                    high
                    if high.sum() >= kk
                    else torch.zeros(8, dtype=torch.bool).index_fill(0, conf.topk(kk).indices, True)
                )
                assert ((out[r] != 99) == want).all() and (out[r][want] == pred[r][want]).all()


def test_cache_and_block_causal_are_refused_where_the_model_cannot(dtiny):
    import pytest as _pytest

    from t3s import T3SError

    tok = load_tokenizer(dtiny / "dllm")
    bert = load_mask_predictor(dtiny / "dllm", FP32)
    g = GenConfig(max_new_tokens=8, batch_size=1)
    with _pytest.raises(T3SError, match="past_key_values"):
        sample(bert, tok, [[5, 6]], g, DiffusionConfig(block_length=8, cache="prefix"), FP32, progress=False)
    with _pytest.raises(T3SError, match="4-D attention mask"):
        sample(bert, tok, [[5, 6]], g, DiffusionConfig(block_length=8, attention="block_causal"), FP32, progress=False)
    for bad in ({"commit_threshold": 0.0}, {"commit_threshold": 1.5}, {"cache": "dual"}, {"attention": "causal"}):
        with _pytest.raises(T3SError, match="diffusion."):
            DiffusionConfig(**bad)


def test_new_sampler_settings_enter_the_fingerprint_only_when_set():
    """Sampling stages finished before these settings existed keep their fingerprints (the defaults reproduce
    that sampler); setting one changes it."""
    base = DiffusionConfig().sampler()
    assert set(base) == {"gen_length", "block_length", "steps", "remasking", "mask_token_id"}
    for kv in ({"commit_threshold": 0.9}, {"cache": "prefix"}, {"attention": "block_causal"}):
        assert DiffusionConfig(**kv).sampler() == {**base, **kv}


def test_a_llada2_students_evaluations_say_they_read_the_canvas_block_causally(dtiny, monkeypatch):
    """`attention: auto` samples LLaDA-2 block-causally, which earlier versions did not: the run's objective
    resolves it for such a student, so its sampling stages' fingerprints change and evaluations finished before are
    redone, not reused. A ModernBERT student keeps `auto` and its fingerprints; an explicit setting is kept."""
    from t3s.config import load_config
    from t3s.ledger import eval_inputs
    from t3s.objectives import objective_for, objective_of

    def cfg(student, *keys):
        return load_config(None, ["objective=diffusion", "selector=s", f"student={student}", *keys], flat=())

    base = DiffusionConfig().sampler()
    llada2, bert = str(dtiny / "dllm2"), str(dtiny / "dllm")
    assert objective_for(cfg(llada2)).sampler_inputs() == {**base, "attention": "block_causal"}
    assert objective_for(cfg(bert)).sampler_inputs() == base
    assert eval_inputs(cfg(llada2), objective_for(cfg(llada2))) != eval_inputs(cfg(bert), objective_for(cfg(bert)))
    explicit = "diffusion.attention=bidirectional"
    assert objective_for(cfg(llada2, explicit)).sampler_inputs() == {**base, "attention": "bidirectional"}
    # a single command's model decides, not the config's student
    assert objective_of(llada2, cfg(bert)).sampler_inputs()["attention"] == "block_causal"
    assert "attention" not in objective_of(bert, cfg(llada2)).sampler_inputs()
    # a student that cannot be read yet leaves `auto` to the sampler (which resolves it from the loaded model)
    assert objective_for(cfg(str(dtiny / "missing"))).sampler_inputs() == base
    # a run builds its objective several times: the student's config is read once
    import t3s.objectives.diffusion as diffusion

    reads = []
    read = diffusion.read_config
    monkeypatch.setattr(diffusion, "read_config", lambda *a: reads.append(a) or read(*a))
    diffusion.model_type.cache_clear()
    for _ in range(3):
        assert objective_for(cfg(llada2)).sampler_inputs()["attention"] == "block_causal"
    assert len(reads) == 1
