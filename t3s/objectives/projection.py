"""Δc from a selector whose tokenizer differs from the student's: each selector token's Δc moves onto the
student's response tokens through the characters of the response they cover (`projector`, the `project`
argument of `t3s.objectives.masked.select_forced`). A student token takes the minimum Δc over the selector tokens that
overlap it (the most "yet to learn" of them); one that no selector token covers gets NaN and is never forced."""

from __future__ import annotations

from typing import Any

import numpy as np

from t3s import T3SError
from t3s.config import RenderConfig
from t3s.data import Row


def response_spans(row: Row, tokenizer: Any, rcfg: RenderConfig, n_tokens: int) -> list[tuple[int, int] | None]:
    """Character span of each response token within the row's response text (None: no characters of it, e.g.
    EOS or an end-of-turn marker)."""
    from t3s.data import render_prompt, render_response, render_row, uses_template

    template = uses_template(tokenizer, rcfg)
    _, response_ids = render_row(row, tokenizer, rcfg, template)
    body = row.response
    if template:
        _, prefix = render_prompt(row, tokenizer, rcfg, template)
        text, body, _ = render_response(row, tokenizer, rcfg, prefix)
    else:
        text = row.response
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise T3SError(
            f"{row.where}: the tokenizer gives no character offsets ({e}); a selector with another "
            "tokenizer needs a fast tokenizer on both sides"
        ) from None
    if list(enc["input_ids"]) != list(response_ids[: len(enc["input_ids"])]):
        raise T3SError(f"{row.where}: re-tokenizing the response with offsets gives other tokens; cannot project")
    shift, origin = text.find(body), row.response.find(body)  # body: the row's text as it appears in `text`
    if shift < 0 or origin < 0:
        raise T3SError(f"{row.where}: the rendered response does not contain the response text; cannot project")
    spans: list[tuple[int, int] | None] = []
    for s, e in enc["offset_mapping"]:  # character spans within row.response
        s, e = max(s - shift, 0) + origin, min(e - shift, len(body)) + origin
        spans.append((s, e) if e > s else None)
    spans += [None] * (len(response_ids) - len(spans))  # EOS appended without a template
    return spans[:n_tokens]


def project_row(delta: np.ndarray, src: list[tuple[int, int] | None], dst: list[tuple[int, int] | None]) -> np.ndarray:
    """Δc on the destination tokens: the minimum Δc of the source tokens whose characters overlap (NaN when none
    do). The minimum makes a student token yet-to-learn as soon as any part of it is."""
    out = np.full(len(dst), np.nan, dtype=np.float32)
    spans = [(s[0], s[1], d) for s, d in zip(src, delta) if s is not None]
    for j, sp in enumerate(dst):
        if sp is None:
            continue
        vals = [d for s, e, d in spans if s < sp[1] and sp[0] < e]
        if vals:
            out[j] = min(vals)
    return out


def projector(rows: list[Row], student_tok: Any, selector_tok: Any, rcfg: RenderConfig):
    """The `project` argument of `t3s.objectives.masked.select_forced` for a student whose tokenizer differs from the
    selector's: Δc moves onto the student's response tokens through character offsets (`project_row`)."""
    from t3s.data import fingerprints, render_rows

    by_id = {r.id: r for r in rows}

    def project(base: Any) -> tuple[list[np.ndarray], list[list[int]], dict[str, str], int]:
        unknown = [i for i in base.ids if i not in by_id]
        if unknown:
            raise T3SError(f"the selector's scores hold row '{unknown[0]}', which is not in the training data")
        examples, _ = render_rows([by_id[i] for i in base.ids], student_tok, rcfg)
        if [e.id for e in examples] != list(base.ids):
            raise T3SError(
                "the student's rendering drops rows the selector kept (max_length); use one max_length "
                "that fits both tokenizers or overlong=truncate"
            )
        deltas, missing = [], 0
        for e, d in zip(examples, base.delta):
            r = by_id[e.id]
            p = project_row(
                d,
                response_spans(r, selector_tok, rcfg, len(d)),
                response_spans(r, student_tok, rcfg, len(e.response_ids)),
            )
            missing += int(np.isnan(p).sum())
            deltas.append(p)
        return deltas, [e.response_ids for e in examples], fingerprints(rows, student_tok, rcfg), missing

    return project
