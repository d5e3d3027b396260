"""The stage ledger of a `t3s run` directory: which stages are done, on which inputs, and what each produced.

Each stage writes its outputs atomically and then a record under `stages/` holding a fingerprint of its inputs
(the config it reads, and when each input stage was produced). A rerun skips every stage whose record matches;
a stage interrupted midway has no record and is redone from scratch; `force` redoes every stage of the given
kinds and, because their outputs are newly produced, everything downstream. `adopt` takes another run's
finished stage (a teacher mixture shares the base model's evaluation between its teachers).

A `Session` says how this process runs its stages: all here (the default); as the orchestrator of a launched
run, which hands the distributed kinds to a runner (`t3s.launch`) and reads the records their processes write;
or as one of those processes (`t3s run --stage ID`), which replays the run from the records of the stages before
ID, runs ID on every process, writes its record from the main process and stops (`StageDone`).

The second half names what each kind of stage reads (`probe_inputs`, `train_inputs`, ...): a stage's
fingerprint holds exactly those settings, so that changing a sampler setting re-runs only the stages that sample.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from t3s import T3SError, __version__, dist
from t3s.artifacts import read_json, sha256_json, write_json
from t3s.config import LOSS_KEYS

if TYPE_CHECKING:
    from t3s.config import RunConfig, TrainConfig
    from t3s.objectives import Objective

STAGE_KINDS = ("probe", "score", "select", "train", "rrt", "eval")
DISTRIBUTED_KINDS = ("probe", "score", "train", "eval")  # the kinds that run on every process of a launch
TRAINING_KINDS = ("probe", "train")  # their result depends on the number of processes (the global batch)


class StageDone(Exception):
    """Raised in a `t3s run --stage ID` process once stage ID is done: nothing after it runs in this process."""

    def __init__(self, record: dict[str, Any]):
        super().__init__(record["key"])
        self.record = record


@dataclass
class Session:
    """How the stages of this process run (see the module docstring). `processes`: the run's process count; above
    1 it joins the fingerprints of the training stages, whose global batch it multiplies."""

    root: Path
    runner: Callable[[str, str], None] | None = None  # orchestrator: runner(stage_id, kind) runs it elsewhere
    target: str | None = None  # a stage's own process: the one stage it runs
    processes: int = 1
    seen: list[str] = field(default_factory=list)  # the stages replayed before the target
    active: bool = False  # the target is running: its messages go to the logs


class Ledger:
    planning = False  # a PlanLedger lists the stages instead of running them

    @property
    def summarises(self) -> bool:
        """Whether this process writes the run's summary (not a stage's own process, nor a plan)."""
        return self.session.target is None

    def __init__(
        self, out: Path, force: set[str] | tuple[str, ...] = (), session: Session | None = None, clean: bool = True
    ):
        bad = set(force) - set(STAGE_KINDS)
        if bad:
            raise T3SError(f"--force takes stage kinds {', '.join(STAGE_KINDS)}; got {', '.join(sorted(bad))}")
        self.out, self.force = Path(out), set(force)
        self.session = session or Session(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if clean and self.session.target is None:  # a stage's own process never cleans: others may be writing
            clean_stale(self.out)
        self.logfile = self.out / "run.log"

    def sub(self, out: Path) -> Ledger:
        """The ledger of a run nested in this one (a teacher's run of a mixture), in the same session."""
        return Ledger(out, self.force, self.session, clean=False)

    def stage_id(self, key: str) -> str:
        """The stage's name from the top of the session's run directory (`teachers/r1/seed-0/probe`)."""
        rel = self.out.resolve().relative_to(self.session.root.resolve()).as_posix()
        return key if rel == "." else f"{rel}/{key}"

    def log(self, msg: str, console: bool = True) -> None:
        s = self.session
        if s.target is not None and not s.active:
            return  # a stage's own process replaying the stages before its own: they were logged when they ran
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if console:
            print(line, flush=True)
        if s.target is None or dist.is_main():
            with self.logfile.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def end(self) -> bool:
        """Called where a run writes its summary: whether to write it. A stage's own process never gets to the end
        of the run that holds its stage (an error: no such stage); the end of a run nested in it (a teacher's run
        of a mixture, replayed from its records) writes nothing there."""
        s = self.session
        if s.target is None:
            return True
        if s.target.startswith(self.stage_id("")):
            raise T3SError(
                f"--stage {s.target}: this run has no such stage, or it is not reached (stages: {', '.join(s.seen)})"
            )
        return False

    def record_path(self, key: str) -> Path:
        return self.out / "stages" / (key.replace("/", "__") + ".json")

    def record(self, key: str) -> dict[str, Any]:
        """The record of a finished stage (another stage reads when it was produced)."""
        path = self.record_path(key)
        if not path.exists():
            raise T3SError(f"{self.out}: stage {key} has not run (no {path.name})")
        return read_json(path)

    def stage(
        self,
        key: str,
        kind: str,
        path: Path,
        inputs: dict[str, Any] | Callable[[], dict[str, Any]],
        fn: Callable[[Path], Any],
    ) -> dict:
        """Run `fn(path)` unless a matching record says it is done. `inputs`: what the stage reads (its
        fingerprint), or a function that returns it. Returns the stage record."""
        s = self.session
        if callable(inputs):
            inputs = inputs()
        if s.processes > 1 and kind in TRAINING_KINDS:
            inputs = {**inputs, "processes": s.processes}
        fp = sha256_json({"key": key, "inputs": inputs, "t3s": __version__})
        rec_path = self.record_path(key)
        done = rec_path.exists() and path.exists() and read_json(rec_path).get("fingerprint") == fp
        if s.target is not None:
            return self._own(key, kind, path, fp, fn, done)
        if kind not in self.force and done:
            self.log(f"{key}: done earlier, skipped")
            return read_json(rec_path)
        rec_path.unlink(missing_ok=True)
        self.log(f"{key}: running")
        t0 = time.perf_counter()
        if s.runner is not None and kind in DISTRIBUTED_KINDS:  # its own processes write the record
            s.runner(self.stage_id(key), kind)
            rec = read_json(rec_path) if rec_path.exists() else {}
            if rec.get("fingerprint") != fp or not path.exists():
                raise T3SError(
                    f"stage {self.stage_id(key)}: its processes exited without writing its outputs and record "
                    f"({rec_path}); see its logs under {self.session.root / 'logs'}"
                )
        else:
            rec = self._record(key, kind, path, fp, t0, fn(path))
            write_json(rec_path, rec)
        self.log(f"{key}: finished in {time.perf_counter() - t0:.1f}s")
        return rec

    def _record(self, key: str, kind: str, path: Path, fp: str, t0: float, result: Any) -> dict[str, Any]:
        return {
            "key": key,
            "kind": kind,
            "path": str(path.relative_to(self.out)),
            "fingerprint": fp,
            "produced": uuid.uuid4().hex,
            "seconds": time.perf_counter() - t0,
            "result": result,
        }

    def _own(self, key: str, kind: str, path: Path, fp: str, fn: Callable[[Path], Any], done: bool) -> dict:
        """`t3s run --stage ID`: the stages before ID must be done (their records are read, nothing reruns); ID
        runs on every process of the launch (select and RRT on the main one), then `StageDone` stops the run."""
        s, sid = self.session, self.stage_id(key)
        rec_path = self.record_path(key)
        if sid != s.target:
            if not done:
                raise T3SError(
                    f"--stage {s.target}: stage {sid}, which comes before it, is not done or its inputs changed; "
                    "run `t3s run` without --stage (it runs every stage in order)"
                )
            s.seen.append(sid)
            return read_json(rec_path)
        s.active = True
        if done and kind not in self.force:
            self.log(f"{key}: done earlier, skipped")
            raise StageDone(read_json(rec_path))
        if kind in TRAINING_KINDS and dist.launched() and dist.world() != s.processes:
            raise T3SError(
                f"--stage {sid}: the run is planned for {s.processes} process(es) (launch.num_processes: the global "
                f"batch counts them), but {dist.world()} were launched"
            )
        dist.on_main(lambda: rec_path.unlink(missing_ok=True))
        self.log(f"{key}: running")
        t0 = time.perf_counter()
        result = fn(path) if kind in DISTRIBUTED_KINDS else dist.on_main(lambda: fn(path))
        rec = self._record(key, kind, path, fp, t0, result)
        dist.on_main(lambda: write_json(rec_path, rec))
        self.log(f"{key}: finished in {rec['seconds']:.1f}s")
        raise StageDone(rec)

    def adopt(self, src: Path, key: str, kind: str, rel: str) -> bool:
        """Take stage `key` (its output `rel` and its record) from the finished run `src`, unless this run already
        has the same one. The record carries the fingerprint of the stage's inputs, so a run whose inputs differ
        still redoes the stage. Returns whether anything was copied."""
        src_rec, dst_rec = src / "stages" / self.record_path(key).name, self.record_path(key)
        if self.session.target is not None:  # a stage's own process: the orchestrator has adopted it already
            return False
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
        if self.session.target is not None:
            return
        tmp = self.out / ".config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
        tmp.replace(self.out / "config.yaml")


class PlanLedger:
    """A ledger that runs nothing and writes nothing: it lists the stages a run takes, in order, as (stage id,
    kind) in `stages` (`t3s run --plan`, `t3s.pipeline.plan_stages`). The pipeline runs its own stage builders
    with it, so the plan is what runs. It assumes what only running tells: every probe finds a usable bottleneck
    and runs to its end (every record's `result` says so)."""

    planning = True
    summarises = False
    PROBE = {
        "usable": True,
        "completed": True,
        "dip_found": True,
        "bottleneck_step": 0,
        "start_accuracy": 0.0,
        "bottleneck_accuracy": 0.0,
        "message": "",
    }

    def __init__(self, out: Path, root: Path | None = None, stages: list[tuple[str, str]] | None = None):
        self.out, self.root = Path(out), Path(root if root is not None else out)
        self.stages = [] if stages is None else stages
        self.force: set[str] = set()

    def sub(self, out: Path) -> PlanLedger:
        return PlanLedger(out, self.root, self.stages)

    def stage_id(self, key: str) -> str:
        rel = self.out.relative_to(self.root).as_posix()
        return key if rel == "." else f"{rel}/{key}"

    def stage(
        self,
        key: str,
        kind: str,
        path: Path,
        inputs: dict[str, Any] | Callable[[], dict[str, Any]],
        fn: Callable[[Path], Any],
    ) -> dict:
        self.stages.append((self.stage_id(key), kind))
        return self.record(key)

    def record(self, key: str) -> dict[str, Any]:
        return {"key": key, "produced": f"planned:{self.stage_id(key)}", "result": dict(self.PROBE)}

    def log(self, msg: str, console: bool = True) -> None:
        pass

    def end(self) -> bool:
        return False

    def adopt(self, src: Path, key: str, kind: str, rel: str) -> bool:
        return False

    def write_config(self, cfg: RunConfig) -> None:
        pass


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

# The key under which a stage's fingerprint holds the objective's own settings (`Objective.training_inputs`, ...),
# whatever the objective: named when the diffusion objective was the only one with settings, and kept so that
# existing run directories keep their fingerprints.
OWN = "diffusion"


def generation_inputs(cfg: RunConfig, sampled: bool) -> dict[str, Any]:
    """The `eval` keys the probe (and the tracking of every mode) reads: greedy unless probe.k > 1."""
    gen = {k: getattr(cfg.eval, k) for k in ("max_new_tokens", "batch_size", "fallback", "model_defaults")}
    if cfg.eval.grader != "math":  # the default is left out: runs made before graders existed keep their fingerprints
        gen["grader"] = cfg.eval.grader
    if sampled:
        gen.update(temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, seed=cfg.eval.seed)
    return gen


def sampling_inputs(cfg: RunConfig, objective: Objective) -> dict[str, Any]:
    """What a stage that generates along the way (probe, tracking) reads: the generation keys, and the
    objective's own sampler settings when it has any."""
    gen = generation_inputs(cfg, cfg.probe.k > 1)
    sampler = objective.sampler_inputs()
    return gen if sampler is None else {**gen, OWN: sampler}


def training_settings(train: TrainConfig) -> dict[str, Any]:
    """The training settings a result depends on: trackers (`report_to`) do not count, so adding TensorBoard to a
    finished run logs what is new and redoes nothing (written as the default, "none", which runs made before
    this rule recorded). Of the per-token loss's keys only those its loss reads count, and `loss` itself only
    when it is not nll (runs made before `train.loss` existed keep their fingerprints)."""
    settings = dataclasses.asdict(dataclasses.replace(train, report_to="none"))
    for key in set(LOSS_KEYS) - set(train.loss_settings()):
        del settings[key]
    if train.loss == "nll":
        del settings["loss"]
    return settings


def probe_inputs(cfg: RunConfig, objective: Objective, train: TrainConfig) -> dict[str, Any]:
    """A probe: its training, its evaluation schedule and its sampling (tracking keys excluded)."""
    probe = {k: v for k, v in dataclasses.asdict(cfg.probe).items() if not k.startswith("track_")}
    training = objective.training_inputs()
    return {
        "train": training_settings(train),
        "probe": probe,
        "gen": sampling_inputs(cfg, objective),
        **({} if training is None else {OWN: training}),
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
    return {"mode": mode, "threshold": cfg.threshold, OWN: None if own is None else {**own, "student": student}}


def train_inputs(cfg: RunConfig, objective: Objective, train: TrainConfig) -> dict[str, Any]:
    """A training run: its settings, the rendering, the objective's loss settings and, when modes are tracked,
    the tracking's sampling."""
    return {
        "train": training_settings(train),
        "render": dataclasses.asdict(cfg.render),
        "track": tracking_inputs(cfg, objective),
        OWN: objective.training_inputs(),
    }


def eval_inputs(cfg: RunConfig, objective: Objective) -> dict[str, Any]:
    """An evaluation: the generation settings, the rendering and the objective's own sampler settings."""
    gen = dataclasses.asdict(cfg.eval)
    if gen["grader"] == "math":  # the default is left out: runs made before graders existed keep their fingerprints
        del gen["grader"]
    return {"eval": gen, "render": dataclasses.asdict(cfg.render), OWN: objective.sampler_inputs()}
