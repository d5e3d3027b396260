"""`t3s report RUN_DIR`: one self-contained report.html (images embedded) plus the PNGs, for any `t3s run`.

Sections: the summary table (mean ± sd over seeds); accuracy and loss trajectories with the bottleneck marked;
the Δc histogram with the threshold; the bifurcation plot (mean confidence of anchor vs yet-to-learn tokens at
every probe checkpoint); the anchor / yet-to-learn gradient-norm ratio and gradient cosine along the probe (the
paper's Figure 6; needs the probe's checkpoints, `probe.keep_all: true`); a token heatmap of a few training rows
coloured by Δc; the most frequent anchor and yet-to-learn tokens.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from t3s import T3SError, __version__
from t3s.artifacts import read_json, read_jsonl, read_npz
from t3s.cost import format_costs, run_costs
from t3s.verdict import Verdict

COLORS = {
    "sft": "C0",
    "t3s": "C3",
    "reverse": "C1",
    "static-high": "C4",
    "static-low": "C5",
    "random": "C7",
    "rrt": "C2",
    "base": "k",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _jsonl(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def _seeds(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("seed-*") if p.is_dir())


# ----------------------------------------------------------------------------------------------- figures


def plot_trajectories(run: Path, seeds: list[int], out: Path) -> Path | None:
    plt = _plt()
    probes = {s: _jsonl(run / f"seed-{s}" / "probe" / "trajectory.jsonl") for s in seeds}
    if not any(probes.values()):
        return None
    tracked = {}
    for s in seeds:
        for tj in sorted((run / f"seed-{s}" / "train").glob("*/trajectory.jsonl")):
            tracked.setdefault(tj.parent.name, []).append(_jsonl(tj))
    if probes and tracked:
        for s, pts in probes.items():
            if pts:
                tracked.setdefault("sft", []).append(pts)
    n = 3 if tracked else 2
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4))
    ax, bx = axes[0], axes[-1]
    for s, pts in probes.items():
        if not pts:
            continue
        info = read_json(run / f"seed-{s}" / "probe" / "probe.json")
        steps = [p["step"] for p in pts]
        ax.plot(
            steps,
            [100 * p["train_accuracy"] for p in pts],
            "-o",
            ms=3,
            color="C0",
            alpha=0.8,
            label="SFT train accuracy" if s == seeds[0] else None,
        )
        if any(p.get("heldout_accuracy") is not None for p in pts):
            ax.plot(
                steps,
                [None if p["heldout_accuracy"] is None else 100 * p["heldout_accuracy"] for p in pts],
                "-s",
                ms=3,
                color="C2",
                alpha=0.8,
                label="SFT held-out accuracy" if s == seeds[0] else None,
            )
        if any(p.get("marker_rate") is not None for p in pts):
            ax.plot(
                steps,
                [None if p["marker_rate"] is None else 100 * p["marker_rate"] for p in pts],
                ":",
                color="C4",
                alpha=0.8,
                label="teacher-style marker rate" if s == seeds[0] else None,
            )
        if info.get("bottleneck_step") is not None and info.get("usable"):
            ax.axvline(
                info["bottleneck_step"], color="k", lw=1, alpha=0.4, label="bottleneck θ_b" if s == seeds[0] else None
            )
    ax.set_xlabel("step")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.set_title("probe (plain SFT): accuracy per seed")
    ax.legend(fontsize=8, loc="best")
    if tracked:
        cx = axes[1]
        for mode, runs in sorted(tracked.items(), key=lambda kv: kv[0] != "sft"):
            steps = sorted({p["step"] for r in runs for p in r})
            mean = [100 * np.mean([p["train_accuracy"] for r in runs for p in r if p["step"] == st]) for st in steps]
            cx.plot(steps, mean, "-o", ms=2, color=COLORS.get(mode), label=mode)
        for b in {
            read_json(p).get("bottleneck_step")
            for s in seeds
            if (p := run / f"seed-{s}" / "probe" / "probe.json").exists()
        } - {None}:
            cx.axvline(b, color="k", lw=1, alpha=0.3)
        cx.set_xlabel("step")
        cx.set_ylabel("training accuracy %")
        cx.set_ylim(-2, 102)
        cx.set_title("training accuracy per mode (mean over seeds)")
        cx.legend(fontsize=8)
    # loss per mode (mean over seeds) from the trainers' logs; sft from the probe
    modes: dict[str, list[list[tuple[int, float]]]] = {}
    for s in seeds:
        pts = probes[s]
        if pts:
            modes.setdefault("sft", []).append([(p["step"], p["loss"]) for p in pts if p.get("loss") is not None])
        for tj in sorted((run / f"seed-{s}" / "train").glob("*/train.json")):
            hist = read_json(tj).get("log_history", [])
            modes.setdefault(tj.parent.name, []).append([(h["step"], h["loss"]) for h in hist if "loss" in h])
    for mode, runs in modes.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        steps = sorted({st for r in runs for st, _ in r})
        mean = np.array([np.mean([dict(r)[st] for r in runs if st in dict(r)]) for st in steps])
        w = min(5, len(mean))  # moving average: masked modes train on few tokens per step, so their loss is noisy
        smooth = np.convolve(mean, np.ones(w) / w, mode="valid")
        bx.plot(steps[w - 1 :], smooth, color=COLORS.get(mode, None), label=mode)
    bx.set_xlabel("step")
    bx.set_ylabel("training loss (on the tokens each mode trains on)")
    bx.set_title("training loss per mode (mean over seeds)")
    bx.legend(fontsize=8)
    return _save(fig, out / "trajectories.png")


def _selection(run: Path, seed: int, mode: str = "t3s"):
    from t3s.select import load_selection

    d = run / f"seed-{seed}" / "selections" / mode
    return load_selection(d) if d.exists() else None


def plot_delta_hist(sel: Any, out: Path) -> Path:
    plt = _plt()
    d = np.concatenate(sel.delta)
    thr = _thr(sel)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    lo, hi = np.quantile(d, [0.005, 0.995])
    bins = np.linspace(min(lo, thr) - 1e-6, max(hi, thr) + 1e-6, 80)
    ax.hist(np.clip(d, bins[0], bins[-1]), bins=bins, color="C7")
    share = 100 * np.concatenate(_anchor_rows(sel)).mean()
    rule = "auto (0; p > 0.99 at both: settled)" if sel.meta.get("threshold") == "auto" else f"{thr:g}"
    ax.axvline(thr, color="C3", lw=1.5, label=f"threshold {rule}: {share:.1f}% anchors")
    ax.set_xlabel("Δc = c(θ_b) − c(θ_0)")
    ax.set_ylabel("tokens")
    ax.set_yscale("log")
    ax.set_title("change of confidence between θ_0 and the bottleneck")
    ax.legend(fontsize=8)
    return _save(fig, out / "delta_hist.png")


def bifurcation(run: Path, seed: int, sel: Any) -> dict[str, Any] | None:
    """Mean confidence of anchor and yet-to-learn tokens at every probe checkpoint."""
    f = run / f"seed-{seed}" / "probe" / "token_logprobs.npz"
    if not f.exists():
        return None
    z = read_npz(f)
    index = sel.by_id
    try:
        rows = _anchor_rows(sel)
        anchor = np.concatenate([rows[index[str(i)]] for i in z["ids"]])
    except KeyError:
        return None
    steps = sorted(int(k.split("_")[1]) for k in z if k.startswith("step_"))
    a = [float(z[f"step_{s}"][anchor].mean()) if anchor.any() else None for s in steps]
    y = [float(z[f"step_{s}"][~anchor].mean()) if (~anchor).any() else None for s in steps]
    return {"steps": steps, "anchor": a, "yet_to_learn": y}


def plot_bifurcation(data: dict[str, Any], bottleneck: int | None, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(data["steps"], data["anchor"], "-o", ms=3, color="C3", label="anchor tokens (Δc > τ)")
    ax.plot(data["steps"], data["yet_to_learn"], "-o", ms=3, color="C0", label="yet-to-learn tokens")
    if bottleneck is not None:
        ax.axvline(bottleneck, color="k", lw=1, alpha=0.4, label="bottleneck")
    ax.set_xlabel("probe step")
    ax.set_ylabel("mean log p(token)")
    ax.set_title("bifurcation of confidence along the probe")
    ax.legend(fontsize=8)
    return _save(fig, out / "bifurcation.png")


def gradient_dynamics(run: Path, seed: int, sel: Any, rows: int = 48) -> dict[str, Any] | None:
    """At every kept probe checkpoint: ‖∇ of the anchors' share of the SFT loss‖ / ‖∇ of the yet-to-learn
    share‖, and the cosine between the two gradients. Both shares are sums over their tokens divided by the
    number of response tokens, so together they are exactly the SFT loss."""
    import torch
    import torch.nn.functional as F

    from t3s.config import RenderConfig
    from t3s.data import load_rows, render_rows
    from t3s.models import load_causal_lm, load_tokenizer, resolve_precision

    ck_dir = run / f"seed-{seed}" / "probe" / "checkpoints"
    if not ck_dir.exists():
        return None
    cks = sorted(ck_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    import yaml

    conf = yaml.safe_load((run / "config.yaml").read_text())
    tok = load_tokenizer(cks[0])
    examples, _ = render_rows(load_rows(conf["train_data"]), tok, RenderConfig(**conf["render"]))
    index, anchor_rows = sel.by_id, _anchor_rows(sel)
    examples = [e for e in examples if e.id in index][:rows]
    # one padded batch; per position: the target token and which group it belongs to
    L = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), L), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros((len(examples), L), dtype=torch.long)
    tgt = torch.full((len(examples), L - 1), -100, dtype=torch.long)
    is_anchor = torch.zeros((len(examples), L - 1), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], att[i, :n] = torch.tensor(e.input_ids), 1
        tgt[i, e.prompt_len - 1 : n - 1] = torch.tensor(e.response_ids)
        is_anchor[i, e.prompt_len - 1 : n - 1] = torch.from_numpy(anchor_rows[index[e.id]])
    valid = tgt != -100
    n_resp = int(valid.sum())
    fp32 = resolve_precision("float32")
    out = {"steps": [], "ratio": [], "cosine": []}
    for ck in [None, *cks]:
        model = load_causal_lm(ck or conf["student"], fp32)
        params = [p for p in model.parameters() if p.requires_grad]
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        ce = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="none", ignore_index=-100
        ).view(tgt.shape)
        groups = [(ce * (valid & is_anchor)).sum() / n_resp, (ce * (valid & ~is_anchor)).sum() / n_resp]
        ga, gy = (torch.cat([g.flatten() for g in torch.autograd.grad(x, params, retain_graph=True)]) for x in groups)
        out["steps"].append(0 if ck is None else int(ck.name.split("-")[1]))
        out["ratio"].append(float(ga.norm() / gy.norm()))
        out["cosine"].append(float(F.cosine_similarity(ga, gy, dim=0)))
    return out


def plot_gradients(data: dict[str, Any], bottleneck: int | None, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(data["steps"], data["ratio"], "-o", ms=3, color="C3", label="‖g_anchor‖ / ‖g_yet-to-learn‖")
    ax.set_xlabel("probe step")
    ax.set_ylabel("gradient-norm ratio")
    bx = ax.twinx()
    bx.plot(data["steps"], data["cosine"], "--s", ms=3, color="C0", label="cos(g_anchor, g_yet-to-learn)")
    bx.set_ylabel("cosine")
    bx.set_ylim(-1, 1)
    bx.axhline(0, color="C0", lw=0.5, alpha=0.4)
    if bottleneck is not None:
        ax.axvline(bottleneck, color="k", lw=1, alpha=0.4)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = bx.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
    ax.set_title("anchor vs yet-to-learn gradients along the probe")
    return _save(fig, out / "gradients.png")


# ----------------------------------------------------------------------------------------------- tokens


def frequent_tokens(sel: Any, tok: Any, top: int = 15) -> dict[bool, list[tuple[str, int, float]]]:
    """The most frequent anchor (True) and yet-to-learn (False) tokens of a selection: (decoded text, count, share
    of that token's occurrences in the responses that fall in the group)."""
    counts: dict[bool, Counter] = {True: Counter(), False: Counter()}
    for ids, anc in zip(sel.response_ids, _anchor_rows(sel)):
        for t, is_a in zip(ids.tolist(), anc.tolist()):
            counts[bool(is_a)][t] += 1
    total = counts[True] + counts[False]
    return {g: [(tok.decode([t]), n, n / total[t]) for t, n in counts[g].most_common(top)] for g in (True, False)}


def token_tables(run: Path, sel: Any, rows_shown: int = 4, top: int = 15) -> tuple[str, str]:
    """A Δc heatmap of a few rows (HTML) and the most frequent anchor / yet-to-learn tokens (HTML table)."""
    import yaml

    from t3s.models import load_tokenizer

    conf = yaml.safe_load((run / "config.yaml").read_text())
    tok = load_tokenizer(conf["student"])
    anchor_rows = _anchor_rows(sel)
    scale = max(float(np.quantile(np.abs(np.concatenate(sel.delta)), 0.95)), 1e-6)
    rows_html = []
    for ids, d, anc in list(zip(sel.response_ids, sel.delta, anchor_rows))[:rows_shown]:
        spans = []
        for t, v, is_a in zip(ids.tolist(), d.tolist(), anc.tolist()):
            a = min(abs(v) / scale, 1.0)
            color = f"rgba(214,39,40,{a:.2f})" if is_a else f"rgba(31,119,180,{a:.2f})"
            text = html.escape(tok.decode([t])) or "&#9633;"
            spans.append(f'<span class="tk" style="background:{color}" title="Δc={v:+.4f}">{text}</span>')
        rows_html.append('<div class="row">' + "".join(spans) + "</div>")
    frequent = frequent_tokens(sel, tok, top)

    def table(is_anchor: bool) -> str:
        lines = [
            f"<tr><td><code>{html.escape(repr(text))}</code></td><td>{n}</td><td>{100 * share:.0f}%</td></tr>"
            for text, n, share in frequent[is_anchor]
        ]
        head = "anchor" if is_anchor else "yet-to-learn"
        return (
            f"<table><tr><th>{head} token</th><th>count</th><th>share of its occurrences</th></tr>"
            + "".join(lines)
            + "</table>"
        )

    return "\n".join(rows_html), f'<div class="cols"><div>{table(True)}</div><div>{table(False)}</div></div>'


# ----------------------------------------------------------------------------------------------- the page


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return f"<p><em>{html.escape(alt)}: not available for this run.</em></p>"
    b64 = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.row{font-family:monospace;font-size:13px;line-height:1.9;margin:.6em 0;padding:.4em;border:1px solid #eee;
white-space:pre-wrap;overflow-wrap:anywhere}
.tk{padding:1px 0;border-radius:2px}.cols{display:flex;gap:2em}.note{color:#555}"""


# Marks on <body> how many images decoded (a browser test reads it; a reader sees a warning if some did not).
CHECK_IMAGES = """<script>window.addEventListener('load',()=>{const im=[...document.images];
const ok=im.filter(i=>i.complete&&i.naturalWidth>0).length;document.body.dataset.imagesLoaded=ok+'/'+im.length;
if(ok<im.length){const p=document.createElement('p');p.textContent='Some images failed to load.';
document.body.prepend(p);}});</script>"""


def _thr(sel: Any) -> float:
    """The Δc threshold of a selection (a diffusion forced set has none, and `auto` splits at 0: 0)."""
    t = sel.meta.get("threshold")
    return 0.0 if t is None or t == "auto" else t


def _anchor_rows(sel: Any) -> list[np.ndarray]:
    """Per row, which response tokens are anchors. A t3s keep-mask drops exactly the anchors, whatever the rule
    (with `threshold: auto` the settled tokens are neither); otherwise Δc > threshold."""
    if sel.forced is None and sel.meta.get("mode") == "t3s":
        return [~k for k in sel.keep]
    return [d > _thr(sel) for d in sel.delta]


def build_report(run: str | Path, *, gradients: bool = True, log: Any = print) -> Path:
    run = Path(run)
    if not (run / "summary.json").exists():
        raise T3SError(f"{run}: no summary.json; run `t3s run` to completion first")
    summary = read_json(run / "summary.json")
    if summary.get("mixture"):
        return _mixture_report(run, summary, gradients, log)
    seeds = _seeds(run)
    out = run / "report"
    out.mkdir(exist_ok=True)
    parts = [
        f"<h1>t3s report: {html.escape(run.name)}</h1>",
        f'<p class="note">t3s {__version__}. Every number below is read from files in this run directory.</p>',
    ]
    if "stopped" in summary:
        parts.append(f"<h2>Stopped</h2><p><strong>{html.escape(summary['stopped'])}</strong></p>")
    else:
        parts.append("<h2>Summary</h2>" + _md_table(summary))
    if summary.get("verdicts"):  # t3s.verdict, from each seed's probe (docs/method.md)
        items = "".join(
            f"<li>seed {html.escape(seed)}: <strong>{html.escape(v['headline'])}</strong> "
            f"({html.escape(Verdict(v['outcome'], v).reason())})</li>"
            for seed, v in summary["verdicts"].items()
        )
        parts.append(
            "<h2>Will T3S pay on this run? (the verdict, from the probe)</h2><ul>" + items + "</ul>"
            "<p class='note'>The rule and the evidence behind it: docs/method.md; not yet validated per seed.</p>"
        )
    if (
        "stopped" not in summary
        and "sft" in summary["config"].get("modes", [])
        and "t3s" in summary["config"].get("modes", [])
    ):
        try:  # t3s.cost: the compute of T3S against SFT alone, from the stage records
            costs = format_costs(run_costs(run))
            parts.append("<h2>What T3S cost against SFT alone</h2>" + _md_html(costs))
        except T3SError as e:
            parts.append(f"<h2>What T3S cost against SFT alone</h2><p><em>{html.escape(str(e))}</em></p>")
    bott = {
        s: read_json(p).get("bottleneck_step")
        for s in seeds
        if (p := run / f"seed-{s}" / "probe" / "probe.json").exists()
    }
    parts.append("<h2>Trajectories</h2>" + _img(plot_trajectories(run, seeds, out), "trajectories"))
    sel = _selection(run, seeds[0]) if seeds else None
    if sel is not None:
        b0 = bott.get(seeds[0])
        parts.append("<h2>Δc and the anchor / yet-to-learn split (seed %d)</h2>" % seeds[0])
        parts.append(_img(plot_delta_hist(sel, out), "delta histogram"))
        bif = bifurcation(run, seeds[0], sel)
        parts.append(_img(plot_bifurcation(bif, b0, out) if bif else None, "bifurcation"))
        grad = None
        if gradients:
            log("report: gradient dynamics along the probe checkpoints")
            grad = gradient_dynamics(run, seeds[0], sel)
        parts.append("<h2>Gradients of the two token groups (Figure 6)</h2>")
        if grad:
            parts.append(_img(plot_gradients(grad, b0, out), "gradients"))
            k = int(np.argmax(grad["ratio"]))
            parts.append(
                f"<p>Largest norm ratio {grad['ratio'][k]:.2f}× at step {grad['steps'][k]}; "
                f"most negative cosine {min(grad['cosine']):+.2f}.</p>"
            )
        else:
            parts.append("<p><em>Needs the probe's checkpoints: set <code>probe.keep_all: true</code>.</em></p>")
        heat, tables = token_tables(run, sel)
        parts.append(
            "<h2>Training rows coloured by Δc</h2><p class='note'>Red: anchors (gained confidence by the "
            "bottleneck, dropped by T3S); blue: yet-to-learn (kept). Hover for Δc.</p>" + heat
        )
        parts.append("<h2>Most frequent anchor and yet-to-learn tokens</h2>" + tables)
    return _write_page(run, out, parts)


def _write_page(run: Path, out: Path, parts: list[str]) -> Path:
    """report.html from its parts, written atomically."""
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>t3s report {html.escape(run.name)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}{CHECK_IMAGES}</body></html>"
    )
    tmp = out / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out / "report.html")
    return out / "report.html"


def _mixture_report(run: Path, summary: dict[str, Any], gradients: bool, log: Any) -> Path:
    """A teacher mixture: the combined table, and one full report per teacher (linked)."""
    links = []
    for name in summary["mixture"]:
        log(f"report: teacher {name}")
        page = build_report(run / "teachers" / name, gradients=gradients, log=log)
        links.append(f"<li><a href='../{page.relative_to(run).as_posix()}'>{html.escape(name)}</a></li>")
    table = _md_table({**summary, "probes": {}}).split("<p>Probe")[0]
    parts = [
        f"<h1>t3s report: {html.escape(run.name)} (teacher mixture)</h1>",
        f'<p class="note">t3s {__version__}. Every number below is read from files in this run directory.</p>',
        "<h2>Summary</h2>" + table,
        "<h2>Each teacher's probe, Δc and gradients</h2><ul>" + "".join(links) + "</ul>",
    ]
    out = run / "report"
    out.mkdir(exist_ok=True)
    return _write_page(run, out, parts)


def _md_html(lines: list[str]) -> str:
    """Markdown lines (one pipe table and paragraphs) as HTML."""
    rows, paras = [], []
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):  # not the separator row
                tag = "th" if not rows else "td"
                rows.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
        elif line.strip():
            paras.append(f"<p class='note'>{html.escape(line)}</p>")
    return "<table>" + "".join(rows) + "</table>" + "".join(paras)


def _md_table(summary: dict[str, Any]) -> str:
    k = summary["k"]
    forced = "forced_fraction" in summary["rows"][0]  # the rows carry the statistic of the run's selections
    frac, col = ("forced_fraction", "forced tokens %") if forced else ("dropped_fraction", "dropped tokens %")
    head = (
        f"<table><tr><th>method</th><th>accuracy % (avg@{k})</th><th>Δ vs base</th><th>pass@{k} %</th>"
        f"<th>mean tokens</th><th>{col}</th><th>per seed</th></tr>"
    )
    body = []
    for r in summary["rows"]:
        sd = "" if r["accuracy_sd"] is None else f" ± {100 * r['accuracy_sd']:.1f}"
        drop = "–" if r.get(frac) is None else f"{100 * r[frac]:.1f}"
        per = ", ".join(f"{100 * v:.1f}" for v in r["per_seed"].values())
        body.append(
            f"<tr><td>{r['method']}</td><td>{100 * r['accuracy']:.1f}{sd}</td><td>{100 * r['delta']:+.1f}</td>"
            f"<td>{100 * r['pass_at_k']:.1f}</td><td>{r['mean_tokens']:.1f}</td><td>{drop}</td>"
            f"<td>{per}</td></tr>"
        )
    probes = "".join(
        f"<li>seed {s}: {100 * p['start_accuracy']:.1f}% → {100 * p['bottleneck_accuracy']:.1f}% at step "
        f"{p['bottleneck_step']}{'' if p['dip_found'] else ' (no dip)'}</li>"
        for s, p in summary["probes"].items()
    )
    return (
        head
        + "".join(body)
        + "</table>"
        + f"<p>Evaluated on the {summary['eval_on']}.</p>"
        + f"<p>Probe (plain SFT), training accuracy at θ_0 → at the bottleneck:</p><ul>{probes}</ul>"
    )
