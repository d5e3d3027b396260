"""Run directories made by an earlier version of the code resume with nothing recomputed.

tests/data/recorded/ holds three tiny runs recorded by tests/record_runs.py (an AR run with most controls and
RRT, a masked-diffusion run with an AR selector, a two-teacher mixture): their models and data, every stage
record and the directory skeleton. Resuming each with today's code must skip every stage (the fingerprints of
their inputs are unchanged) and rebuild the same summary. A change that breaks this would redo finished stages in
every user's run directory: read the old fingerprint key instead, or re-record and say so."""

import json
import shutil
from pathlib import Path

import pytest
from record_runs import RUNS, overrides

from t3s import __version__

DATA = Path(__file__).resolve().parent / "data" / "recorded"


def test_the_recording_is_of_this_version():
    recorded = json.loads((DATA / "recorded.json").read_text())
    assert recorded["runs"] == list(RUNS)
    # every stage's fingerprint holds the t3s version: a new version redoes every stage of every run directory
    assert recorded["t3s_version"] == __version__, "a new t3s version: re-record with `python tests/record_runs.py`"


@pytest.mark.parametrize("name", list(RUNS))
def test_a_recorded_run_resumes_with_nothing_recomputed(name, tmp_path, capsys):
    from t3s.config import load_config
    from t3s.pipeline import run

    tiny, out, src = tmp_path / "tiny", tmp_path / "run", DATA / "runs" / name
    shutil.copytree(DATA / "tiny", tiny)
    for d in (src / "dirs.txt").read_text().split():
        (out / d).mkdir(parents=True, exist_ok=True)
    recorded = sorted(p.relative_to(src) for p in src.rglob("stages/*.json"))
    for rel in recorded:
        shutil.copyfile(src / rel, out / rel)
    capsys.readouterr()
    summary, code = run(load_config(None, overrides(name, tiny), flat=()), out, progress=False)
    log = capsys.readouterr().out
    assert code == 0
    assert "running" not in log, [x for x in log.splitlines() if "running" in x]
    assert log.count("done earlier, skipped") == len(recorded) > 10
    assert sorted(p.relative_to(out) for p in out.rglob("stages/*.json")) == recorded  # no stage added
    for rel in recorded:
        assert json.loads((out / rel).read_text()) == json.loads((src / rel).read_text())
    before = json.loads((src / "summary.json").read_text())
    assert summary["rows"] == before["rows"] and summary["probes"] == before["probes"]
