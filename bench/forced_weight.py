"""What the loss weight of a forced position does to a masked-diffusion student's loss (docs/method.md).

    python -m bench.forced_weight              # about a minute on 2 CPU cores; prints a Markdown table
    python -m bench.forced_weight --smoke      # seconds (tests/test_bench.py)

On the tiny diffusion world (`t3s tiny --diffusion`: an AR selector and a ModernBERT student, both pretrained),
the selector's probe and scores give Δc (`t3s run` with `objective: diffusion`); forced sets are taken at τ = 0.2
and τ = 0 (the paper's two settings). With the pretrained student and no training, over many noise draws of the
llada schedule (t ~ U(ε, 1), randomly masked positions weighted 1/t), it measures for each choice of the forced
positions' weight (`diffusion.forced_weight`: `one` or `inverse_t`):
- the forced set's share of the loss (mean over draws),
- the spread of each row's loss across draws (standard deviation / mean, averaged over rows), relative to the
  same rows with no forced set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(student: str, rows_path: str, forced: dict[str, list[list[bool]]], draws: int, seed: int = 0) -> dict:
    """For each forced set (name -> per row, per response token) and weight: forced share of the loss, spread."""
    import numpy as np
    import torch

    from t3s.config import DiffusionConfig, RenderConfig
    from t3s.data import load_rows, render_rows
    from t3s.models import load_tokenizer, resolve_precision
    from t3s.objectives.diffusion import (
        Collator,
        build_mask,
        load_mask_predictor,
        mask_token_id,
        position_weights,
        predictor_logits,
    )

    fp32 = resolve_precision("float32")
    tok = load_tokenizer(student)
    model = load_mask_predictor(student, fp32).eval()
    mask_id = mask_token_id(model, tok)
    examples, _ = render_rows(load_rows(rows_path), tok, RenderConfig())
    sets = {"none": [[False] * len(e.response_ids) for e in examples], **forced}
    out: dict = {}
    for name, fs in sets.items():
        items = [
            {"input_ids": e.input_ids, "prompt_len": e.prompt_len, "row": i, "forced": f}
            for i, (e, f) in enumerate(zip(examples, fs))
        ]
        batch = Collator(tok.eos_token_id)(items)
        fraction = sum(map(sum, fs)) / sum(len(f) for f in fs)
        for weight in ("one", "inverse_t") if name != "none" else ("one",):
            cfg = DiffusionConfig(forced_weight=weight)
            per_row, shares = [], []
            for step in range(draws):
                mask, fmask, t, answer = build_mask(batch, cfg, seed, step)
                ids = batch["input_ids"]
                with torch.no_grad():
                    logits = predictor_logits(model, ids.masked_fill(mask, mask_id), None).float()
                ce = torch.zeros(mask.shape, dtype=torch.float64)
                ce[mask] = torch.nn.functional.cross_entropy(logits[mask], ids[mask], reduction="none").double()
                w = position_weights(mask, fmask, t, answer, cfg) * ce
                per_row.append(w.sum(1).numpy())
                shares.append(float(w[fmask].sum() / w.sum()) if fmask.any() else 0.0)
            rows = np.stack(per_row)  # draws x rows
            out[f"{name}/{weight}"] = {
                "forced_set": name,
                "forced_weight": weight,
                "forced_fraction": fraction,
                "forced_share_of_loss": float(np.mean(shares)),
                "row_loss_mean": float(rows.mean()),
                "row_loss_cv": float((rows.std(0) / rows.mean(0)).mean()),
                "batch_loss_cv": float(rows.mean(1).std() / rows.mean(1).mean()),
            }
    base = out["none/one"]["row_loss_cv"]
    for v in out.values():
        v["row_cv_vs_none"] = v["row_loss_cv"] / base
    return out


def forced_sets(work: Path, smoke: bool) -> tuple[str, str, dict[str, list[list[bool]]]]:
    """Build the tiny diffusion world, run the selector's probe and scores, and take the forced sets at τ = 0.2
    and τ = 0 from its Δc."""
    import yaml

    from t3s.config import load_config
    from t3s.objectives.masked import select_forced
    from t3s.pipeline import run
    from t3s.score import load_scores
    from t3s.tiny import build

    world = work / "tiny-dllm"
    if not (world / "dllm" / "config.json").exists():
        build(world, rows=16 if smoke else 64, diffusion=True, pretrain=not smoke, overwrite=True)
    cfg = yaml.safe_load((REPO / "examples" / "tiny-diffusion-run.yaml").read_text())
    cfg.update(
        student=str(world / "dllm"),
        selector=str(world / "model"),
        train_data=str(world / "train.jsonl"),
        modes=["t3s"],
        probe_student=False,
    )
    if smoke:
        cfg["train"]["max_steps"] = 2
        cfg["probe"].update(eval_every=1, subset=4)
        cfg["eval"]["max_new_tokens"] = 16
        cfg["diffusion"].update(block_length=8, steps=16)
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    summary, code = run(load_config(work / "run.yaml", [], flat=()), work / "run", progress=False)
    if code != 0:
        raise SystemExit(f"the tiny diffusion run stopped: {summary.get('stopped')}")
    init, bn = load_scores(work / "run" / "scores-init"), load_scores(work / "run" / "seed-0" / "scores-bottleneck")
    sets = {}
    for tau in (0.2, 0.0):
        sel = select_forced(init, bn, "t3s", tau)
        sets[f"tau={tau:g}"] = [[bool(x) for x in f] for f in sel.forced]
    return str(world / "dllm"), str(world / "train.jsonl"), sets


def table(res: dict) -> str:
    lines = [
        "| forced set | forced tokens | forced weight | forced share of the loss | row-loss spread (sd/mean) "
        "| vs no forced set |",
        "|---|---|---|---|---|---|",
    ]
    for v in res.values():
        lines.append(
            f"| {v['forced_set']} | {100 * v['forced_fraction']:.1f}% | {v['forced_weight']} | "
            f"{100 * v['forced_share_of_loss']:.1f}% | {v['row_loss_cv']:.2f} | {v['row_cv_vs_none']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.forced_weight", description=__doc__.split("\n")[0])
    ap.add_argument("--work", help="scratch directory (default: runs/forced-weight)")
    ap.add_argument("--draws", type=int, default=400, help="noise draws per setting")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, no pretraining (seconds)")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else REPO / "runs" / ("forced-weight-smoke" if args.smoke else "forced-weight")
    work.mkdir(parents=True, exist_ok=True)
    student, rows, sets = forced_sets(work, args.smoke)
    res = measure(student, rows, sets, 8 if args.smoke else args.draws)
    (work / "results.json").write_text(json.dumps(res, indent=1))
    print(table(res))
    print(
        f"\n(llada schedule, {8 if args.smoke else args.draws} noise draws, the pretrained tiny diffusion student; "
        f"raw: {work / 'results.json'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
