"""The report builds from a tiny run and renders, images included, in a real headless Chromium."""

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from t3s.config import load_config
from t3s.pipeline import run
from t3s.report import build_report


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(
        None,
        [
            f"student={tiny / 'model'}",
            f"train_data={tiny / 'train.jsonl'}",
            "modes=[sft, t3s, reverse]",
            "train.max_steps=4",
            "train.learning_rate=3e-3",
            "train.dtype=float32",
            "probe.eval_every=2",
            "probe.keep_all=true",
            "probe.continue_without_dip=true",
            "eval.max_new_tokens=8",
            "score.dtype=float32",
        ],
    )
    summary, code = run(cfg, out, progress=False)
    assert code == 0
    return out


def test_report_builds_with_every_section(tiny_run):
    path = build_report(tiny_run, log=lambda *a: None)
    page = path.read_text()
    for png in ("trajectories", "delta_hist", "bifurcation", "gradients"):
        assert (path.parent / f"{png}.png").stat().st_size > 1000, png
    assert page.count("data:image/png;base64,") == 4  # self-contained
    for title in ("Summary", "Trajectories", "Δc and the anchor", "Figure 6", "coloured by Δc", "Most frequent"):
        assert title in page, title
    assert "Will T3S pay on this run?" in page and "<strong>no imitation shock: use SFT</strong>" in page
    assert page.count('class="tk"') > 50  # the token heatmap
    assert "| method |" not in page and "<td>t3s</td>" in page
    # the cost of T3S against SFT alone, as a table, with this run's own ratio
    from t3s.cost import run_costs

    (c,) = run_costs(tiny_run)["seeds"]
    assert "What T3S cost against SFT alone" in page and f"<td>{c['ratio']:.2f}×</td>" in page


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("CI"),
    reason="Chromium is not installed (apt-get install chromium); CI installs it",
)
def test_report_renders_its_images_in_headless_chromium(tiny_run):
    path = build_report(tiny_run, gradients=False, log=lambda *a: None)
    exe = _chromium()
    assert exe, "CI must install Chromium (see .ci/run)"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp()}",
        "--virtual-time-budget=10000",
    ]
    dom = subprocess.run([exe, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert m, dom.stderr[-2000:]
    loaded, total = map(int, m.groups())
    assert total == 3 and loaded == total  # trajectories, Δc histogram, bifurcation
    shot = path.parent / "screenshot.png"
    subprocess.run(
        [exe, *flags, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000  # a page with pictures, not a blank one


def test_gradient_dynamics_match_a_row_by_row_computation(tiny_run, tiny):
    """The report's Figure-6 numbers at θ_0, recomputed one row at a time without padding."""
    import torch
    import torch.nn.functional as F

    from t3s.config import RenderConfig
    from t3s.data import load_rows, render_rows
    from t3s.models import load_causal_lm, load_tokenizer, resolve_precision
    from t3s.report import _selection, gradient_dynamics

    sel = _selection(tiny_run, 0)
    got = gradient_dynamics(tiny_run, 0, sel)
    assert got["steps"][0] == 0 and len(got["steps"]) == 3  # θ_0 and the checkpoints at steps 2 and 4
    tok = load_tokenizer(tiny / "model")
    examples, _ = render_rows(load_rows(tiny / "train.jsonl"), tok, RenderConfig())
    model = load_causal_lm(tiny / "model", resolve_precision("float32"))
    n = sum(len(e.response_ids) for e in examples)
    grads = []
    for anchors in (True, False):
        model.zero_grad()
        total = 0.0
        for e in examples:
            mask = torch.from_numpy(sel.delta[sel.by_id[e.id]] > 0.0)
            mask = mask if anchors else ~mask
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, e.prompt_len - 1 : -1]
            total = total + F.cross_entropy(logits, torch.tensor(e.response_ids), reduction="none")[mask].sum()
        (total / n).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    ga, gy = grads
    assert got["ratio"][0] == pytest.approx(float(ga.norm() / gy.norm()), rel=1e-4)
    assert got["cosine"][0] == pytest.approx(float(F.cosine_similarity(ga, gy, dim=0)), abs=1e-4)


def test_anchor_rows_follow_the_selections_rule_including_auto():
    """The report's anchor / yet-to-learn split is the selection's own: with `threshold: auto`, settled tokens
    (Δc > 0 but near-certain at both checkpoints) are not anchors, which Δc > 0 alone would call them."""
    import numpy as np

    from t3s.report import _anchor_rows
    from t3s.select import Selection

    delta = [np.array([0.0001, 0.5, -0.2]), np.array([0.0002, -0.1])]
    keep = [np.array([True, False, True]), np.array([True, True])]  # t3s under auto: only 0.5 is an anchor
    sel = Selection({"mode": "t3s", "threshold": "auto"}, ["a", "b"], [np.arange(3), np.arange(2)], keep, delta)
    assert [r.tolist() for r in _anchor_rows(sel)] == [[False, True, False], [False, False]]
    other = Selection({"mode": "random", "threshold": 0.0}, ["a", "b"], [np.arange(3), np.arange(2)], keep, delta)
    assert [r.tolist() for r in _anchor_rows(other)] == [[True, True, False], [True, False]]
