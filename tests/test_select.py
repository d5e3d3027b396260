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
        ids=ids, prompt_lens=[3] * len(lps),
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
