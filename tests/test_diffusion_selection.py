"""Forced sets from an AR selector's Δc, and its projection onto a student with another tokenizer."""

import numpy as np
import pytest

from t3s import T3SError
from t3s.config import RenderConfig
from t3s.data import fingerprints, load_rows, render_rows
from t3s.models import load_tokenizer, resolve_precision
from t3s.objectives.masked import select_forced
from t3s.objectives.projection import project_row, projector, response_spans
from t3s.select import Selection, load_selection, write_selection

FP32 = resolve_precision("float32")

FP32 = resolve_precision("float32")


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
