"""The stage ledger of a `t3s run` directory: which stages are done, on which inputs, and what each produced.

Each stage writes its outputs atomically and then a record under `stages/` holding a fingerprint of its inputs
(the config it reads, and when each input stage was produced). A rerun skips every stage whose record matches;
a stage interrupted midway has no record and is redone from scratch; `force` redoes every stage of the given
kinds and, because their outputs are newly produced, everything downstream. `adopt` takes another run's
finished stage (a teacher mixture shares the base model's evaluation between its teachers).

The second half names what each kind of stage reads (`probe_inputs`, `train_inputs`, ...): a stage's
fingerprint holds exactly those settings, so that changing a sampler setting re-runs only the stages that sample.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from t3s import T3SError, __version__
from t3s.artifacts import read_json, sha256_json, write_json

if TYPE_CHECKING:
    from t3s.config import RunConfig, TrainConfig
    from t3s.objectives import Objective

STAGE_KINDS = ("probe", "score", "select", "train", "rrt", "eval")


class Ledger:
    def __init__(self, out: Path, force: set[str] | tuple[str, ...] = ()):
        bad = set(force) - set(STAGE_KINDS)
        if bad:
            raise T3SError(f"--force takes stage kinds {', '.join(STAGE_KINDS)}; got {', '.join(sorted(bad))}")
        self.out, self.force = Path(out), set(force)
        self.out.mkdir(parents=True, exist_ok=True)
        clean_stale(self.out)
        self.logfile = self.out / "run.log"

    def log(self, msg: str, console: bool = True) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if console:
            print(line, flush=True)
        with self.logfile.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def record_path(self, key: str) -> Path:
        return self.out / "stages" / (key.replace("/", "__") + ".json")

    def record(self, key: str) -> dict[str, Any]:
        """The record of a finished stage (another stage reads when it was produced)."""
        path = self.record_path(key)
        if not path.exists():
            raise T3SError(f"{self.out}: stage {key} has not run (no {path.name})")
        return read_json(path)

    def stage(self, key: str, kind: str, path: Path, inputs: dict[str, Any], fn: Callable[[Path], Any]) -> dict:
        """Run `fn(path)` unless a matching record says it is done. Returns the stage record."""
        fp = sha256_json({"key": key, "inputs": inputs, "t3s": __version__})
        rec_path = self.record_path(key)
        if kind not in self.force and rec_path.exists() and path.exists():
            rec = read_json(rec_path)
            if rec.get("fingerprint") == fp:
                self.log(f"{key}: done earlier, skipped")
                return rec
        rec_path.unlink(missing_ok=True)
        self.log(f"{key}: running")
        t0 = time.perf_counter()
        result = fn(path)
        rec = {
            "key": key,
            "kind": kind,
            "path": str(path.relative_to(self.out)),
            "fingerprint": fp,
            "produced": uuid.uuid4().hex,
            "seconds": time.perf_counter() - t0,
            "result": result,
        }
        write_json(rec_path, rec)
        self.log(f"{key}: finished in {rec['seconds']:.1f}s")
        return rec

    def adopt(self, src: Path, key: str, kind: str, rel: str) -> bool:
        """Take stage `key` (its output `rel` and its record) from the finished run `src`, unless this run already
        has the same one. The record carries the fingerprint of the stage's inputs, so a run whose inputs differ
        still redoes the stage. Returns whether anything was copied."""
        src_rec, dst_rec = src / "stages" / self.record_path(key).name, self.record_path(key)
        if kind in self.force or not src_rec.exists() or not (src / rel).exists():
            return False
        if (
            dst_rec.exists()
            and (self.out / rel).exists()
            and (read_json(dst_rec)["fingerprint"] == read_json(src_rec)["fingerprint"])
        ):
            return False
        dst_rec.unlink(missing_ok=True)  # from here until the copy is in place, the stage counts as not done
        tmp = self.out / f".{Path(rel).name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.out / rel, ignore_errors=True)  # an output without a record is unfinished
        shutil.copytree(src / rel, tmp)
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(self.out / rel)
        dst_rec.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_rec, dst_rec.with_name(f".{dst_rec.name}.tmp"))
        dst_rec.with_name(f".{dst_rec.name}.tmp").replace(dst_rec)
        return True

    def write_config(self, cfg: RunConfig) -> None:
        tmp = self.out / ".config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
        tmp.replace(self.out / "config.yaml")


def clean_stale(out: Path) -> None:
    """Temporary files and directories left by a run that was killed (atomic writes that never finished)."""
    for p in [*out.rglob(".*.tmp"), *out.rglob(".*.old"), *out.rglob(".*.tmp.png")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- stage inputs
# Every helper returns the settings one kind of stage reads; the caller adds the fingerprints of its inputs
# (models, data, and when the stages it reads were produced).


def generation_inputs(cfg: RunConfig, sampled: bool) -> dict[str, Any]:
    """The `eval` keys the probe (and the tracking of every mode) reads: greedy unless probe.k > 1."""
    gen = {k: getattr(cfg.eval, k) for k in ("max_new_tokens", "batch_size", "fallback", "model_defaults")}
    if sampled:
        gen.update(temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, seed=cfg.eval.seed)
    return gen


def sampling_inputs(cfg: RunConfig, objective: Objective) -> dict[str, Any]:
    """What a stage that generates along the way (probe, tracking) reads: the generation keys, and the
    objective's own sampler settings when it has any."""
    gen = generation_inputs(cfg, cfg.probe.k > 1)
    sampler = objective.sampler_inputs()
    return gen if sampler is None else {**gen, "diffusion": sampler}


def probe_inputs(cfg: RunConfig, objective: Objective, train: TrainConfig) -> dict[str, Any]:
    """A probe: its training, its evaluation schedule and its sampling (tracking keys excluded)."""
    probe = {k: v for k, v in dataclasses.asdict(cfg.probe).items() if not k.startswith("track_")}
    training = objective.training_inputs()
    return {
        "train": dataclasses.asdict(train),
        "probe": probe,
        "gen": sampling_inputs(cfg, objective),
        **({} if training is None else {"diffusion": training}),
    }


def tracking_inputs(cfg: RunConfig, objective: Objective) -> dict[str, Any] | None:
    """The evaluation of a trained mode along the way (`probe.track_every`), or None when off."""
    if cfg.probe.track_every <= 0:
        return None
    return {
        "every": cfg.probe.track_every,
        "subset": cfg.probe.track_subset,
        "gen": sampling_inputs(cfg, objective),
        **{k: getattr(cfg.probe, k) for k in ("subset_seed", "k", "markers")},
    }


def score_inputs(cfg: RunConfig) -> dict[str, Any]:
    return {"score": dataclasses.asdict(cfg.score)}


def selection_inputs(cfg: RunConfig, objective: Objective, mode: str, student: str) -> dict[str, Any]:
    """A selection: its mode and threshold, and the objective's own selection settings (a forced set's τ, with
    the student whose tokens it is projected onto)."""
    own = objective.selection_inputs()
    return {"mode": mode, "threshold": cfg.threshold, "diffusion": None if own is None else {**own, "student": student}}


def train_inputs(cfg: RunConfig, objective: Objective, train: TrainConfig) -> dict[str, Any]:
    """A training run: its settings, the rendering, the objective's loss settings and, when modes are tracked,
    the tracking's sampling."""
    return {
        "train": dataclasses.asdict(train),
        "render": dataclasses.asdict(cfg.render),
        "track": tracking_inputs(cfg, objective),
        "diffusion": objective.training_inputs(),
    }


def eval_inputs(cfg: RunConfig, objective: Objective) -> dict[str, Any]:
    """An evaluation: the generation settings, the rendering and the objective's own sampler settings."""
    return {
        "eval": dataclasses.asdict(cfg.eval),
        "render": dataclasses.asdict(cfg.render),
        "diffusion": objective.sampler_inputs(),
    }
