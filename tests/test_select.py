import numpy as np
import pytest

from t3s import T3SError
from t3s.score import ScoreSet
from t3s.select import keep_mask, load_selection, select, write_selection

FPS = {"data": "d", "tokenizer": "t", "template": "c"}


def scoreset(lps, fps=FPS, precision="float32", ids=None, path="s"):
    ids = ids or [f"r{i}" for i in range(len(lps))]
    return ScoreSet(
        meta={"fingerprints": dict(fps), "precision": precision, "path": path, "model_step": 6},
        ids=ids,
        prompt_lens=[3] * len(lps),
        response_ids=[np.arange(len(x)) for x in lps],
        logprobs=[np.asarray(x, dtype=np.float32) for x in lps],
    )


# Two rows, 7 tokens. Δc = cb − c0 is chosen so that exactly 3 tokens are anchors (Δc > 0).
C0 = [[-0.1, -2.0, -0.5, -3.0], [-1.0, -0.2, -4.0]]
CB = [[-0.05, -2.5, -0.4, -3.5], [-2.0, -0.1, -4.0]]
# Δc:  [+0.05, -0.5, +0.1, -0.5], [-1.0, +0.1, 0.0]  -> anchors at flat positions 0, 2, 5


def masks(mode, **kw):
    sel = select(scoreset(C0), scoreset(CB, path="b"), mode, **kw)
    return [k.tolist() for k in sel.keep], sel


def test_t3s_and_reverse_masks():
    keep, sel = masks("t3s")
    assert keep == [[False, True, False, True], [True, False, True]]
    assert sel.meta["stats"]["dropped_tokens"] == 3 and sel.meta["stats"]["anchor_fraction"] == pytest.approx(3 / 7)
    np.testing.assert_allclose(np.concatenate(sel.delta), [0.05, -0.5, 0.1, -0.5, -1.0, 0.1, 0.0], atol=1e-6)
    keep, sel = masks("reverse")
    assert keep == [[True, False, True, False], [False, True, False]]
    assert sel.meta["stats"]["kept_tokens"] == 3
    keep, sel = masks("t3s", threshold=0.07)  # only Δc > 0.07: positions 2 and 5
    assert keep == [[True, True, False, True], [True, False, True]]


def test_static_masks_match_the_t3s_count():
    # c0 flat: [-0.1, -2.0, -0.5, -3.0, -1.0, -0.2, -4.0]; t3s drops 3
    keep, sel = masks("static-high")  # drop the 3 highest c0: -0.1, -0.2, -0.5
    assert keep == [[False, True, False, True], [True, False, True]]
    keep, sel = masks("static-low")  # drop the 3 lowest c0: -4.0, -3.0, -2.0
    assert keep == [[True, False, True, False], [True, True, False]]
    assert sel.meta["stats"]["dropped_tokens"] == 3


def test_random_mask_is_matched_and_seeded():
    keep1, sel = masks("random", seed=1)
    assert sel.meta["stats"]["dropped_tokens"] == 3 and sel.meta["seed"] == 1
    assert keep1 == masks("random", seed=1)[0]
    d = np.zeros(1000)
    d[:200] = 1.0
    a, b = keep_mask("random", d, d, seed=0), keep_mask("random", d, d, seed=1)
    assert (~a).sum() == (~b).sum() == 200 and not np.array_equal(a, b)


def test_none_keeps_everything_and_stats():
    keep, sel = masks("none")
    assert all(all(k) for k in keep)
    s = sel.meta["stats"]
    assert (s["tokens"], s["dropped_tokens"], s["anchor_tokens"]) == (7, 0, 3)
    assert sel.meta["bottleneck_step"] == 6  # read from the bottleneck scores
    with pytest.raises(T3SError, match="unknown selection mode"):
        masks("top")


@pytest.mark.parametrize("key", ["data", "tokenizer", "template"])
def test_mismatched_score_sets_are_refused(key):
    with pytest.raises(T3SError, match=f"different {key}"):
        select(scoreset(C0), scoreset(CB, fps={**FPS, key: "other"}), "t3s")


def test_other_mismatches_are_refused():
    with pytest.raises(T3SError, match="same precision"):
        select(scoreset(C0), scoreset(CB, precision="bfloat16"), "t3s")
    with pytest.raises(T3SError, match="different row ids"):
        select(scoreset(C0), scoreset(CB, ids=["a", "b"]), "t3s")
    b = scoreset(CB)
    b.response_ids[1] = b.response_ids[1] + 1
    with pytest.raises(T3SError, match="row 'r1' has different response tokens"):
        select(scoreset(C0), b, "t3s")


def test_write_and_load(tmp_path):
    _, sel = masks("t3s")
    write_selection(sel, tmp_path / "sel")
    back = load_selection(tmp_path / "sel")
    assert [k.tolist() for k in back.keep] == [k.tolist() for k in sel.keep]
    assert back.meta["stats"] == sel.meta["stats"] and back.meta["mode"] == "t3s"


# θ_T's scores for the controls. gain = cT − c0: [+0.09, +1.5, -0.2, +0.5], [+0.9, -0.1, +2.0]
CT = [[-0.01, -0.5, -0.7, -2.5], [-0.1, -0.3, -2.0]]


def test_excess_loss_keeps_the_largest_gains_as_many_as_t3s_keeps():
    sel = select(scoreset(C0), scoreset(CB, path="b"), "excess-loss", reference=scoreset(CT, path="T"))
    # t3s keeps 4 of 7; the 4 largest gains: +2.0 (flat 6), +1.5 (1), +0.9 (4), +0.5 (3)
    assert [k.tolist() for k in sel.keep] == [[False, True, False, True], [True, False, True]]
    assert sel.meta["stats"]["kept_tokens"] == 4 and sel.meta["reference_scores"]["path"] == "T"
    with pytest.raises(T3SError, match="needs the scores of a reference model"):
        select(scoreset(C0), scoreset(CB), "excess-loss")
    with pytest.raises(T3SError, match="different data"):
        select(scoreset(C0), scoreset(CB), "excess-loss", reference=scoreset(CT, fps={**FPS, "data": "x"}))


def test_t3s_rule_on_another_checkpoint():
    """t3s-final / t3s-early are the t3s rule on the scores passed in θ_b's place (here θ_T's)."""
    for mode in ("t3s-final", "t3s-early"):
        sel = select(scoreset(C0), scoreset(CT, path="T"), mode)
        # Δc at θ_T = gain above: anchors (> 0) at flat 0, 1, 3, 4, 6
        assert [k.tolist() for k in sel.keep] == [[False, False, True, False], [False, True, False]]
        assert sel.meta["mode"] == mode


def test_auto_threshold_leaves_near_certain_tokens_in_neither_group():
    """`auto`: τ = 0, except that tokens with p > 0.99 at both checkpoints are settled (not anchors)."""
    from t3s.select import groups

    c0 = np.log(np.array([0.999, 0.995, 0.999, 0.5, 0.5, 0.98, 0.9995]))
    cb = np.log(np.array([0.9995, 0.999, 0.98, 0.6, 0.4, 0.995, 0.9990]))
    anchors, settled = groups(cb - c0, c0, "auto")
    # by hand: settled where both p > 0.99 -> positions 0, 1, 6; anchors: Δc > 0 and not settled -> 3, 5
    assert settled.tolist() == [True, True, False, False, False, False, True]
    assert anchors.tolist() == [False, False, False, True, False, True, False]
    a0, s0 = groups(cb - c0, c0, 0.0)  # τ = 0: the drift of tokens 0 and 1 makes them anchors
    assert a0.tolist() == [True, True, False, True, False, True, False] and not s0.any()
    sel = select(scoreset([c0[:4], c0[4:]]), scoreset([cb[:4], cb[4:]], path="b"), "t3s", threshold="auto")
    assert [k.tolist() for k in sel.keep] == [[True, True, True, False], [True, False, True]]
    assert sel.meta["stats"]["settled_fraction"] == pytest.approx(3 / 7)
    assert sel.meta["stats"]["anchor_fraction"] == pytest.approx(2 / 7) and sel.meta["threshold"] == "auto"
    rev = select(scoreset([c0[:4], c0[4:]]), scoreset([cb[:4], cb[4:]], path="b"), "reverse", threshold="auto")
    assert [k.tolist() for k in rev.keep] == [[False, False, False, True], [False, True, False]]
    with pytest.raises(T3SError, match="number or auto"):
        select(scoreset(C0), scoreset(CB), "t3s", threshold="often")
