"""`t3s run` under a launcher (t3s.launch): the distributed stages as their own processes (torchrun, gloo on CPU),
the same results as one process, a killed worker, the plan, the per-node commands and bad launch settings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import started

from t3s.cli import main as t3s
from t3s.config import LaunchConfig, load_config, read_resolved
from t3s.launch import Launch, launcher_command, resolve, stage_command
from t3s.pipeline import plan_stages

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "modes": ["sft", "t3s", "random"],
    "seeds": [0],
    "threshold": 0.0,
    "train": {"learning_rate": 3e-3, "max_steps": 6, "per_device_train_batch_size": 8, "dtype": "float32"},
    "probe": {"eval_every": 2, "continue_without_dip": True, "markers": ["Ones"]},
    "eval": {"max_new_tokens": 16, "dtype": "float32"},
    "score": {"dtype": "float32"},
}


@pytest.fixture()
def config(tiny, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "student": str(tiny / "model"), "train_data": str(tiny / "train.jsonl")}))
    return path


def t3s_run(config, out, *extra, wait=True):
    cmd = [sys.executable, "-m", "t3s", "run", str(config), "--out", str(out), "--quiet", *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True)


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}


def test_two_processes_match_one_and_a_killed_worker_is_redone(config, tmp_path):
    """The issue's test: `t3s run` with launch.num_processes=2 (per-device batch halved: the same global batch)
    writes the summary and the selection masks of the one-process run; a SIGKILL of one worker mid-stage stops
    the run with the stage's error, and the rerun completes it without redoing the stages before."""
    from t3s.select import load_selection

    one, two = tmp_path / "one", tmp_path / "two"
    # two modes: each launched stage costs ~9 s of start-up here (two processes importing torch and transformers)
    # no RRT: its stage is train-t3s's distributed training from another checkpoint (each stage costs start-up)
    modes = ["modes=[sft,t3s]", "rrt=false"]
    r = t3s_run(config, one, *modes)
    assert r.returncode == 0, r.stderr + r.stdout
    launch = [*modes, "launch.num_processes=2", "train.per_device_train_batch_size=4"]
    proc = t3s_run(config, two, *launch, wait=False)
    log = two / "logs" / "seed-0__train-t3s" / "attempt-1" / "rank-1.log"
    deadline = time.monotonic() + 240
    while not (log.exists() and "pid" in log.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    pid = int(log.read_text().split("pid ")[1].split(",")[0])
    time.sleep(1.0)  # mid-stage: the worker is loading or training
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, out + err
    error = [x for x in err.splitlines() if x.strip()]
    assert error[0] == "t3s run: error: stage seed-0/train-t3s failed (exit code 1)", err
    assert "command: " in err and "-m torch.distributed.run --nproc_per_node 2" in err
    assert "--stage seed-0/train-t3s" in err and "logs: " in err and "rerun the same `t3s run`" in err
    assert "SIGKILL" in err or "Signal 9" in err  # the launcher's report of the killed process
    folder = log.parent
    assert {p.name for p in folder.glob("*.log")} == {"launcher.log", "rank-0.log", "rank-1.log"}
    before = records(two)
    assert "seed-0__train-t3s" not in before and "seed-0__probe" in before

    r = t3s_run(config, two, *launch)
    assert r.returncode == 0, r.stderr + r.stdout
    after = records(two)
    assert all(after[k]["produced"] == v["produced"] for k, v in before.items())  # nothing finished was redone
    assert (two / "logs" / "seed-0__train-t3s" / "attempt-2" / "rank-1.log").exists()  # the first attempt's logs stay
    assert (folder / "rank-1.log").exists()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert [x["method"] for x in a["rows"]] == [x["method"] for x in b["rows"]] == ["base", "sft", "t3s"]
    for x, y in zip(a["rows"], b["rows"]):
        for k in ("accuracy", "mean_tokens", "dropped_fraction"):
            assert x.get(k) == pytest.approx(y.get(k), abs=1e-6), (x["method"], k)
    for mode in ("t3s",):
        sa, sb = (load_selection(d / "seed-0" / "selections" / mode) for d in (one, two))
        assert len(sa.keep) == len(sb.keep) and all(np.array_equal(p, q) for p, q in zip(sa.keep, sb.keep))
    ra, rb = records(one), records(two)
    for key in ("seed-0__train-t3s",):
        assert ra[key]["result"]["train_loss"] == pytest.approx(rb[key]["result"]["train_loss"], rel=1e-4)
    # the plan lists exactly the stages the run took, in its order
    cfg = read_resolved(two / "config.yaml")
    assert started(two) == [k for k, _ in plan_stages(cfg)]
    assert started(one) == [k for k, _ in plan_stages(load_config(config, modes, flat=()))]

    # Two nodes of one process each (the same 2 processes: every fingerprint but the evaluations' holds), on this
    # machine. (a) through a prefix that starts the launcher once per node, like srun: torchrun's c10d rendezvous
    nodes = ["launch.nodes=2", "launch.main_address=127.0.0.1", f"launch.main_port={free_port()}"]
    srun = tmp_path / "fake-srun"
    srun.write_text('#!/bin/sh\n"$@" & first=$!\n"$@"; second=$?\nwait $first || exit $?\nexit $second\n')
    srun.chmod(0o755)
    evals = ["modes=[sft]", "rrt=false", "--force", "eval"]  # eval-base and seed-0/eval-sft, again
    r = t3s_run(config, two, *launch, *nodes, f"launch.prefix=[{srun}]", *evals)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "--rdzv_backend c10d --rdzv_endpoint 127.0.0.1:" in (two / "run.log").read_text()
    assert_same_evals(one, two, ["base", "sft"])
    # (b) by hand: t3s starts node 0's share and writes node 1's command for each stage; "node 1" runs them
    nodes[-1] = f"launch.main_port={free_port()}"
    proc = t3s_run(config, two, *launch, *nodes, *evals, wait=False)
    ran: set[Path] = set()
    while proc.poll() is None:
        for script in set((two / "logs").glob("*/attempt-*/node-1.sh")) - ran:
            ran.add(script)
            subprocess.Popen(["sh", str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err
    assert {s.parent.parent.name for s in ran} == {"eval-base", "seed-0__eval-sft"}
    assert "on node 1 run: sh " in out and "--node_rank 0" in (two / "run.log").read_text()
    assert_same_evals(one, two, ["base", "sft"])
    # (c) accelerate launch instead of torchrun (on a CPU: --multi_gpu with gloo; without it, one process)
    r = t3s_run(config, two, *launch, "launch.launcher=accelerate", *evals)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "-m accelerate.commands.launch --multi_gpu --num_processes 2" in (two / "run.log").read_text()
    assert (two / "logs" / "eval-base" / "attempt-4" / "rank-1.log").exists()  # two processes did run
    assert_same_evals(one, two, ["base", "sft"])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_evals(one, two, methods):
    for m in methods:
        where = "eval-base" if m == "base" else f"seed-0/eval/{m}"
        a, b = ([json.loads(x) for x in open(d / where / "samples.jsonl")] for d in (one, two))
        assert [x["response"] for x in a] == [x["response"] for x in b], m


def test_plan_prints_every_stage_and_its_command_and_writes_nothing(config, tmp_path, capsys):
    out = tmp_path / "planned"
    code = t3s(["run", str(config), "--out", str(out), "--plan", "--num-processes", "2", "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists()
    cfg = load_config(config, ["launch.num_processes=2"], flat=())
    stages = plan_stages(cfg)
    assert [k for k, _ in stages] == [
        "seed-0/probe",
        "scores-init",
        "seed-0/scores-bottleneck",
        "seed-0/select-t3s",
        "seed-0/select-random",
        "seed-0/train-t3s",
        "seed-0/train-random",
        "seed-0/rrt",
        "eval-base",
        "seed-0/eval-sft",
        "seed-0/eval-t3s",
        "seed-0/eval-random",
        "seed-0/eval-rrt",
    ]
    assert "global batch 16 = 8 rows per device × 1 accumulation step(s) × 2 process(es)" in text
    assert "precision (train.dtype float32) here (cpu): weights float32" in text
    lines = text.splitlines()
    for i, (sid, kind) in enumerate(stages, 1):
        at = lines.index(f"{i:3d}. {sid}  [{kind}]")
        below = lines[at + 1].strip()
        if kind in ("select", "rrt"):
            assert below == "in this process"
        else:
            assert "-m torch.distributed.run --nproc_per_node 2 --standalone -m t3s run" in below
            assert below.endswith(f"--out {out} --stage {sid} --quiet") and f"{out}/config.yaml" in below


@pytest.mark.parametrize("recipe", ["qwen3-8b", "llada2-mini"])
def test_plan_of_a_known_model_has_the_estimate(tmp_path, capsys, recipe):
    path = ROOT / "examples" / "recipes" / f"{recipe}.yaml"
    code = t3s(["run", str(path), "--out", str(tmp_path / "q"), "--plan"])
    text = capsys.readouterr().out
    assert code == 0
    config = "deepspeed-zero3" if recipe == "qwen3-8b" else "fsdp2"
    assert f"accelerate on 8 process(es), accelerate config examples/accelerate/{config}.yaml" in text
    assert "global batch 64 = 1 rows per device × 8 accumulation step(s) × 8 process(es)" in text
    # the recipe's own numbers: its header is bench/estimate.py's for the same settings
    header = [x[2:] for x in path.read_text().splitlines() if x.startswith("# estimate:")]
    assert [x for x in text.splitlines() if x.startswith("estimate:")] == header
    assert "on a bf16 GPU: weights float32, compute bfloat16, optimizer state float32" in text


@pytest.mark.parametrize(
    "override, message",
    [
        ("launch.launcher=mpirun", "launch.launcher must be one of auto, none, torchrun, accelerate, got 'mpirun'"),
        ("launch.num_processes=0", "launch.num_processes must be >= 1, got 0"),
        ("launch.config_file=nowhere/ds.yaml", "launch.config_file: nowhere/ds.yaml: no such accelerate config file"),
        ("launch.nodes=2", "launch.nodes > 1 needs launch.main_address"),
        ("launch.num_processes=3", None),  # fine on its own: checked with nodes below
    ],
)
def test_bad_launch_settings_are_one_error_before_any_stage(config, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    extra = ["launch.nodes=2", "launch.main_address=h0"] if message is None else []
    code = t3s(["run", str(config), "--out", str(out), override, *extra])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert len(err.strip().splitlines()) == 1
    assert (message or "launch.num_processes (3) must be a multiple of launch.nodes (2)") in err


def test_stage_reads_only_the_runs_own_config(config, tmp_path, capsys):
    code = t3s(["run", str(config), "--out", str(tmp_path / "r"), "--stage", "seed-0/probe"])
    assert code == 2 and "--stage reads the run's own config" in capsys.readouterr().err


def test_run_under_a_launcher_says_to_give_it_the_launcher(config, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    from t3s import dist

    monkeypatch.setattr(dist, "is_main", lambda: True)
    code = t3s(["run", str(config)])
    assert code == 2 and "launch.num_processes=8" in capsys.readouterr().err


def test_resolved_config_round_trips_to_the_bit(config, tmp_path):
    """The stage processes read RUN/config.yaml; its values must be the orchestrator's exactly (an int default of a
    float key such as train.warmup_steps stays an int), or every fingerprint would differ."""
    from t3s.ledger import Ledger

    for path in (config, ROOT / "examples" / "recipes" / "llada2-mini.yaml", ROOT / "examples" / "run.yaml"):
        cfg = load_config(path, ["launch.num_processes=2"], flat=())
        Ledger(tmp_path / path.stem).write_config(cfg)
        again = read_resolved(tmp_path / path.stem / "config.yaml")
        assert again == cfg
        assert json.dumps(again.as_dict(), sort_keys=True) == json.dumps(cfg.as_dict(), sort_keys=True)


# ---------------------------------------------------------------------------------------------- commands


def lc(**kw) -> Launch:
    return resolve(LaunchConfig(**kw))


def test_launcher_commands():
    py = "python"
    assert launcher_command(lc(num_processes=4), py) == [
        py,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "4",
        "--standalone",
    ]
    acc = lc(config_file=str(ROOT / "examples/accelerate/deepspeed-zero3.yaml"))
    assert acc.kind == "accelerate" and acc.processes == 8  # the accelerate config's num_processes
    assert launcher_command(acc, py) == [
        py,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "examples/accelerate/deepspeed-zero3.yaml"),
        "--num_processes",
        "8",
        "--main_process_port",
        "0",
    ]
    # accelerate without a config file: --multi_gpu, or accelerate starts a single process
    assert "--multi_gpu" in launcher_command(lc(launcher="accelerate", num_processes=2), py)
    # several nodes, started through a prefix (srun): torchrun's c10d rendezvous ranks the nodes
    slurm = lc(num_processes=16, nodes=2, main_address="h0", prefix=["srun", "--nodes=2", "--ntasks-per-node=1"])
    assert launcher_command(slurm, py) == [
        "srun",
        "--nodes=2",
        "--ntasks-per-node=1",
        py,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "8",
        "--nnodes",
        "2",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "h0:29500",
    ]
    # several nodes by hand: one command per node, with its rank
    hand = lc(num_processes=16, nodes=2, main_address="h0", main_port=1234)
    assert launcher_command(hand, py, node_rank=1)[-8:] == [
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--master_addr",
        "h0",
        "--master_port",
        "1234",
    ]
    with pytest.raises(Exception, match="use launch.launcher: torchrun"):
        LaunchConfig(config_file="x.yaml", nodes=2, main_address="h0", prefix=["srun"])
    with pytest.raises(Exception, match="accelerate config"):
        LaunchConfig(launcher="torchrun", config_file="x.yaml")


def test_vllm_evaluation_runs_on_one_process(config):
    cfg = load_config(config, ["launch.num_processes=2", "eval.backend=vllm"], flat=())
    launch = resolve(cfg.launch)
    cmd = stage_command(launch, "eval", cfg, Path("r/config.yaml"), Path("r"), "eval-base", True, python="py")
    assert cmd == ["py", "-m", "t3s", "run", "r/config.yaml", "--out", "r", "--stage", "eval-base", "--quiet"]
    assert "torch.distributed.run" in " ".join(
        stage_command(launch, "score", cfg, Path("r/config.yaml"), Path("r"), "scores-init", True, python="py")
    )


def test_per_node_commands_are_written_and_printed(config, tmp_path, capsys):
    """nodes > 1 without a prefix: --plan prints every node's command for each distributed stage."""
    code = t3s(
        ["run", str(config), "--out", str(tmp_path / "r"), "--plan", "--nodes", "2", "--num-processes", "4"]
        + ["--main-address", "10.0.0.1", "--main-port", "29511"]
    )
    text = capsys.readouterr().out
    assert code == 0
    probe = text.splitlines()[text.splitlines().index("  1. seed-0/probe  [probe]") + 1 :][:2]
    for rank, line in enumerate(probe):
        assert line.strip().startswith(f"node {rank}: ") and f"--node_rank {rank}" in line
        assert "--nnodes 2" in line and "--master_addr 10.0.0.1 --master_port 29511" in line


def test_slurm_example_is_a_real_run_config():
    cfg = load_config(ROOT / "examples" / "slurm" / "qwen3-32b-2nodes.yaml", [], flat=())
    assert cfg.launch.nodes == 2 and cfg.launch.prefix[0] == "srun" and cfg.launch.kind() == "torchrun"
    script = (ROOT / "examples" / "slurm" / "t3s-run.sbatch").read_text()
    assert "t3s run examples/slurm/qwen3-32b-2nodes.yaml" in script and "launch.main_address=" in script


def launcher_env(config_file: str) -> dict[str, str]:
    """The variables `accelerate launch --config_file CONFIG` exports to each process, computed by accelerate's own
    launcher code (nothing is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", config_file, "script.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config) if defaults else ""
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize(
    "name,sharding",
    [("ddp", None), ("deepspeed-zero2", None), ("deepspeed-zero3", "ZeRO-3"), ("fsdp2", "FSDP")],
)
def test_planned_sharding_of_the_shipped_accelerate_configs(name, sharding, tmp_path):
    """What the Trainer will shard is known before anything loads, from what the launcher exports (LoRA under
    ZeRO-3 / FSDP is refused from it: tests/test_distributed.py), or from the Trainer's own arguments."""
    from t3s import T3SError
    from t3s.dist import planned_sharding

    env = launcher_env(str(ROOT / "examples" / "accelerate" / f"{name}.yaml"))
    assert planned_sharding({}, env) == sharding
    assert planned_sharding({}, {}) is None
    assert planned_sharding({"fsdp": "full_shard"}, {}) == "FSDP"
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert planned_sharding({"deepspeed": str(ds)}, {}) == "ZeRO-3"
    assert planned_sharding({"deepspeed": {"zero_optimization": {"stage": 2}}}, {}) is None
    with pytest.raises(T3SError, match="cannot read the DeepSpeed config"):
        planned_sharding({"deepspeed": str(tmp_path / "missing.json")}, {})


def test_plan_of_a_diffusion_run_prices_its_sampler_settings(tmp_path, capsys):
    """`t3s run --plan` on LLaDA-2 reads the run's sampler settings: without the cache an evaluation costs what
    t3s.estimate.sampler_flops gives for the block-causal reading, and a threshold divides the steps."""
    import dataclasses

    from t3s import estimate

    path = ROOT / "examples" / "recipes" / "llada2-mini.yaml"

    def eval_line(*kv):
        assert t3s(["run", str(path), "--out", str(tmp_path / "q"), "--plan", *kv]) == 0
        lines = [x for x in capsys.readouterr().out.splitlines() if "AIME avg@16 eval" in x]
        return lines[0]

    r = next(x for x in estimate.RECIPES if x.file == "llada2-mini.yaml")
    assert r.dlm_cache and "KV cache" in eval_line()
    plain = eval_line("diffusion.cache=none")
    want = estimate.sampler_seconds(r.arch, dataclasses.replace(r, dlm_cache=False)) / 3600
    assert f"eval {want:.1f} h (block-causal sampler, blocks of 32, no cache)" in plain
    bidir = eval_line("diffusion.cache=none", "diffusion.attention=bidirectional")
    assert "bidirectional sampler" in bidir and "eval 18.9 h" in bidir  # the estimate before the cache existed
    fast = eval_line("diffusion.commit_threshold=0.9")
    assert f"{1 / estimate.THRESHOLD_FORWARDS_PER_TOKEN:.1f} tokens per forward" in fast
    # the arithmetic: a threshold scales the steps; the cache runs a block per step instead of the canvas
    slow, quick = (
        estimate.sampler_flops(r.arch, dataclasses.replace(r, dlm_cache=c, dlm_threshold=1.0)) for c in (False, True)
    )
    keys, blocks = estimate.PROMPT_TOKENS + r.gen_max / 2, r.gen_max / r.dlm_block  # block-causal: half the canvas
    assert slow / quick == pytest.approx(r.dlm_steps * keys / ((blocks + r.dlm_steps) * r.dlm_block))
