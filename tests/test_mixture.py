"""The debiased teacher mixture: per-teacher selections, their union, the budget, and the combined table."""

import json

import numpy as np
import pytest
from conftest import started

from t3s import T3SError
from t3s.config import load_config
from t3s.mixture import union_data, union_selection
from t3s.select import Selection, load_selection, write_selection


def _sel(path, ids, keep, fps):
    keep = [np.array(k, dtype=bool) for k in keep]
    sel = Selection(
        {
            "kind": "t3s-selection",
            "mode": "t3s",
            "threshold": 0.0,
            "seed": None,
            "fingerprints": fps,
            "stats": {"dropped_fraction": 0.5},
        },
        ids,
        [np.arange(len(k)) for k in keep],
        keep,
        [np.zeros(len(k), np.float32) for k in keep],
    )
    write_selection(sel, path)
    return str(path)


def test_union_keeps_each_teachers_own_mask(tiny, tmp_path):
    union_data({"a": str(tiny / "train.jsonl"), "b": str(tiny / "train-terse.jsonl")}, tmp_path / "data")
    rows = [json.loads(x) for x in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    assert [r["teacher"] for r in rows] == ["a"] * 16 + ["b"] * 16
    assert rows[0]["id"].startswith("a/") and rows[16]["id"] == "b/" + rows[0]["id"][2:]
    fps = {"data": "x", "tokenizer": "t", "template": "c"}
    a = _sel(tmp_path / "sa", ["r1", "r2"], [[1, 0, 1], [0, 0]], fps)
    b = _sel(tmp_path / "sb", ["r1"], [[1, 1, 1, 0]], fps)
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"id": i, "prompt": "p", "response": "r"}) + "\n" for i in ["a/r1", "a/r2", "b/r1"])
    )
    res = union_selection({"a": a, "b": b}, str(data), "t3s", tmp_path / "u")
    u = load_selection(tmp_path / "u")
    assert u.ids == ["a/r1", "a/r2", "b/r1"]
    assert [k.tolist() for k in u.keep] == [[True, False, True], [False, False], [True, True, True, False]]
    assert res["stats"]["kept_tokens"] == 5 and res["stats"]["dropped_fraction"] == pytest.approx(4 / 9)
    assert u.meta["fingerprints"]["tokenizer"] == "t" and u.meta["fingerprints"]["data"] != "x"
    c = _sel(tmp_path / "sc", ["r1"], [[1]], {**fps, "tokenizer": "other"})
    with pytest.raises(T3SError, match="another tokenizer"):
        union_selection({"a": a, "c": c}, str(data), "t3s", tmp_path / "u2")


def test_two_teacher_mixture_end_to_end(tiny, tmp_path):
    from t3s.pipeline import plan_stages, run

    cfg = load_config(
        "examples/tiny-mixture-run.yaml",
        [
            f"student={tiny / 'model'}",
            f"teachers={{steps: {tiny / 'train.jsonl'}, terse: {tiny / 'train-terse.jsonl'}}}",
            f"eval_data={tiny / 'train.jsonl'}",
            "train.max_steps=3",
            "probe.eval_every=3",
            "probe.subset=4",
            "eval.max_new_tokens=12",
            "probe.markers=[]",
        ],
        flat=(),
    )
    out = tmp_path / "run"
    record, _ = run(cfg, out, progress=False, verdict=True)  # --verdict: each teacher's probes alone
    assert set(record["teachers"]) == {"steps", "terse"} and "## teacher terse" in (out / "verdict.md").read_text()
    assert (out / "teachers" / "steps" / "verdict.json").exists() and not (out / "mixture").exists()
    summary, code = run(cfg, out, progress=False)
    assert code == 0
    assert "seed-0/probe: done earlier, skipped" in (out / "teachers" / "terse" / "run.log").read_text()
    # `t3s run --plan` lists exactly the stages the run took, in its order
    took = [f"teachers/{n}/{k}" for n in ("steps", "terse") for k in started(out / "teachers" / n)] + started(out)
    assert took == [k for k, _ in plan_stages(cfg)]
    methods = [r["method"] for r in summary["rows"]]
    assert methods == [
        "base",
        "steps: sft",
        "steps: t3s",
        "terse: sft",
        "terse: t3s",
        "mixture: sft (plain mixture)",
        "mixture: t3s",
    ]
    by = {r["method"]: r for r in summary["rows"]}
    for name in ("steps", "terse"):  # each teacher alone: exactly its own run's numbers
        sub = json.loads((out / "teachers" / name / "summary.json").read_text())
        for r in sub["rows"][1:]:
            assert by[f"{name}: {r['method']}"]["accuracy"] == r["accuracy"]
        assert (out / "teachers" / name / "seed-0" / "probe" / "probe.json").exists()  # its own probe
    for mode, label in (("sft", "mixture: sft (plain mixture)"), ("t3s", "mixture: t3s")):
        tr = json.loads((out / "mixture" / "seed-0" / "train" / mode / "train.json").read_text())
        assert tr["global_step"] == 6  # the budget: 3 steps × 2 teachers
        ev = json.loads((out / "mixture" / "seed-0" / "eval" / mode / "metrics.json").read_text())["metrics"]
        assert by[label]["accuracy"] == ev["accuracy"]
    # the base model is evaluated once: the second teacher's run reuses the first's evaluation
    recs = [json.loads((out / "teachers" / n / "stages" / "eval-base.json").read_text()) for n in ("steps", "terse")]
    assert recs[0]["produced"] == recs[1]["produced"]
    assert "teacher terse: the base model's evaluation is shared" in (out / "run.log").read_text()
    assert "eval-base: running" not in (out / "teachers" / "terse" / "run.log").read_text()
    # the t3s mixture trains on exactly the union of the teachers' kept tokens
    kept = sum(
        json.loads((out / "teachers" / n / "seed-0" / "selections" / "t3s" / "selection.json").read_text())["stats"][
            "kept_tokens"
        ]
        for n in ("steps", "terse")
    )
    tr = json.loads((out / "mixture" / "seed-0" / "train" / "t3s" / "train.json").read_text())
    assert tr["kept_tokens"] == kept
    # the report: the combined table and one linked report per teacher
    from t3s.report import build_report

    page = build_report(out, gradients=False, log=lambda m: None).read_text()
    assert "mixture: t3s" in page and "teachers/terse/report/report.html" in page
    assert (out / "teachers" / "steps" / "report" / "report.html").exists()
    # a rerun redoes nothing
    log = (out / "run.log").read_text()
    summary2, _ = run(cfg, out, progress=False)
    new = (out / "run.log").read_text()[len(log) :]
    assert "running" not in new and summary2["rows"] == summary["rows"]


def test_mixture_config_errors(tiny, tmp_path):
    from t3s.pipeline import run

    one = load_config(None, [f"student={tiny / 'model'}", f"teachers={{a: {tiny / 'train.jsonl'}}}"], flat=())
    with pytest.raises(T3SError, match="at least two teachers"):
        run(one, tmp_path / "r")
    both = load_config(
        None,
        [
            f"student={tiny / 'model'}",
            f"train_data={tiny / 'train.jsonl'}",
            f"teachers={{a: {tiny / 'train.jsonl'}, b: {tiny / 'train.jsonl'}}}",
        ],
        flat=(),
    )
    with pytest.raises(T3SError, match="not both"):
        run(both, tmp_path / "r")
