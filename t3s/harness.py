"""Benchmarks through lm-evaluation-harness: `t3s eval --harness lm-eval --tasks gpqa_diamond_zeroshot,ifeval`.

The paper measures more than the training task: generalisation and forgetting on GPQA, MMLU-Pro, IFEval and
LiveCodeBench. Those benchmarks, with their prompts, filters and metrics, are lm-evaluation-harness's; t3s runs
the harness on a student (Hugging Face backend, the same precision rule as `t3s eval`, the chat template when
the student has one, as t3s renders prompts) and writes what `t3s eval` writes:

- `metrics.json`: `kind: t3s-eval`, the model and its fingerprint, `harness` (name, version, tasks, settings),
  `tasks` (per task: its main metric, value, standard error, samples, and every metric the harness reported)
  and `metrics` in `t3s eval`'s shape, where `accuracy` is the task's main metric (with several tasks, their
  mean; `accuracy_is` says so), `prompts` = `samples` = documents evaluated, `k` = 1;
- `samples.jsonl`: one line per document (`id` = TASK/DOC_ID, `response`, `target`, `score`, `correct`).

A task's main metric is the first one its configuration lists (exact_match for GSM8K, acc for multiple
choice); the harness's own filters (e.g. GSM8K's `strict-match`) decide which value that is: the first filter's.
Your own tasks: YAML files in a directory passed as `--include-path` (tests/test_harness.py has a tiny one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from t3s import T3SError, __version__
from t3s.artifacts import atomic_dir, write_json
from t3s.config import RenderConfig

HARNESSES = ("lm-eval",)


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise T3SError(
            "--harness lm-eval needs lm-evaluation-harness: pip install 't3s[harness]' (or lm-eval)"
        ) from None
    return lm_eval


def main_metric(result: dict[str, Any], listed: list[str]) -> tuple[str, float, float | None]:
    """(key, value, standard error) of a task's main metric in the harness's results: the first metric its
    configuration lists (`listed`; any reported metric when it lists none), under the first filter."""
    keys = [k for k in result if "," in k and "_stderr," not in k and isinstance(result[k], (int, float))]
    for name in listed:
        for k in keys:
            if k.split(",", 1)[0] == name:
                return k, float(result[k]), _stderr(result, k)
    if not keys:
        raise T3SError(f"the harness reported no metric for task {result.get('alias', '?')}")
    return keys[0], float(result[keys[0]]), _stderr(result, keys[0])


def _stderr(result: dict[str, Any], key: str) -> float | None:
    name, filt = key.split(",", 1)
    se = result.get(f"{name}_stderr,{filt}")
    return float(se) if isinstance(se, (int, float)) and math.isfinite(se) else None


def _listed(config: dict[str, Any]) -> list[str]:
    return [m["metric"] for m in config.get("metric_list") or [] if isinstance(m.get("metric"), str)]


def _response(sample: dict[str, Any]) -> Any:
    """What the model answered: the generated text, or for a likelihood task the index of its best choice."""
    resp = sample.get("filtered_resps")
    if isinstance(resp, list) and resp and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in resp):
        lls = [float(x[0]) for x in resp]  # (log-likelihood, is greedy) per choice
        return max(range(len(lls)), key=lambda i: lls[i]) if len(lls) > 1 else lls[0]
    if isinstance(resp, list) and len(resp) == 1:
        return resp[0]
    return resp


def run_harness(
    model_path: str,
    tasks: list[str],
    out: str | Path,
    *,
    include_path: str | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    dtype: str = "auto",
    render: RenderConfig | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run lm-evaluation-harness on `model_path` for `tasks` and write `out/metrics.json` and
    `out/samples.jsonl` (atomically). `render`: its `chat_template` (auto: when the tokenizer has one) and
    `system_prompt` apply, as when t3s renders prompts."""
    from t3s import dist
    from t3s.data import uses_template
    from t3s.models import device_info, load_tokenizer, model_fingerprint, resolve_model_path, resolve_precision

    if not tasks:
        raise T3SError("--harness lm-eval needs --tasks (comma-separated lm-evaluation-harness task names)")
    if dist.launched():
        raise T3SError(
            "t3s eval --harness runs as one process; for several GPUs use lm-eval's own launcher "
            "(accelerate launch -m lm_eval ...)"
        )
    if include_path is not None and not Path(include_path).is_dir():
        raise T3SError(f"--include-path {include_path}: no such directory")
    lm_eval = _lm_eval()
    if limit is not None and limit >= 1:
        limit = int(limit)  # the harness reads a limit below 1 as a fraction of each task
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise T3SError(
            f"lm-evaluation-harness has no task {', '.join(unknown)}"
            + (f" (nor {include_path})" if include_path else "; your own task YAML files: --include-path DIR")
        )
    precision = resolve_precision(dtype)
    tok = load_tokenizer(model_path, trust_remote_code)
    render = render or RenderConfig()
    chat_template = uses_template(tok, render)
    if log is not None:
        log(f"lm-evaluation-harness on {model_path}: {', '.join(tasks)} ({precision.name}, {precision.device})")
    lm = HFLM(
        pretrained=resolve_model_path(model_path),  # a `t3s train` directory works too (its model/)
        device=precision.device,
        dtype=str(precision.weights).removeprefix("torch."),
        mixed_precision_dtype=precision.autocast,  # a CPU with fast bf16: fp32 weights, bf16 autocast (t3s eval's rule)
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
    )
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        apply_chat_template=chat_template,
        system_instruction=render.system_prompt or None,
        log_samples=True,
    )
    per_task, lines = {}, []
    for name in tasks:
        result = results["results"].get(name)
        if result is None:
            raise T3SError(f"the harness returned no result for task {name}")
        key, value, se = main_metric(result, _listed(results["configs"].get(name, {})))
        n = results.get("n-samples", {}).get(name, {}).get("effective")
        per_task[name] = {
            "metric": key,
            "value": value,
            "stderr": se,
            "samples": n,
            "all": {k: v for k, v in result.items() if "," in k and isinstance(v, (int, float))},
        }
    for task, samples in results.get("samples", {}).items():
        listed = _listed(results["configs"].get(task, {}))
        metric = next((m for m in listed if samples and m in samples[0]), None)
        for s in samples:
            score = None if metric is None else float(s[metric])
            lines.append(
                {
                    "id": f"{task}/{s['doc_id']}",
                    "sample": 0,
                    "task": task,
                    "response": _response(s),
                    "target": s.get("target"),
                    "metric": metric,
                    "score": score,
                    "correct": None if score is None or score not in (0.0, 1.0) else score == 1.0,
                }
            )
    values = [t["value"] for t in per_task.values()]
    docs = sum(t["samples"] or 0 for t in per_task.values()) or len(lines)
    accuracy = sum(values) / len(values)
    record = {
        "kind": "t3s-eval",
        "t3s_version": __version__,
        "model": str(model_path),
        "model_fingerprint": model_fingerprint(model_path),
        "data": f"lm-eval:{','.join(tasks)}",
        "harness": {
            "name": "lm-eval",
            "version": results.get("lm_eval_version"),
            "tasks": tasks,
            "include_path": include_path,
            "limit": limit,
            "num_fewshot": num_fewshot,
            "chat_template": chat_template,
            "n_shot": results.get("n-shot"),
        },
        "precision": precision.name,
        "device": device_info(precision.device),
        "tasks": per_task,
        "metrics": {
            "prompts": docs,
            "samples": docs,
            "k": 1,
            "accuracy": accuracy,
            "accuracy_is": per_task[tasks[0]]["metric"] if len(tasks) == 1 else "the mean of the tasks' main metrics",
            "pass_at_k": accuracy,
            "mean_tokens": None,
            "median_tokens": None,
            "no_answer_rate": None,
            "truncated_rate": None,
        },
    }
    with atomic_dir(out, overwrite) as tmp:
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        write_json(tmp / "metrics.json", record)
    return record


def format_tasks(record: dict[str, Any]) -> str:
    """One line per task: its main metric ± standard error over its documents."""
    out = []
    for name, t in record["tasks"].items():
        se = "" if t["stderr"] is None else f" ± {100 * t['stderr']:.2f}"
        out.append(f"{name}: {t['metric']} {100 * t['value']:.2f}%{se} over {t['samples']} documents")
    return "\n".join(out)
