"""Installable into a real environment: pyproject.toml states compatible ranges (no exact pins), constraints.txt
pins the exact tested set inside them, and installing t3s where its dependencies are already present changes
none of them."""

import json
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CORE = ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "math-verify")


def requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def pins():
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def test_ranges_not_pins_and_the_lock_lies_inside_them():
    locked = pins()
    for req in requirements():
        ops = {s.operator for s in req.specifier}
        if req.name == "ruff":  # the formatter's output changes between releases: exact on purpose
            assert ops == {"=="}
            continue
        assert "==" not in ops, f"{req}: a range, not a pin (the exact version belongs in constraints.txt)"
        if req.name in CORE:
            assert ">=" in ops and "<" in ops, f"{req}: lowest tested version up to the next major"
        name = req.name.lower()
        assert name in locked, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(locked[name], prereleases=True), f"{req.name}=={locked[name]} outside {req}"


def test_installing_t3s_keeps_what_is_installed():
    """pip's own resolver, offline, in this environment (which holds the tested versions): t3s is the only thing
    it would install; no dependency is up- or downgraded."""
    report = ROOT / "build" / "pip-report.json"
    report.parent.mkdir(exist_ok=True)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "-q"]
        + ["-e", str(ROOT), "--report", str(report)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert [x["metadata"]["name"] for x in json.loads(report.read_text())["install"]] == ["t3s"]


def test_every_file_the_tests_read_lands_in_a_clean_clone():
    """A data file .gitignore swallows passes here and fails in CI's clean clone (a `runs/` rule once hid the
    recorded run directories under tests/data/recorded/runs)."""
    if not (ROOT / ".git").exists():
        raise AssertionError("not a git checkout: run the tests from a clone of the repository")
    files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "tests" / "data").rglob("*") if p.is_file()]
    assert files, "tests/data is empty"
    # the check itself can fail: a top-level run directory is ignored
    probe = subprocess.run(["git", "check-ignore", "--no-index", "-q", "runs/x"], cwd=ROOT)
    assert probe.returncode == 0, "git check-ignore no longer reports ignored paths"
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=ROOT,
        input="\n".join(files),
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "", f"ignored by .gitignore, so missing from a clean clone:\n{out.stdout}"
