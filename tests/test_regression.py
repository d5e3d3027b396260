"""A regression test in torchtune's style: a few fp32 steps of `t3s train` on the tiny model, rendered with a
real chat template (Qwen3's, as TRL installs it) and a fixed selection, with the logged losses pinned.

The oracle tests elsewhere (test_train.py) render with t3s's own code on both sides, so a change in rendering,
collation, label shifting or loss normalisation that moves both sides together would pass them. Here the numbers
were recorded once (and agreed between the code before and after the objective refactor of issue 16); any drift
in what a training step computes moves them. If a deliberate change moves them, re-record them with
`python tests/test_regression.py` and say why in the commit.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

# recorded with `python tests/test_regression.py` (see the module docstring)
PINNED = {
    "response_tokens": 776,
    "kept_tokens": 517,
    "losses": [5.981088, 5.809073, 5.686437, 5.57946],
}
TOLERANCE = 1e-4


def rows() -> list[dict]:
    """Eight rows with an R1-style reasoning trace (`<think>`…`</think>`, then the answer)."""
    from t3s.tiny import make_rows

    out = []
    for r in make_rows(8, seed=0):
        reasoning, answer = r["response"].split(" So the answer is ")
        out.append(
            {
                **r,
                "response": f"<think>\n{reasoning} Wait, let me check the ones again.\n</think>\n\n"
                f"So the answer is {answer}",
            }
        )
    return out


def run(tiny_model: Path, work: Path) -> dict:
    """Train 4 steps (2 rows × 2 accumulation steps each) on `rows()` from the tiny model with the Qwen3 template
    and a fixed keep-mask; returns the counts and the logged losses."""
    import trl
    from test_train import crafted_selection  # tests/ is on the path under pytest and when run as a script

    from t3s.config import load_config
    from t3s.models import load_tokenizer
    from t3s.train import train

    model = work / "model"
    shutil.copytree(tiny_model, model)
    tok = load_tokenizer(model)
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
    tok.save_pretrained(model)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    crafted_selection(work / "selection", load_tokenizer(model), data, lambda i, j: (i + j) % 3 != 0)
    cfg = load_config(
        None,
        [
            "max_steps=4",
            "learning_rate=1e-3",
            "per_device_train_batch_size=2",
            "gradient_accumulation_steps=2",
            "dtype=float32",
            "logging_steps=1",
            "seed=0",
        ],
    )
    s = train(str(model), str(data), work / "run", cfg.train, cfg.render, str(work / "selection"), progress=False)
    return {
        "response_tokens": s["response_tokens"],
        "kept_tokens": s["kept_tokens"],
        "losses": [round(h["loss"], 6) for h in s["log_history"] if "loss" in h],
    }


def test_logged_losses_are_pinned(tiny, tmp_path):
    got = run(tiny / "model", tmp_path)
    assert got["response_tokens"] == PINNED["response_tokens"], "rendering changed: other response tokens"
    assert got["kept_tokens"] == PINNED["kept_tokens"], "the selection applies to other tokens"
    assert got["losses"] == pytest.approx(PINNED["losses"], abs=TOLERANCE), got["losses"]


if __name__ == "__main__":  # re-record: prints the values to paste into PINNED
    import tempfile

    from t3s.tiny import build

    with tempfile.TemporaryDirectory() as d:
        tiny = build(Path(d) / "tiny", rows=16)  # the test session's `tiny` fixture
        (Path(d) / "w").mkdir()
        print(json.dumps(run(tiny / "model", Path(d) / "w")), file=sys.stdout)
