"""The `t3s` command line: a thin layer over the stage modules."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from t3s import Interrupted, T3SError, __version__, dist
from t3s.artifacts import check_can_write, check_outside
from t3s.config import OBJECTIVE_SECTIONS
from t3s.modes import LOSS_MODES, SELECTION_MODES, TABLE

# Commands that split their work across processes under torchrun / accelerate launch; the others run on the
# main process while the rest wait.
DISTRIBUTED = ("score", "train", "probe", "eval")


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _overrides(args, section: str) -> list[str]:
    """Command-line overrides, with --dtype as a shortcut for SECTION.dtype."""
    extra = [f"{section}.dtype={args.dtype}"] if getattr(args, "dtype", None) else []
    return list(args.overrides) + extra


def cmd_tiny(args) -> None:
    from t3s.tiny import build

    out = build(
        args.out,
        rows=args.rows,
        seed=args.seed,
        overwrite=args.overwrite,
        diffusion=args.diffusion,
        pretrain=not args.no_pretrain,
    )
    extra = f", {out}/dllm (tiny ModernBERT mask predictor, same tokenizer)" if args.diffusion else ""
    print(f"wrote {out}/model (tiny Llama + tokenizer){extra} and {out}/train.jsonl ({args.rows} rows)")


def cmd_score(args) -> None:
    from t3s.config import load_config
    from t3s.score import run_score

    check_outside(args.out, model=args.model, data=args.data)
    cfg = load_config(args.config, _overrides(args, "score"), flat=("score", "render"))
    meta = run_score(
        args.model,
        args.data,
        args.out,
        cfg.render,
        cfg.score,
        split=args.split,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
        progress=_progress(args),
    )
    print(
        f"wrote {args.out}: {meta['rows']} rows, {meta['tokens']} response tokens, "
        f"mean log-prob {meta['mean_logprob']:.4f}"
    )


def cmd_select(args) -> None:
    from t3s.config import DiffusionConfig
    from t3s.modes import canonical, mode_of
    from t3s.objectives import Autoregressive, MaskedDiffusion
    from t3s.score import load_scores
    from t3s.select import summary_line, write_selection

    mode = canonical(args.mode)
    if mode in LOSS_MODES:  # listed among the choices so that a user who tries one is told where it lives
        how = "trainer.loss_type=dft" if mode_of(mode).trainer else f"loss={mode}"
        raise T3SError(
            f"{mode} selects no tokens: it reweights every token per step from the model being trained; train with "
            f"`t3s train ... {how}`, or add {mode} to the modes of `t3s run`"
        )
    check_can_write(args.out, args.overwrite)
    check_outside(
        args.out,
        init=args.init,
        bottleneck=args.bottleneck,
        reference=args.reference,
        data=args.data,
        student=args.student,
    )
    init, bottleneck = load_scores(args.init), load_scores(args.bottleneck)
    reference = load_scores(args.reference) if args.reference else None
    # the objective's own selection: a keep-mask for an autoregressive student, with --forced a forced set
    if args.forced and args.tau < 0:
        raise T3SError(f"--tau must be >= 0, got {args.tau}")
    objective = MaskedDiffusion(DiffusionConfig(tau=args.tau)) if args.forced else Autoregressive()
    selecting = [m for m in objective.modes if mode_of(m).selects]
    if mode != "sft" and mode not in selecting or args.forced and mode == "sft":
        raise T3SError(f"{'--forced' if args.forced else 'a keep-mask'} takes --mode {', '.join(selecting)}")
    sel = objective.select(
        init,
        bottleneck,
        mode,
        threshold=args.threshold,
        seed=args.seed,
        bottleneck_step=args.bottleneck_step,
        reference=reference,
        project=_projection(args, init) if args.forced and args.student else None,
    )
    write_selection(sel, args.out, args.overwrite)
    print(f"wrote {args.out}: {summary_line(sel.meta)}")


def _projection(args, init):
    """Projection onto --student's tokens when its tokenizer differs from the selector's (the scored model's)."""
    from t3s.config import load_config
    from t3s.data import load_rows, tokenizer_fingerprint
    from t3s.models import load_tokenizer
    from t3s.objectives.projection import projector

    stu = load_tokenizer(args.student)
    if tokenizer_fingerprint(stu) == init.meta["fingerprints"]["tokenizer"]:
        return None
    if not args.data:
        raise T3SError(
            "the student's tokenizer differs from the selector's: pass --data (the scored training rows) "
            "so Δc can be projected onto the student's tokens"
        )
    rcfg = load_config(args.config, [], flat=("render",)).render
    return projector(load_rows(args.data), stu, load_tokenizer(init.meta["model"]), rcfg)


def cmd_train(args) -> None:
    from t3s.config import load_config
    from t3s.objectives import objective_of
    from t3s.train import train

    cfg = load_config(args.config, _overrides(args, "train"), flat=("train", "render", *OBJECTIVE_SECTIONS))
    objective = objective_of(args.model, cfg, cfg.train.trust_remote_code)
    s = train(
        args.model,
        args.data,
        args.out,
        cfg.train,
        cfg.render,
        args.selection,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=_progress(args),
        objective=objective,
    )
    print(
        f"wrote {args.out}/model: {s['global_step']} steps, mean train loss {s['train_loss']:.4f}, "
        f"{objective.trained_on(s)}, {s['train_seconds']:.1f}s"
        + (f"; DIVERGED (loss {s['diverged']['loss']:.4g} at step {s['diverged']['step']})" if s["diverged"] else "")
    )


def cmd_eval(args) -> None:
    from t3s.config import load_config
    from t3s.evaluate import format_metrics, grade, load_responses, write_eval

    backend = [f"eval.backend={args.backend}"] if args.backend else []
    cfg = load_config(args.config, _overrides(args, "eval") + backend, flat=("eval", "render", *OBJECTIVE_SECTIONS))
    gcfg, rcfg = cfg.eval, cfg.render
    if args.harness:
        return _eval_harness(args, gcfg, rcfg)
    if args.tasks or args.include_path or args.limit is not None or args.num_fewshot is not None:
        raise T3SError("--tasks, --include-path, --limit and --num-fewshot go with --harness lm-eval")
    if args.responses:
        if args.model or args.data:
            raise T3SError("--responses grades a file of responses; do not pass --model or --data with it")
        samples = grade(load_responses(args.responses), gcfg.fallback, gcfg.grader)
        out = args.out or f"runs/eval/{Path(args.responses).stem}-graded"
        check_outside(out, responses=args.responses)
        meta = {"responses": str(args.responses), "fallback": gcfg.fallback, "grader": gcfg.grader}
        m = dist.on_main(lambda: write_eval(out, samples, meta, args.overwrite))  # the others wait for it
    else:
        if not (args.model and args.data):
            raise T3SError("pass --model and --data (or --responses FILE to grade pre-generated responses)")
        from t3s.data import load_rows
        from t3s.evaluate import run_eval
        from t3s.objectives import objective_of

        out = args.out or f"runs/eval/{Path(args.model).name}-{Path(args.data).stem}"
        check_can_write(out, args.overwrite)
        check_outside(out, model=args.model, data=args.data)
        objective = objective_of(args.model, cfg, args.trust_remote_code)
        rows = load_rows(args.data, args.split, need_response=False, need_answer=True)
        m = run_eval(
            args.model,
            rows,
            out,
            gcfg,
            rcfg,
            objective,
            data=args.data,
            trust_remote_code=args.trust_remote_code,
            overwrite=args.overwrite,
            progress=_progress(args),
            log=(lambda msg: print(msg, file=sys.stderr)) if _progress(args) else None,
        )
    print(f"{format_metrics(m['metrics'])}\nwrote {out}/samples.jsonl and {out}/metrics.json")


def _eval_harness(args, gcfg, rcfg) -> None:
    """t3s eval --harness lm-eval: benchmarks through lm-evaluation-harness (t3s.harness)."""
    from t3s.harness import format_tasks, run_harness

    if args.responses or args.data:
        raise T3SError("--harness evaluates the harness's own tasks: pass --model and --tasks, not --data/--responses")
    if not args.model:
        raise T3SError("--harness lm-eval needs --model")
    if gcfg.backend != "hf":
        raise T3SError("--harness runs the Hugging Face backend; for vLLM use lm-eval's own `--model vllm`")
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    out = args.out or f"runs/eval/{Path(args.model).name}-lm-eval"
    check_can_write(out, args.overwrite)
    check_outside(out, model=args.model)
    record = run_harness(
        args.model,
        tasks,
        out,
        include_path=args.include_path,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=gcfg.batch_size,
        dtype=gcfg.dtype,
        render=rcfg,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
        log=(lambda msg: print(msg, file=sys.stderr)) if _progress(args) else None,
    )
    print(f"{format_tasks(record)}\nwrote {out}/samples.jsonl and {out}/metrics.json")


def cmd_probe(args) -> None:
    from t3s.config import load_config
    from t3s.objectives import objective_of
    from t3s.probe import run_probe

    cfg = load_config(
        args.config, _overrides(args, "train"), flat=("probe", "train", "render", "eval", *OBJECTIVE_SECTIONS)
    )
    model, data = args.model or cfg.student, args.data or cfg.train_data
    if not (model and data):
        raise T3SError("pass --model and --data (or a --config with student and train_data)")
    check_can_write(args.out, args.overwrite)
    check_outside(args.out, model=model, data=data, eval_data=args.eval_data or cfg.eval_data)
    objective = objective_of(model, cfg, cfg.train.trust_remote_code)
    objective.check_backend(cfg.probe.backend, "probe.backend")  # before any work
    s = run_probe(
        model,
        data,
        args.out,
        cfg,
        heldout_path=args.eval_data or cfg.eval_data,
        overwrite=args.overwrite,
        progress=_progress(args),
        objective=objective,
    )
    if s["dip_found"]:
        print(
            f"bottleneck at step {s['bottleneck_step']}: training accuracy {100 * s['start_accuracy']:.1f}% -> "
            f"{100 * s['bottleneck_accuracy']:.1f}% (dip of {100 * s['dip_depth']:.1f} points)"
        )
    else:
        print(s["message"])
    print(
        f"wrote {args.out}: trajectory.jsonl, trajectory.png, probe.json"
        + (", bottleneck/" if s["bottleneck_step"] is not None else "")
        + (", final/" if s["completed"] else "")
    )


# `t3s run` flags that are shortcuts for `launch.KEY=VALUE`
LAUNCH_FLAGS = {
    "launcher": "launcher",
    "num_processes": "num_processes",
    "accelerate_config": "config_file",
    "nodes": "nodes",
    "main_address": "main_address",
    "main_port": "main_port",
}


def cmd_run(args) -> int:
    from t3s.pipeline import main_run

    launch = [f"launch.{key}={getattr(args, flag)}" for flag, key in LAUNCH_FLAGS.items() if getattr(args, flag)]
    return main_run(
        args.config,
        args.out,
        list(args.overrides) + launch,
        args.force or [],
        _progress(args),
        stage=args.stage,
        plan=args.plan,
        verdict=args.verdict,
    )


def cmd_report(args) -> None:
    from t3s.report import build_report

    path = build_report(args.run_dir, gradients=not args.no_gradients)
    print(f"wrote {path} (open it in a browser) and its PNGs in {path.parent}")


def cmd_testbed(args) -> None:
    from t3s.testbed import CarryWorldConfig, WorldConfig, build_world

    kind = CarryWorldConfig if args.world == "carry" else WorldConfig
    build_world(
        args.out,
        kind(seed=args.seed, pretrain_dtype=args.pretrain_dtype),
        overwrite=args.overwrite,
        progress=_progress(args),
        rebuild=args.rebuild,
    )
    print(f"run the method on it: t3s run {args.out}/run.yaml")


def cmd_rrt(args) -> None:
    from t3s.rrt import rrt

    check_outside(args.out, init=args.init, bottleneck=args.bottleneck, final=args.final)
    info = rrt(
        args.init,
        args.bottleneck,
        args.final,
        args.out,
        overwrite=args.overwrite,
        max_shard_bytes=int(args.max_shard_gb * 1024**3),
        progress=_progress(args),
    )
    print(f"wrote {args.out}: init + (final - bottleneck) over {info['tensors']} tensors")


def cmd_traces(args) -> int:
    from t3s.traces import format_summary, load_traces_config, run_traces

    check_outside(args.out, model=args.model, data=args.data)
    cfg, rcfg = load_traces_config(args.config, _overrides(args, "traces"))
    if args.base_url:
        cfg = dataclasses.replace(cfg, base_url=args.base_url)
    m = run_traces(
        args.data,
        args.out,
        cfg,
        rcfg,
        args.model,
        split=args.split,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
        progress=_progress(args),
    )
    print(format_summary(m["summary"]))
    kept = m["summary"]["rows"]
    print(f"wrote {args.out}: " + (f"train.jsonl ({kept} rows), " if kept else "") + "samples.jsonl, traces.json")
    return 0 if m["summary"]["complete"] else 3


def _threshold(text: str):
    """--threshold: a number or auto (argparse reports a bad value as a usage error)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or auto, not {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"a finite number or auto, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t3s", description="Training-Trajectory-Aware Token Selection (T3S)")
    p.add_argument("--version", action="version", version=f"t3s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def dtype_flag(sp) -> None:
        sp.add_argument("--dtype", help="auto | float32 | bfloat16 | float16 (GPU only); default auto")

    def common(sp, out_help: str) -> None:
        sp.add_argument("--out", required=True, help=out_help)
        sp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    sp = sub.add_parser("tiny", help="build the built-in tiny model, tokenizer and data set")
    common(sp, "directory to create (model/ and train.jsonl)")
    sp.add_argument("--rows", type=int, default=64, help="training rows to generate")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument(
        "--diffusion",
        action="store_true",
        help="also a tiny masked-diffusion student (dllm/) sharing the tokenizer; model/ is its selector; "
        "both are pretrained to answer tersely, so SFT on train.jsonl shows a shock (≈ 30 s)",
    )
    sp.add_argument("--no-pretrain", action="store_true", help="--diffusion: keep both models at random weights")
    sp.set_defaults(fn=cmd_tiny)

    sp = sub.add_parser("score", help="teacher-forced log-probabilities of every response token")
    sp.add_argument("--model", required=True, help="HF model directory, t3s train output, or hub id")
    sp.add_argument("--data", required=True, help=".jsonl, .parquet or saved HF dataset directory")
    common(sp, "score directory to write")
    sp.add_argument("--config", help="YAML config (its rendering keys are used)")
    sp.add_argument("--split", help="split of a saved DatasetDict (default: train)")
    dtype_flag(sp)
    sp.add_argument("--trust-remote-code", action="store_true")
    sp.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dtype, batch_tokens, max_batch, chunk_tokens, check, and rendering keys (max_length=2048)",
    )
    sp.set_defaults(fn=cmd_score)

    sp = sub.add_parser("select", help="Δc = c(θ_b) − c(θ_0) and the keep-mask of a training mode")
    sp.add_argument("--init", required=True, help="scores of θ_0 (t3s score output)")
    sp.add_argument("--bottleneck", required=True, help="scores of θ_b")
    sp.add_argument(
        "--mode",
        required=True,
        choices=[*SELECTION_MODES, "sft", "none", *LOSS_MODES],
        help=f"{', '.join(m.name for m in TABLE if m.selects and m.delta != 'bottleneck')}: the t3s rule, with "
        "θ_T's (or another checkpoint's) scores as "
        "--bottleneck; excess-loss: also --reference (θ_T's scores)",
    )
    common(sp, "selection directory to write")
    sp.add_argument(
        "--threshold",
        type=_threshold,
        default=0.0,
        help="anchors are tokens with Δc > threshold; auto: 0, with tokens near-certain at both "
        "checkpoints in neither group",
    )
    sp.add_argument("--reference", help="excess-loss: scores of the reference model θ_T (the SFT end point)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random mode")
    sp.add_argument("--bottleneck-step", type=int, help="record this step (default: read from the checkpoint)")
    sp.add_argument(
        "--forced",
        action="store_true",
        help="diffusion students: the forced set (always masked) Δc < −tau instead of a keep-mask; modes t3s or random",
    )
    sp.add_argument("--tau", type=float, default=0.2, help="--forced: the forced set is Δc < −tau")
    sp.add_argument(
        "--student",
        help="--forced: the diffusion student; when its tokenizer differs from the "
        "selector's, Δc is projected onto its tokens (needs --data)",
    )
    sp.add_argument("--data", help="--student with another tokenizer: the training rows that were scored")
    sp.add_argument("--config", help="--student with another tokenizer: rendering keys")
    sp.set_defaults(fn=cmd_select)

    sp = sub.add_parser(
        "train",
        help="fine-tune with a selection applied (AR: labels, TRL SFTTrainer; diffusion students: forced masks)",
    )
    sp.add_argument("--model", required=True, help="student to start from (θ_0)")
    sp.add_argument("--data", required=True, help="training rows")
    common(sp, "run directory (model/ is the trained model)")
    sp.add_argument("--selection", help="t3s select output; none = plain SFT on every response token")
    sp.add_argument("--config", help="YAML config (training and rendering keys)")
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    dtype_flag(sp)
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. learning_rate=1e-5")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("probe", help="SFT with periodic evaluation: the trajectory and the bottleneck")
    sp.add_argument("--model", help="student θ_0 (default: the config's student)")
    sp.add_argument("--data", help="training rows with gold answers (default: the config's train_data)")
    sp.add_argument("--eval-data", help="held-out rows with gold answers (optional)")
    common(sp, "probe directory to write")
    sp.add_argument("--config", help="run config (YAML)")
    dtype_flag(sp)
    sp.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="probe, train, render and eval keys, e.g. eval_every=5 learning_rate=1e-5",
    )
    sp.set_defaults(fn=cmd_probe)

    sp = sub.add_parser("eval", help="generate, extract final answers, check them with math-verify")
    sp.add_argument("--model", help="model to evaluate")
    sp.add_argument("--data", help="rows with prompt and answer")
    sp.add_argument("--responses", help="grade this file of pre-generated responses (response, answer, id)")
    sp.add_argument("--out", help="directory for samples.jsonl and metrics.json (default: runs/eval/...)")
    sp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.add_argument("--config", help="YAML config (its rendering keys are used)")
    sp.add_argument("--split", help="split of a saved DatasetDict (default: train)")
    dtype_flag(sp)
    sp.add_argument(
        "--backend",
        choices=["hf", "vllm"],
        help="generation engine: hf (default) or vllm (GPU only, `pip install vllm`; untested here)",
    )
    sp.add_argument("--trust-remote-code", action="store_true")
    sp.add_argument(
        "--harness",
        choices=["lm-eval"],
        help="run benchmarks through lm-evaluation-harness instead (pip install 't3s[harness]'): --model, --tasks",
    )
    sp.add_argument("--tasks", help="--harness: comma-separated task names (e.g. gpqa_diamond_zeroshot,ifeval)")
    sp.add_argument("--include-path", help="--harness: a directory of your own task YAML files")
    sp.add_argument("--limit", type=float, help="--harness: documents per task (a number, or a fraction below 1)")
    sp.add_argument("--num-fewshot", type=int, help="--harness: few-shot examples (default: each task's own)")
    sp.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="temperature, top_p, max_new_tokens, k, seed, batch_size, fallback, grader, dtype, rendering keys",
    )
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("run", help="the whole method from one config: probe, score, select, train, RRT, eval")
    sp.add_argument("config", help="run config (YAML); see examples/tiny-run.yaml")
    sp.add_argument("--out", help="run directory (default: runs/<config name>); rerun to resume")
    sp.add_argument(
        "--force",
        action="append",
        metavar="KIND",
        help="redo every stage of this kind and what depends on it: probe, score, select, train, rrt, "
        "eval (repeatable)",
    )
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.add_argument(
        "--plan",
        action="store_true",
        help="print the stages in order with the exact command of each, the launch, global batch, precision and "
        "(for a known model) the estimate; run nothing",
    )
    sp.add_argument(
        "--verdict",
        action="store_true",
        help="run the probes alone and say whether T3S is expected to pay on this run, with the numbers that decide "
        "it (verdict.md; a later full run reuses the probes)",
    )
    sp.add_argument(
        "--stage",
        metavar="ID",
        help="run this one stage (e.g. seed-0/probe; see --plan) after the stages before it; what `t3s run` "
        "starts under the launcher, and the manual fallback",
    )
    sp.add_argument(
        "--launcher",
        choices=["auto", "none", "torchrun", "accelerate"],
        help="= launch.launcher: run probe, score, train and eval under this launcher",
    )
    sp.add_argument("--num-processes", type=int, metavar="N", help="= launch.num_processes (over all nodes)")
    sp.add_argument("--accelerate-config", metavar="FILE", help="= launch.config_file (implies accelerate)")
    sp.add_argument("--nodes", type=int, metavar="N", help="= launch.nodes")
    sp.add_argument("--main-address", metavar="HOST", help="= launch.main_address (nodes > 1)")
    sp.add_argument("--main-port", type=int, metavar="PORT", help="= launch.main_port")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.learning_rate=1e-5 seeds=[0,1]")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("report", help="report.html (+ PNGs) for a t3s run directory")
    sp.add_argument("run_dir", help="a `t3s run` output directory")
    sp.add_argument("--no-gradients", action="store_true", help="skip the gradient analysis along the probe")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("testbed", help="the CPU testbed world where the imitation shock shows")
    tb = sp.add_subparsers(dest="testbed_command", required=True, metavar="ACTION")
    sp = tb.add_parser("build", help="build (or reuse) the world: a pretrained tiny student and teacher traces")
    common(sp, "world directory (reused when it holds a world of the same settings)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument(
        "--world",
        choices=["arithmetic", "carry"],
        default="arithmetic",
        help="arithmetic: world 1, the student adopts a new format (the demo); carry: world 2, the "
        "paper's regime, a step-by-step student close to the teacher's format (docs/testbed.md)",
    )
    sp.add_argument(
        "--rebuild",
        action="store_true",
        help="pretrain the student here instead of using the one shipped with t3s (minutes)",
    )
    sp.add_argument(
        "--pretrain-dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="precision of the student's pretraining (bfloat16: the shipped world; float32 builds "
        "another world, see docs/testbed.md)",
    )
    sp.set_defaults(fn=cmd_testbed)

    sp = sub.add_parser("rrt", help="recovering residual transfer: θ_0 + (θ_T − θ_b)")
    sp.add_argument("--init", required=True, help="θ_0 model directory")
    sp.add_argument("--bottleneck", required=True, help="θ_b model directory")
    sp.add_argument("--final", required=True, help="θ_T model directory")
    common(sp, "model directory to write")
    sp.add_argument("--max-shard-gb", type=float, default=2.0, help="largest output shard")
    sp.set_defaults(fn=cmd_rrt)

    sp = sub.add_parser("traces", help="training rows from a teacher: sample, grade, keep correct traces")
    sp.add_argument(
        "--model",
        required=True,
        help="teacher: local HF model directory or hub id, or with --base-url the endpoint's model name",
    )
    sp.add_argument("--data", required=True, help="prompts with gold answers (.jsonl, .parquet, saved dataset)")
    sp.add_argument(
        "--base-url", help="OpenAI-compatible endpoint (e.g. http://localhost:8000/v1); default: run --model locally"
    )
    common(sp, "traces directory (rerun the same command to resume; --overwrite starts over)")
    sp.add_argument("--config", help="YAML config (its traces and render sections are used)")
    sp.add_argument("--split", help="split of a saved DatasetDict (default: train)")
    dtype_flag(sp)
    sp.add_argument("--trust-remote-code", action="store_true")
    sp.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="samples, keep, few_shot, temperature, top_p, max_tokens, seed, select, fallback, teacher, batch_size, "
        "concurrency, timeout, retries, api_key_env, extra_body, rendering keys",
    )
    sp.set_defaults(fn=cmd_traces)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may follow options (`t3s run c.yaml --out x lr=1`): argparse leaves them unknown.
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = list(args.overrides) + extra
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    stage = getattr(args, "stage", None) if args.command == "run" else None
    if stage:  # one stage of a launched `t3s run`: its output goes to its own log file
        from t3s.launch import worker_output

        worker_output(stage)
    if dist.launched() and not dist.is_main():  # several processes: one set of messages and progress bars
        args.quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- for the life of the process
    if getattr(args, "quiet", False):
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    previous = _handle_sigterm()
    try:
        if dist.launched() and args.command in ("run", "testbed") and not stage:  # they start processes themselves
            raise T3SError(
                f"`t3s {args.command}` is the orchestrator: run it as one process, and give it the launcher instead "
                "(`t3s run CONFIG launch.num_processes=8`, or the `launch:` section: README, 'Scaling out'); under "
                "a launcher only `t3s run --stage ID` (one stage) runs"
            )
        if dist.launched() and args.command not in DISTRIBUTED and not stage:
            code = dist.on_main(lambda: args.fn(args))  # one process does it, the others wait
        else:
            code = args.fn(args)
    except Exception as e:
        # T3SError: a user-facing error; OSError (or a library's wrapped I/O error, such as a full disk while
        # safetensors writes): one line naming the path. Anything else is a bug: the traceback is shown.
        if os.environ.get("T3S_DEBUG") or not (isinstance(e, (T3SError, OSError)) or _os_errno(e)):
            raise
        rank = f"[rank {dist.rank()}] " if dist.launched() and not dist.is_main() else ""
        print(
            f"{rank}t3s {args.command}: error: {_message(e, args.command, getattr(args, 'out', None))}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt as e:
        sig = e.signal if isinstance(e, Interrupted) else "Ctrl-C"
        notes = getattr(e, "__notes__", None) or [RERUN.get(args.command, RERUN[None])]
        if args.command == "run":  # a stage's own advice (`--resume`) is not how a run goes on
            notes = [RERUN["run"]]
        print(f"t3s {args.command}: interrupted ({sig}); " + "; ".join(notes), file=sys.stderr)
        return 143 if sig == "SIGTERM" else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code or 0


def entry() -> None:
    """The `t3s` command and `python -m t3s`: `main`, then, when launched on several processes and successful, the
    exit all processes take together (`dist.finish`)."""
    code = main()
    if code == 0:
        dist.finish()
    raise SystemExit(code)


# What an interrupted command left, when the command itself added no note.
RERUN = {
    None: "nothing partial was written: rerun the command",
    "run": "finished stages are kept: rerun the same `t3s run` to resume",
    "traces": "finished samples are kept: rerun the same command to resume",
    "probe": "nothing was written: rerun the command (the probe starts again from step 0)",
}


def _handle_sigterm() -> Any:
    """A scheduler's pre-emption (SIGTERM) unwinds like Ctrl-C, so temporary directories are removed and the
    command says what it left. Returns the previous handler (None when not on the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Interrupted("SIGTERM")

    return signal.signal(signal.SIGTERM, handler)


def _os_errno(e: BaseException) -> int | None:
    """The OS error number of an OSError, or of a library's wrapped one (safetensors writes from Rust: 'I/O
    error: No space left on device (os error 28)')."""
    if isinstance(e, OSError):
        return e.errno
    m = re.search(r"\(os error (\d+)\)", str(e))
    return int(m.group(1)) if m else None


def _message(e: BaseException, command: str, out: str | None = None) -> str:
    """One line for a user-facing error; file-system errors name the path (a full disk says so), or at least the
    output directory being written when the library that failed does not say which file."""
    if isinstance(e, T3SError):
        return str(e) + "".join(f"; {n}" for n in getattr(e, "__notes__", []))
    where = f" ({e.filename})" if getattr(e, "filename", None) else f" (writing {out})" if out else ""
    code = _os_errno(e)
    if code in (errno.ENOSPC, errno.EDQUOT):
        text = "no space left on device"
    elif code == errno.EFBIG:
        text = "file too large (a file-size limit of this machine or job)"
    else:
        text = getattr(e, "strerror", None) or " ".join(str(e).split())
    notes = getattr(e, "__notes__", None) or [RERUN.get(command, RERUN[None])]
    return f"{text}{where}; " + "; ".join(notes)


if __name__ == "__main__":
    entry()
