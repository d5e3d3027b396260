"""How the generation batch size changes evaluation time on this machine: greedy evaluation of the same prompts
with each model at each batch size, side by side in one process (run it alone: a second job distorts timings).

    python -m bench.eval_batch --data HELDOUT.jsonl MODEL_DIR [MODEL_DIR ...] [--batch 60 16 8] [--max-new-tokens 128]

HF `generate` keeps a finished row in its batch until the batch's longest row ends, so a batch costs about
rows x its longest response; smaller batches waste less on finished rows but use the CPU less well per row. Which
wins is measured, not assumed: on 2 cores of an AVX2 CPU (docs/experiment-sampled.md, "Time") the wide batch did
(SmolLM2-135M, 120 problems: 96 s at batch 60, 175 s at 16, 187 s at 8). Prints one row per model and batch size:
seconds, new tokens generated, tokens per second and accuracy (greedy decoding: the accuracy should not move with
the batch size beyond a rare float tie).
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from t3s.config import GenConfig, RenderConfig
    from t3s.data import load_rows
    from t3s.evaluate import evaluate_model, metrics
    from t3s.models import load_causal_lm, load_tokenizer, resolve_precision

    ap = argparse.ArgumentParser(prog="python -m bench.eval_batch", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", required=True, help="JSONL with prompt and answer")
    ap.add_argument("--batch", type=int, nargs="+", default=[60, 16, 8])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args(argv)
    rows = load_rows(args.data, need_response=False, need_answer=True)
    precision = resolve_precision("float32")
    print(
        f"{len(rows)} prompts, {torch.get_num_threads()} torch threads, cpu capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    print("| model | batch | seconds | new tokens | tokens/s | accuracy % |")
    print("|---|---|---|---|---|---|")
    for path in args.models:
        tok = load_tokenizer(path)
        model = load_causal_lm(path, precision)
        for b in args.batch:
            gcfg = dataclasses.replace(GenConfig(), max_new_tokens=args.max_new_tokens, batch_size=b)
            t0 = time.perf_counter()
            samples = evaluate_model(model, tok, rows, RenderConfig(), gcfg, precision, progress=False)
            sec = time.perf_counter() - t0
            m = metrics(samples)
            new = sum(s.tokens or 0 for s in samples)
            print(f"| {path} | {b} | {sec:.1f} | {new} | {new / sec:.0f} | {100 * m['accuracy']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
