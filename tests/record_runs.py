"""Record tiny `t3s run` directories for tests/test_recorded_runs.py: `python tests/record_runs.py`.

Three runs on the built-in tiny models (an autoregressive run with most controls and RRT, a masked-diffusion run
with an AR selector, a two-teacher mixture) are made with the code as it is, and what a resume reads is kept under
tests/data/recorded/: the two models and the data they were made from, every stage record (`stages/*.json`: the
fingerprints of the stages' inputs), the summaries, and the runs' directory skeletons. The weights a run produced
are left out (a resume that skips a stage never opens them); the test puts the skeleton back and resumes.

Re-record only when a change is *meant* to redo finished stages (a new t3s version, a fingerprint that now holds
more): then say so in the change, since every user's run directory redoes them too.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEST = HERE / "data" / "recorded"

COMMON = [
    "seeds=[0]",
    "train.learning_rate=3e-3",
    "train.per_device_train_batch_size=8",
    "train.dtype=float32",
    "eval.max_new_tokens=12",
    "eval.dtype=float32",
    "score.dtype=float32",
    "probe.continue_without_dip=true",
    "probe.markers=[]",
]
# name -> (overrides, with {tiny} for the models' directory); every run reads tiny's models and data
RUNS = {
    "ar": [
        "student={tiny}/model",
        "train_data={tiny}/train.jsonl",
        "eval_data={tiny}/train.jsonl",
        "modes=[sft, t3s, random, t3s-final, t3s-step, excess-loss, dft]",
        "delta_step=2",
        "train.max_steps=4",
        "probe.eval_every=2",
        "probe.track_every=2",
        "probe.track_subset=4",
        "rrt=true",
    ],
    "diffusion": [
        "objective=diffusion",
        "student={tiny}/dllm",
        "selector={tiny}/model",
        "train_data={tiny}/train.jsonl",
        "modes=[sft, t3s, random]",
        "probe_student=true",
        "selector_train.learning_rate=3e-3",
        "train.max_steps=4",
        "probe.eval_every=2",
        "probe.subset=6",
        "eval.max_new_tokens=16",
        "diffusion.block_length=8",
        "diffusion.steps=8",
        "diffusion.tau=0.0",
    ],
    "mixture": [
        "student={tiny}/model",
        "teachers={{steps: {tiny}/train.jsonl, terse: {tiny}/train-terse.jsonl}}",
        "eval_data={tiny}/train.jsonl",
        "modes=[sft, t3s]",
        "rrt=false",
        "train.max_steps=3",
        "probe.eval_every=3",
        "probe.subset=4",
    ],
}


def overrides(name: str, tiny: Path) -> list[str]:
    return COMMON + [o.format(tiny=tiny) for o in RUNS[name]]


def keep(run: Path, dest: Path) -> None:
    """What a resume reads: stage records, config, summary, and the directory skeleton (no files)."""
    dirs = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_dir())
    dest.mkdir(parents=True)
    (dest / "dirs.txt").write_text("\n".join(dirs) + "\n")
    for p in run.rglob("stages/*.json"):
        target = dest / p.relative_to(run)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
    shutil.copyfile(run / "summary.json", dest / "summary.json")


def main() -> int:
    sys.path.insert(0, str(HERE.parent))
    from t3s import __version__
    from t3s.config import load_config
    from t3s.pipeline import run
    from t3s.tiny import build

    with tempfile.TemporaryDirectory() as tmp:
        tiny = build(Path(tmp) / "tiny", rows=12, diffusion=True, pretrain=False)
        shutil.rmtree(DEST, ignore_errors=True)
        DEST.mkdir(parents=True)
        shutil.copytree(tiny, DEST / "tiny")
        for name in RUNS:
            cfg = load_config(None, overrides(name, tiny), flat=())
            _, code = run(cfg, Path(tmp) / name, progress=False)
            if code != 0:
                raise SystemExit(f"run {name} exited {code}")
            keep(Path(tmp) / name, DEST / "runs" / name)
    (DEST / "recorded.json").write_text(json.dumps({"t3s_version": __version__, "runs": list(RUNS)}, indent=1) + "\n")
    print(f"recorded {', '.join(RUNS)} under {DEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
