"""Stage 3: Δc_t = c_t(θ_b) − c_t(θ_0) and the keep-mask of each training mode.

- `t3s`: drop the imitation anchors (Δc > threshold), train on the yet-to-learn tokens.
- `reverse` (−T3S): keep only the anchors.
- `static-high` / `static-low`: drop the tokens with the highest / lowest initial confidence c_t(θ_0), as many as
  `t3s` drops (matched over the whole data set; ties broken by position, stable).
- `random`: drop as many tokens as `t3s`, uniformly at random without replacement (seeded).
- `sft`: keep every response token (plain SFT; `none`, its old name, is still accepted).

Controls of the paper's claims (`t3s run` computes their scores itself; by hand, pass them to `t3s select`):
- `t3s-final` / `t3s-early` / `t3s-step` / `t3s-recovery`: the `t3s` rule with θ_b replaced by the probe's end
  point θ_T, by an evaluated checkpoint halfway to the bottleneck, by the evaluated checkpoint at a step the run
  names (`delta_step`), or by the one nearest twice the bottleneck step: is the *bottleneck* the right moment?
- `excess-loss` (RHO-1 style): keep the tokens with the largest gain c_t(θ_T) − c_t(θ_0) (θ_T, the plain SFT
  run, as the reference model), as many as `t3s` keeps.

The threshold: a number τ (anchors: Δc > τ), or `auto`: τ = 0, except that tokens near-certain at both
checkpoints (p > 1 − NEAR_CERTAIN at θ_0 and θ_b) are *settled*, in neither group. Such a token can move by at
most 0.01 nats and its gradient is already near zero; with τ = 0 the sign of its drift would decide its group,
and it would swell the anchor share and the drop budget of the matched controls. `t3s` keeps settled tokens
(they are not anchors); `reverse` drops them (they are not anchors either).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t3s import T3SError, __version__
from t3s.artifacts import atomic_dir, read_json, read_table, write_json
from t3s.modes import ALIASES, SELECTION_MODES, canonical, mode_of
from t3s.score import ScoreSet

MODES = (*SELECTION_MODES, "sft", *ALIASES)  # `sft` (or its old name `none`): keep every token
NEAR_CERTAIN = 0.01  # `threshold: auto`: p > 1 − this at both checkpoints is settled
SELECTION_FILE = "selection.parquet"
META_FILE = "selection.json"
# Which fingerprints two score sets must share to be compared token by token (the model may differ).
MATCH_KEYS = ("data", "tokenizer", "template")


def check_compatible(init: ScoreSet, bottleneck: ScoreSet) -> None:
    fi, fb = init.meta["fingerprints"], bottleneck.meta["fingerprints"]
    for key in MATCH_KEYS:
        if fi.get(key) != fb.get(key):
            raise T3SError(
                f"score sets do not match: {init.path} and {bottleneck.path} were computed with a different {key} "
                f"({fi.get(key, '?')[:12]} vs {fb.get(key, '?')[:12]}); score both checkpoints on the same data "
                "with the same tokenizer and rendering"
            )
    if init.meta.get("precision") != bottleneck.meta.get("precision"):
        raise T3SError(
            f"score sets do not match: {init.path} was scored in {init.meta.get('precision')} and {bottleneck.path} "
            f"in {bottleneck.meta.get('precision')}; Δc needs both in the same precision (pass the same --dtype)"
        )
    if init.ids != bottleneck.ids:
        raise T3SError(f"score sets do not match: {init.path} and {bottleneck.path} hold different row ids")
    for rid, a, b in zip(init.ids, init.response_ids, bottleneck.response_ids):
        if not np.array_equal(a, b):
            raise T3SError(f"score sets do not match: row '{rid}' has different response tokens")


def parse_threshold(value: Any) -> float | str:
    """A threshold setting: a finite number, or 'auto'."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise T3SError(f"threshold must be a number or auto, got {value!r}") from None
    if not np.isfinite(t):
        raise T3SError(f"threshold must be a finite number or auto, got {value!r}")
    return t


def groups(delta: np.ndarray, c0: np.ndarray, threshold: float | str = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(anchors, settled) boolean masks over the flat response tokens: anchors are Δc > τ; with `auto`, τ = 0 and
    tokens near-certain at both checkpoints are settled (neither anchors nor yet-to-learn)."""
    threshold = parse_threshold(threshold)
    if threshold != "auto":
        return delta > threshold, np.zeros(delta.shape, dtype=bool)
    floor = np.log1p(-NEAR_CERTAIN)
    settled = (c0 > floor) & (c0 + delta > floor)
    return (delta > 0) & ~settled, settled


def check_mode(mode: str) -> None:
    """Refuse a mode that has no keep-mask (dft, or none of the table's)."""
    if mode not in MODES:
        raise T3SError(f"unknown selection mode '{mode}' (choose from {', '.join(MODES)})")


def keep_mask(
    mode: str,
    delta: np.ndarray,
    c0: np.ndarray,
    threshold: float | str = 0.0,
    seed: int = 0,
    gain: np.ndarray | None = None,
) -> np.ndarray:
    """Flat keep-mask over all response tokens (True = the token is trained on). `gain`: c(θ_T) − c(θ_0), for
    `excess-loss`."""
    check_mode(mode)
    anchors, _ = groups(delta, c0, threshold)
    n_drop = int(anchors.sum())
    keep = np.ones(delta.shape, dtype=bool)
    rule = mode_of(mode).rule  # t3s.modes: t3s-final, t3s-early, ... are the t3s rule on other scores
    if rule == "t3s":
        keep = ~anchors
    elif rule == "reverse":
        keep = anchors.copy()
    elif rule == "static-high":
        keep[np.argsort(-c0, kind="stable")[:n_drop]] = False
    elif rule == "static-low":
        keep[np.argsort(c0, kind="stable")[:n_drop]] = False
    elif rule == "random":
        keep[np.random.default_rng(seed).choice(delta.size, size=n_drop, replace=False)] = False
    elif rule == "excess-loss":
        if gain is None or gain.shape != delta.shape:
            raise T3SError("excess-loss needs the reference (θ_T) scores of the same tokens")
        keep[:] = False
        keep[np.argsort(-gain, kind="stable")[: delta.size - n_drop]] = True  # as many as t3s keeps
    return keep


def split_rows(flat: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(sizes)[:-1])


def quantiles(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {}
    q = np.quantile(x, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return {
        "mean": float(x.mean()),
        **{k: float(v) for k, v in zip(["min", "p5", "p25", "p50", "p75", "p95", "max"], q)},
    }


@dataclass
class Selection:
    meta: dict[str, Any]
    ids: list[str]
    response_ids: list[np.ndarray]
    keep: list[np.ndarray]
    delta: list[np.ndarray]
    forced: list[np.ndarray] | None = None  # diffusion students: always masked (objectives.masked.select_forced)

    @property
    def by_id(self) -> dict[str, int]:
        return {rid: i for i, rid in enumerate(self.ids)}


def select(
    init: ScoreSet,
    bottleneck: ScoreSet,
    mode: str,
    threshold: float | str = 0.0,
    seed: int = 0,
    bottleneck_step: int | None = None,
    reference: ScoreSet | None = None,
) -> Selection:
    """The keep-mask of `mode` from the scores of θ_0 and θ_b (for `t3s-final`, `t3s-early`, ...: the
    scores of θ_T or of the other checkpoint in θ_b's place). `reference`: the scores of θ_T, for `excess-loss`;
    its drop count is matched to t3s's on (θ_0, θ_b)."""
    threshold, mode = parse_threshold(threshold), canonical(mode)
    check_compatible(init, bottleneck)
    check_mode(mode)
    gain = None
    if mode_of(mode).reference:
        if reference is None:
            raise T3SError(f"mode {mode} needs the scores of a reference model (θ_T): --reference")
        check_compatible(init, reference)
        gain = np.concatenate(reference.logprobs) - np.concatenate(init.logprobs)
    sizes = [len(x) for x in init.logprobs]
    c0, cb = np.concatenate(init.logprobs), np.concatenate(bottleneck.logprobs)
    delta = cb - c0
    keep = keep_mask(mode, delta, c0, threshold, seed, gain)
    anchors, settled = groups(delta, c0, threshold)
    keep_rows = split_rows(keep, sizes)
    row_dropped = np.array([1.0 - k.mean() for k in keep_rows])
    n, kept = int(delta.size), int(keep.sum())
    stats = {
        "rows": len(sizes),
        "tokens": n,
        "kept_tokens": kept,
        "dropped_tokens": n - kept,
        "dropped_fraction": (n - kept) / n,
        "anchor_tokens": int(anchors.sum()),
        "anchor_fraction": float(anchors.mean()),
        "settled_fraction": float(settled.mean()),
        "rows_with_nothing_kept": int(sum(1 for k in keep_rows if not k.any())),
        "per_row_dropped_fraction": quantiles(row_dropped),
        "delta": quantiles(delta),
        "mean_logprob_init": float(c0.mean()),
        "mean_logprob_bottleneck": float(cb.mean()),
    }
    if bottleneck_step is None:
        bottleneck_step = bottleneck.meta.get("model_step")

    def prov(s: ScoreSet) -> dict[str, Any]:
        return {k: s.meta.get(k) for k in ("path", "model", "model_fingerprint", "model_step", "precision")}

    meta = {
        "kind": "t3s-selection",
        "t3s_version": __version__,
        "mode": mode,
        "threshold": threshold,
        "seed": seed if mode == "random" else None,
        "bottleneck_step": bottleneck_step,
        "fingerprints": dict(init.meta["fingerprints"]),
        "init_scores": prov(init),
        "bottleneck_scores": prov(bottleneck),
        "reference_scores": None if reference is None else prov(reference),
        "stats": stats,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Selection(meta, list(init.ids), list(init.response_ids), keep_rows, split_rows(delta, sizes))


def write_selection(sel: Selection, out: str | Path, overwrite: bool = False) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array(sel.ids, pa.string()),
            "response_ids": pa.array([x.tolist() for x in sel.response_ids], pa.list_(pa.int32())),
            "keep": pa.array([k.tolist() for k in sel.keep], pa.list_(pa.bool_())),
            "delta": pa.array([d.tolist() for d in sel.delta], pa.list_(pa.float32())),
            **(
                {}
                if sel.forced is None
                else {"forced": pa.array([f.tolist() for f in sel.forced], pa.list_(pa.bool_()))}
            ),
        }
    )
    with atomic_dir(out, overwrite) as tmp:
        pq.write_table(table, tmp / SELECTION_FILE)
        write_json(tmp / META_FILE, {k: v for k, v in sel.meta.items() if k != "path"})


def load_selection(path: str | Path) -> Selection:
    path = Path(path)
    if not (path / META_FILE).exists() or not (path / SELECTION_FILE).exists():
        raise T3SError(f"{path}: not a t3s selection directory (expected {META_FILE} and {SELECTION_FILE})")
    meta = read_json(path / META_FILE)
    if meta.get("kind") != "t3s-selection":
        raise T3SError(f"{path}/{META_FILE}: not a t3s selection")
    meta["path"] = str(path)
    t = read_table(path / SELECTION_FILE, ("id", "response_ids", "keep", "delta"), "`t3s select` that wrote it")
    return Selection(
        meta=meta,
        ids=t.column("id").to_pylist(),
        response_ids=[np.asarray(x, dtype=np.int64) for x in t.column("response_ids").to_pylist()],
        keep=[np.asarray(x, dtype=bool) for x in t.column("keep").to_pylist()],
        delta=[np.asarray(x, dtype=np.float32) for x in t.column("delta").to_pylist()],
        forced=[np.asarray(x, dtype=bool) for x in t.column("forced").to_pylist()]
        if "forced" in t.column_names
        else None,
    )


def summary_line(meta: dict[str, Any]) -> str:
    s = meta["stats"]
    if "forced_tokens" in s:  # a forced set (a masked-diffusion student's selection)
        extra = f", {s['no_overlap_tokens']} student tokens without a selector token" if meta.get("projected") else ""
        return (
            f"mode={meta['mode']} tau={meta['tau']}: {s['tokens']} response tokens, forced (always masked) "
            f"{s['forced_tokens']} ({100 * s['forced_fraction']:.2f}%){extra}"
        )
    return (
        f"mode={meta['mode']} threshold={meta['threshold']}: {s['tokens']} response tokens, "
        f"dropped {s['dropped_tokens']} ({100 * s['dropped_fraction']:.1f}%), "
        f"anchors {100 * s['anchor_fraction']:.1f}%, "
        + (f"settled {100 * s['settled_fraction']:.1f}%, " if s.get("settled_fraction") else "")
        + f"rows with nothing kept: {s['rows_with_nothing_kept']}"
    )
