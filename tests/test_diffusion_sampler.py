"""The diffusion sampler: block by block, deterministic, stops once every row has ended, logits on another device."""

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
