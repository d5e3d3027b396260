"""A masked-diffusion student through `t3s run` and the command line: the stages, their fingerprints, refusals."""

import json

import pytest

from t3s import T3SError
from t3s.config import load_config
from t3s.models import resolve_precision

FP32 = resolve_precision("float32")

FP32 = resolve_precision("float32")


# ----------------------------------------------------------------------------------------------- end to end


def test_tiny_diffusion_run_end_to_end(dtiny, tmp_path):
    import time

    from conftest import started

    from t3s.config import load_config
    from t3s.pipeline import plan_stages, run

    t0 = time.perf_counter()
    cfg = load_config(
        "examples/tiny-diffusion-run.yaml",
        [
            f"student={dtiny / 'dllm'}",
            f"selector={dtiny / 'model'}",
            f"train_data={dtiny / 'train.jsonl'}",
            "train.max_steps=4",
            "selector_train.max_steps=4",
            "probe.eval_every=2",
            "probe.subset=6",
            "eval.max_new_tokens=16",
            "diffusion.block_length=8",
            "diffusion.steps=8",
            "diffusion.tau=0.0",
        ],
        flat=(),
    )
    summary, code = run(cfg, tmp_path / "run", progress=False)
    assert code == 0
    assert time.perf_counter() - t0 < 180
    out = tmp_path / "run"
    assert started(out) == [k for k, _ in plan_stages(cfg)]  # `t3s run --plan` lists the stages the run took
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == ["base", "sft", "t3s", "random"]
    for m in ("sft", "t3s", "random"):
        metrics = json.loads((out / "seed-0" / "eval" / m / "metrics.json").read_text())["metrics"]
        assert rows[m]["accuracy"] == metrics["accuracy"] and rows[m]["mean_tokens"] == metrics["mean_tokens"]
        train = json.loads((out / "seed-0" / "train" / m / "train.json").read_text())
        assert train["objective"] == "diffusion" and train["global_step"] == 4
    for m in ("t3s", "random"):
        stats = json.loads((out / "seed-0" / "selections" / m / "selection.json").read_text())["stats"]
        assert rows[m]["forced_fraction"] == stats["forced_fraction"]
    t3s_stats = json.loads((out / "seed-0" / "selections" / "t3s" / "selection.json").read_text())["stats"]
    assert t3s_stats["forced_tokens"] > 0  # τ = 0: some tokens lose confidence on the way to θ_b
    assert "forced (always masked) tokens %" in summary["markdown"]
    assert json.loads((out / "seed-0" / "probe-student" / "probe.json").read_text())["objective"] == "diffusion"
    assert "Probe of the diffusion student itself" in summary["markdown"]
    assert not (out / "seed-0" / "rrt").exists()
    from t3s.report import build_report

    page = build_report(out, gradients=False, log=lambda m: None).read_text()
    assert "forced tokens %" in page


def test_command_line_diffusion_chain(dtiny, tmp_path):
    """score the selector at θ_0 and θ_b → select --forced → train the diffusion student (detected from its
    config) → eval with the sampler; an AR model refuses the forced set."""
    from conftest import t3s_here  # score, select, eval and the refusal in this process; training as commands
    from test_cli import t3s

    sel, stu, d = dtiny / "model", dtiny / "dllm", dtiny / "train.jsonl"
    r = t3s(
        "train",
        "--model",
        sel,
        "--data",
        d,
        "--out",
        tmp_path / "selector",
        "--quiet",
        "max_steps=3",
        "learning_rate=1e-2",
        "per_device_train_batch_size=4",
        "dtype=float32",
    )
    assert r.returncode == 0, r.stderr
    for name, model in (("s0", sel), ("sb", tmp_path / "selector")):
        r = t3s_here("score", "--model", model, "--data", d, "--out", tmp_path / name, "--quiet", "--dtype", "float32")
        assert r.returncode == 0, r.stderr
    r = t3s_here(
        "select",
        "--forced",
        "--init",
        tmp_path / "s0",
        "--bottleneck",
        tmp_path / "sb",
        "--mode",
        "t3s",
        "--tau",
        "0",
        "--student",
        stu,
        "--out",
        tmp_path / "forced",
    )
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "forced" / "selection.json").read_text())
    assert meta["objective"] == "diffusion" and not meta["projected"] and meta["stats"]["forced_tokens"] > 0
    assert "forced (always masked)" in r.stdout
    r = t3s(
        "train",
        "--model",
        stu,
        "--data",
        d,
        "--selection",
        tmp_path / "forced",
        "--out",
        tmp_path / "dtrain",
        "--quiet",
        "max_steps=2",
        "per_device_train_batch_size=4",
        "dtype=float32",
    )
    assert r.returncode == 0, r.stderr
    tr = json.loads((tmp_path / "dtrain" / "train.json").read_text())
    assert tr["objective"] == "diffusion" and tr["forced_tokens"] == meta["stats"]["forced_tokens"]
    r = t3s_here(
        "eval",
        "--model",
        tmp_path / "dtrain",
        "--data",
        d,
        "--out",
        tmp_path / "ev",
        "--quiet",
        "max_new_tokens=16",
        "diffusion.block_length=8",
        "dtype=float32",
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["diffusion"]["block_length"] == 8 and ev["metrics"]["mean_tokens"] is not None
    samples = [json.loads(x) for x in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert all(s["tokens"] <= 16 for s in samples)
    r = t3s_here(
        "train",
        "--model",
        sel,
        "--data",
        d,
        "--selection",
        tmp_path / "forced",
        "--out",
        tmp_path / "bad",
        "--quiet",
        "max_steps=1",
    )
    assert r.returncode == 2 and "forced set for a masked-diffusion student" in r.stderr
    assert not (tmp_path / "bad" / "model").exists()


def test_vllm_with_a_diffusion_student_is_refused_before_any_work(dtiny, tmp_path):
    from t3s.cli import main
    from t3s.objectives import objective_for

    def run_config(*keys):  # the student's objective checks the run (Objective.check)
        return objective_for(load_config(None, ["objective=diffusion", "selector=s", *keys], flat=()))

    with pytest.raises(T3SError, match="eval.backend=vllm .*masked-diffusion student"):
        run_config("modes=[sft,t3s]", "eval.backend=vllm")
    with pytest.raises(T3SError, match="probe.backend=vllm .*probe_student"):
        run_config("modes=[sft]", "probe_student=true", "probe.backend=vllm")
    run_config("modes=[sft]", "probe.backend=vllm")  # the AR selector's probe may use vLLM
    with pytest.raises(T3SError, match="a diffusion student trains the modes sft, t3s, random; not dft"):
        run_config("modes=[sft,dft]")
    with pytest.raises(T3SError, match="needs `selector`"):
        objective_for(load_config(None, ["objective=diffusion"], flat=()))
    out = tmp_path / "e"
    assert (
        main(
            [
                "eval",
                "--model",
                str(dtiny / "dllm"),
                "--data",
                str(dtiny / "train.jsonl"),
                "--out",
                str(out),
                "--backend",
                "vllm",
                "--quiet",
            ]
        )
        == 2
    )
    assert not out.exists()
    assert (
        main(
            [
                "probe",
                "--model",
                str(dtiny / "dllm"),
                "--data",
                str(dtiny / "train.jsonl"),
                "--out",
                str(tmp_path / "p"),
                "--quiet",
                "probe.backend=vllm",
            ]
        )
        == 2
    )
    assert not (tmp_path / "p").exists()


def test_a_setting_reruns_only_the_stages_that_read_it(dtiny, tmp_path):
    """Each stage's fingerprint holds the settings it reads: a sampler setting (diffusion.steps) re-runs only the
    stages that sample (evaluations, the student's own probe), τ only the selections and what follows them, a
    loss setting the trainings (and the student's probe, which trains) and what follows them; the AR selector's
    probe and the scores never."""
    import re

    from t3s.config import load_config
    from t3s.ledger import train_inputs
    from t3s.objectives import objective_for
    from t3s.pipeline import run

    overrides = [
        f"student={dtiny / 'dllm'}",
        f"selector={dtiny / 'model'}",
        f"train_data={dtiny / 'train.jsonl'}",
        "modes=[sft,t3s]",
        "train.max_steps=2",
        "selector_train.max_steps=2",
        "probe.eval_every=1",
        "probe.subset=4",
        "eval.max_new_tokens=8",
        "diffusion.block_length=8",
        "diffusion.steps=8",
        "diffusion.tau=0.0",
    ]
    out = tmp_path / "run"

    def ran(*more: str) -> set[str]:
        overrides.extend(more)
        log = out / "run.log"
        before = log.read_text().count("\n") if log.exists() else 0
        summary, code = run(load_config("examples/tiny-diffusion-run.yaml", overrides, flat=()), out, progress=False)
        assert code == 0
        lines = log.read_text().splitlines()[before:]
        return {m.group(1) for line in lines if (m := re.search(r"\] (\S+): running$", line))}

    first = ran()
    assert {"seed-0/probe", "scores-init", "seed-0/train-sft", "seed-0/eval-t3s"} <= first
    samplers = {"eval-base", "seed-0/eval-sft", "seed-0/eval-t3s", "seed-0/probe-student"}
    assert ran("diffusion.steps=4") == samplers
    assert ran("diffusion.tau=0.1") == {"seed-0/select-t3s", "seed-0/train-t3s", "seed-0/eval-t3s"}
    assert ran("diffusion.forced_weight=inverse_t") == {
        "seed-0/probe-student",
        "seed-0/train-sft",
        "seed-0/train-t3s",
        "seed-0/eval-sft",
        "seed-0/eval-t3s",
    }
    assert ran() == set()

    # a tracked training samples along the way: then a sampler setting reaches it too
    def config(*keys):
        return load_config(None, ["objective=diffusion", "selector=s", "modes=[sft]", *keys], flat=())

    cfg, tracked = config(), config("probe.track_every=1")
    steps, untracked_steps = config("probe.track_every=1", "diffusion.steps=4"), config("diffusion.steps=4")
    fp = {
        name: train_inputs(c, objective_for(c), c.train)
        for name, c in (("cfg", cfg), ("tracked", tracked), ("steps", steps), ("untracked_steps", untracked_steps))
    }
    assert fp["cfg"] == fp["untracked_steps"] and fp["tracked"] != fp["steps"]
