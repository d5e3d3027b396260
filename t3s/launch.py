"""`t3s run` at any scale: the distributed stages (probe, score, train, eval) as subprocesses under a launcher.

`t3s run` stays the orchestrator, one plain process: it keeps the ledger, runs select, RRT and the summary
itself, and starts every distributed stage as

    LAUNCHER ... -m t3s run RUN/config.yaml --out RUN --stage STAGE_ID

(`torchrun` or `accelerate launch`, from the config's `launch` section). That process replays the run from the
records of the stages before STAGE_ID (t3s.ledger: nothing is recomputed), runs STAGE_ID alone on every process,
writes its record from the main process and exits; the orchestrator then reads the record. So the ledger, the
fingerprints, resuming, `--force` and the summary behave as on one process, and the same command is the manual
fallback: `t3s run --plan` prints every stage's command.

Each attempt at a stage keeps its logs under RUN/logs/STAGE/attempt-N/: `launcher.log` (the launcher's own
output) and `rank-R.log` per process (what that process printed, including its traceback). A failed stage stops
the run with one error naming the stage, the command and the logs.

Several nodes: with `launch.prefix` (e.g. `srun --nodes=2 --ntasks-per-node=1`) the orchestrator starts the
launcher on every node through it (torchrun's c10d rendezvous assigns the node ranks); without it, it starts
node 0's share and writes, and prints, each other node's command for the stage (RUN/logs/STAGE/attempt-N/
node-R.sh), then waits for the stage as launchers do.

This module imports no torch: reading a plan costs nothing.
"""

from __future__ import annotations

import faulthandler
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from t3s import T3SError

if TYPE_CHECKING:
    from t3s.config import LaunchConfig, RunConfig

LOG_ENV = "T3S_STAGE_LOGS"  # set by the orchestrator: the folder of the stage's per-process logs


@dataclass(frozen=True)
class Launch:
    """A checked `launch` section: the launcher in use and the process counts."""

    kind: str  # none | torchrun | accelerate
    processes: int  # over all nodes
    nodes: int
    cfg: LaunchConfig

    @property
    def per_node(self) -> int:
        return self.processes // self.nodes


def accelerate_settings(path: str) -> dict:
    """The accelerate config file as a mapping (one clear error if it is missing or not YAML)."""
    p = Path(path)
    if not p.is_file():
        raise T3SError(f"launch.config_file: {path}: no such accelerate config file (see examples/accelerate/)")
    try:
        body = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise T3SError(f"launch.config_file: {path}: cannot read it ({e})") from None
    if not isinstance(body, dict):
        raise T3SError(f"launch.config_file: {path}: an accelerate config is a mapping of settings")
    return body


def resolve(lc: LaunchConfig) -> Launch:
    """Check the launch settings against each other and the accelerate config file (before any stage runs)."""
    kind = lc.kind()
    processes, nodes = lc.num_processes, lc.nodes
    if lc.config_file:
        body = accelerate_settings(lc.config_file)

        def number(key: str) -> int | None:
            try:
                return None if body.get(key) is None else int(body[key])
            except (TypeError, ValueError):
                raise T3SError(f"launch.config_file: {lc.config_file}: {key} is not a number") from None

        processes = processes if processes is not None else number("num_processes")
        machines = number("num_machines") or 1
        if machines > 1 and nodes == 1:
            raise T3SError(
                f"launch.config_file: {lc.config_file} is for {machines} machines: set launch.nodes: {machines} and "
                "launch.main_address"
            )
    processes = processes or nodes
    if processes < 1:
        raise T3SError(f"launch.num_processes must be >= 1, got {processes}")
    if processes % nodes:
        raise T3SError(f"launch.num_processes ({processes}) must be a multiple of launch.nodes ({nodes})")
    if kind == "none" and processes > 1:
        raise T3SError("launch.launcher: none runs every stage in this one process: num_processes and nodes are 1")
    return Launch(kind, processes, nodes, lc)


def total_processes(lc: LaunchConfig) -> int:
    return resolve(lc).processes


def one_process(kind: str, cfg: RunConfig) -> bool:
    """Distributed stages that must run on one process: evaluation with vLLM (the engine spreads over the GPUs
    itself, `eval.vllm.tensor_parallel_size`)."""
    return kind == "eval" and cfg.eval.backend == "vllm"


def worker_args(config: Path, out: Path, stage: str, quiet: bool) -> list[str]:
    """What every process of a stage runs (after the launcher's own arguments)."""
    return ["-m", "t3s", "run", str(config), "--out", str(out), "--stage", stage, *(["--quiet"] if quiet else [])]


def launcher_command(launch: Launch, python: str, node_rank: int | None = None, port: int | None = None) -> list[str]:
    """The launcher with its arguments (the worker's `-m t3s ...` follows). `node_rank`: the node this command is
    for when each node is started by hand (nodes > 1 without a prefix); `port`: the single-node port."""
    lc = launch.cfg
    cmd = list(lc.prefix)
    if launch.kind == "torchrun":
        cmd += [python, "-m", "torch.distributed.run", "--nproc_per_node", str(launch.per_node)]
        if launch.nodes == 1:
            cmd += ["--standalone"] if port is None else ["--master_addr", "127.0.0.1", "--master_port", str(port)]
        elif lc.prefix:  # one launcher per node started by the prefix: the rendezvous assigns the node ranks
            cmd += [
                "--nnodes",
                str(launch.nodes),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"{lc.main_address}:{lc.main_port or 29500}",
            ]
        else:
            cmd += [
                "--nnodes",
                str(launch.nodes),
                "--node_rank",
                str(node_rank or 0),
                "--master_addr",
                str(lc.main_address),
                "--master_port",
                str(lc.main_port or 29500),
            ]
    elif launch.kind == "accelerate":
        cmd += [python, "-m", "accelerate.commands.launch"]
        if lc.config_file:
            cmd += ["--config_file", lc.config_file]
        elif launch.processes > 1:
            cmd += ["--multi_gpu"]  # without it (or a config saying so) accelerate starts one process
        cmd += ["--num_processes", str(launch.processes)]
        if launch.nodes == 1:
            cmd += ["--main_process_port", str(port if port is not None else 0)]  # 0: a free port
        else:
            cmd += [
                "--num_machines",
                str(launch.nodes),
                "--machine_rank",
                str(node_rank or 0),
                "--main_process_ip",
                str(lc.main_address),
                "--main_process_port",
                str(lc.main_port or 29500),
            ]
    else:
        raise T3SError(f"no launcher for launch.launcher={lc.launcher}")
    return cmd + list(lc.args)


def stage_command(
    launch: Launch,
    kind: str,
    cfg: RunConfig,
    config: Path,
    out: Path,
    stage: str,
    quiet: bool,
    python: str | None = None,
    node_rank: int | None = None,
) -> list[str]:
    """The exact command of one stage: the worker under the launcher, or alone where the stage needs one process."""
    python = python or sys.executable
    tail = worker_args(config, out, stage, quiet)
    if one_process(kind, cfg):
        return [python, *tail]
    return [*launcher_command(launch, python, node_rank, cfg.launch.main_port), *tail]


def log_dir(out: Path, stage: str) -> Path:
    return out / "logs" / stage.replace("/", "__")


def worker_output(stage: str) -> None:
    """In a stage's process started by the orchestrator: send this process's stdout and stderr (Python's and any
    library's) to RUN/logs/STAGE/attempt-N/rank-R.log, starting with who it is."""
    folder = os.environ.get(LOG_ENV)
    if not folder:
        return
    rank = int(os.environ.get("RANK", "0"))
    fd = os.open(Path(folder) / f"rank-{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    faulthandler.enable()  # a crash (a signal, an abort in a library) leaves every thread's Python stack here
    world = os.environ.get("WORLD_SIZE", "1")
    print(
        f"t3s run --stage {stage}: rank {rank} of {world}, pid {os.getpid()}, host {socket.gethostname()}", flush=True
    )


def _tail(path: Path, stop: threading.Event, write: Callable[[str], None]) -> None:
    """Copy what `path` gains to `write`, each line indented (the stage's main process speaking), until `stop`."""
    pos, start = 0, True
    while True:
        done = stop.wait(0.3)
        if path.exists():
            with path.open("rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos += len(chunk)
            if chunk:
                text = chunk.decode("utf-8", errors="replace")
                write(("  | " if start else "") + text[:-1].replace("\n", "\n  | ") + text[-1])
                start = text.endswith("\n")
        if done:
            return


_FAILURE = re.compile(r"\berror:|\b\w*(Error|Exception)\b|^Traceback|\bexitcode\b|\bSignal \d+|\bKilled\b")


def _ends(folder: Path) -> list[str]:
    """The lines that say why a stage failed: per log, the last error-looking lines (tracebacks' last lines,
    `t3s ...: error:`, a launcher's report of a killed or failed process)."""
    out = []
    for path in sorted(folder.glob("*.log"), key=lambda p: (p.name != "launcher.log", p.name)):
        lines = [x.rstrip() for x in path.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
        hits = [x for x in lines if _FAILURE.search(x) and "warn" not in x.lower()]
        for line in hits[-3:]:
            out.append(f"{path.name}: {line.strip()[:300]}")
    return out


class StageRunner:
    """The orchestrator's way of running a distributed stage: `runner(stage_id, kind)` starts its processes, waits,
    and raises one T3SError naming the stage, the command and its logs when they fail."""

    def __init__(self, cfg: RunConfig, out: Path, progress: bool, log: Callable[[str], None]):
        self.cfg, self.out, self.progress, self.log = cfg, Path(out), progress, log
        self.launch = resolve(cfg.launch)
        self.config = self.out / "config.yaml"

    def command(self, stage: str, kind: str, node_rank: int | None = None) -> list[str]:
        return stage_command(
            self.launch, kind, self.cfg, self.config, self.out, stage, not self.progress, node_rank=node_rank
        )

    def __call__(self, stage: str, kind: str) -> None:
        base = log_dir(self.out, stage)
        base.mkdir(parents=True, exist_ok=True)
        n = 1 + sum(1 for p in base.glob("attempt-*") if p.is_dir())
        folder = base / f"attempt-{n}"
        folder.mkdir()
        env = {**os.environ, **self.cfg.launch.env, LOG_ENV: str(folder.resolve())}
        cmd = self.command(stage, kind, node_rank=0 if self._by_hand(kind) else None)
        if self._by_hand(kind):
            self._node_scripts(stage, kind, folder)
        self.log(f"{stage}: {shlex.join(cmd)}  (logs: {folder})")
        stop = threading.Event()
        tail = threading.Thread(target=_tail, args=(folder / "rank-0.log", stop, sys.stdout.write), daemon=True)
        with (folder / "launcher.log").open("wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            tail.start()
            try:
                code = proc.wait()
            except BaseException:  # Ctrl-C / SIGTERM of the orchestrator: stop the stage's processes too
                _stop(proc)
                raise
            finally:
                stop.set()
                tail.join()
                sys.stdout.flush()
        if code != 0:
            why = _ends(folder)
            raise T3SError(
                f"stage {stage} failed (exit code {code})\n  command: {shlex.join(cmd)}\n  logs: {folder}/ ("
                + ", ".join(sorted(p.name for p in folder.glob("*.log")))
                + ")"
                + "".join(f"\n  {x}" for x in why)
                + "\n  finished stages are kept: fix the cause and rerun the same `t3s run`"
            )

    def _by_hand(self, kind: str) -> bool:
        return self.launch.nodes > 1 and not self.cfg.launch.prefix and not one_process(kind, self.cfg)

    def _node_scripts(self, stage: str, kind: str, folder: Path) -> None:
        """nodes > 1 without a prefix: each other node's command for this stage, written and printed."""
        for rank in range(1, self.launch.nodes):
            env = {**self.cfg.launch.env, LOG_ENV: str(folder.resolve())}
            script = folder / f"node-{rank}.sh"
            script.write_text(
                "#!/bin/sh\n# node "
                f"{rank} of {self.launch.nodes}, stage {stage}: run this on that node\n"
                f"cd {shlex.quote(os.getcwd())}\n"
                + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
                + f"exec {shlex.join(self.command(stage, kind, node_rank=rank))}\n"
            )
            self.log(f"{stage}: on node {rank} run: sh {script}")


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a stage's process group (the launcher and its workers), then kill what is left after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return
            time.sleep(0.2)
