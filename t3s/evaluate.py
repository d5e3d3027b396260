"""Stage 6: generate answers, grade them (t3s.graders: math-verify by default, or `eval.grader`), and report."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from t3s import T3SError, __version__, dist
from t3s.artifacts import atomic_dir, write_json
from t3s.config import GenConfig, RenderConfig
from t3s.graders import grader

if TYPE_CHECKING:
    from t3s.data import Row
    from t3s.models import Precision
    from t3s.objectives import Objective
# ----------------------------------------------------------------------------------------------- grading


@dataclass
class Response:
    """One response to grade: a generated one, or a row of a responses file (`t3s eval --responses`)."""

    id: str
    response: str
    answer: str
    tokens: int | None = None  # generated tokens (None: unknown)
    truncated: bool = False  # hit the generation budget without an end of sequence
    sample: int = 0  # which of the prompt's k samples


@dataclass
class Sample:
    id: str
    sample: int
    response: str
    extracted: str | None
    correct: bool
    tokens: int | None
    truncated: bool


def grade(responses: list[Response], fallback: str, spec: str = "math") -> list[Sample]:
    """Extract each response's final answer and check it against the gold one (`spec`: the grader, t3s.graders)."""
    check = grader(spec, fallback)
    out = []
    for r in responses:
        try:
            ans, ok = check(r.response, r.answer)
        except T3SError as e:
            raise T3SError(f"grading row {r.id}: {e}") from None
        out.append(Sample(r.id, r.sample, r.response, ans, ok, r.tokens, r.truncated))
    return out


def metrics(samples: list[Sample]) -> dict[str, Any]:
    by_id: dict[str, list[Sample]] = {}
    for s in samples:
        by_id.setdefault(s.id, []).append(s)
    toks = [s.tokens for s in samples if s.tokens is not None]
    k = max(len(v) for v in by_id.values())
    return {
        "prompts": len(by_id),
        "samples": len(samples),
        "k": k,
        "accuracy": sum(s.correct for s in samples) / len(samples),  # avg@k
        "pass_at_k": sum(any(s.correct for s in v) for v in by_id.values()) / len(by_id),
        "mean_tokens": statistics.fmean(toks) if toks else None,
        "median_tokens": statistics.median(toks) if toks else None,
        "no_answer_rate": sum(s.extracted is None for s in samples) / len(samples),
        "truncated_rate": sum(s.truncated for s in samples) / len(samples),
    }


def evaluate_model(
    model: Any,
    tok: Any,
    rows: list[Row],
    rcfg: RenderConfig,
    gcfg: GenConfig,
    precision: Precision,
    progress: bool = True,
    desc: str = "eval",
    objective: Objective | None = None,
    generator: Any = None,
) -> list[Sample]:
    """Generate for every row and grade. `objective` (default: autoregressive) says how the model generates (HF
    `generate`, or the diffusion sampler). `generator`: another backend with `generate`'s outputs
    (t3s.vllm_backend), called as generator(prompts, gcfg, progress, desc)."""
    from t3s.data import render_prompt, uses_template
    from t3s.objectives import as_objective

    if model is not None:  # NaN weights would generate garbage that grades as a plain 0%
        from t3s.models import check_finite_weights

        check_finite_weights(model, f"{desc}: the model", "its outputs would be garbage (a diverged training run?)")
    template = uses_template(tok, rcfg)
    prompts = [render_prompt(r, tok, rcfg, template)[0] for r in rows]
    if generator is not None:
        gens = generator(prompts, gcfg, progress, desc)
    else:
        gens = as_objective(objective).generate(model, tok, prompts, gcfg, precision, progress, desc)
    responses = [
        Response(r.id, x.text, r.answer, len(x.token_ids), x.truncated, j)
        for r, g in zip(rows, gens)
        for j, x in enumerate(g)
    ]
    return grade(responses, gcfg.fallback, gcfg.grader)


def run_eval(
    model_path: str,
    rows: list[Row],
    out: str | Path,
    gcfg: GenConfig,
    rcfg: RenderConfig,
    objective: Objective,
    *,
    data: str,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    desc: str = "eval",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The evaluation stage, for `t3s eval` and `t3s run` alike: load the model the objective's way (or start a
    vLLM engine for `backend: vllm`), generate for every row, grade, and write `out/samples.jsonl` and
    `out/metrics.json` (atomically; several processes: the main one writes). Returns the metrics record."""
    from t3s.models import describe, device_info, load_tokenizer, model_fingerprint, resolve_precision

    objective.check_backend(gcfg.backend, "eval.backend")  # before any work
    grader(gcfg.grader, gcfg.fallback)  # a user grader that does not import fails here, not after generating
    dist.state()  # several processes: join the group and pick this process's GPU before loading
    precision = resolve_precision(gcfg.dtype)
    if log is not None and gcfg.backend == "hf":
        log(describe(precision))
    tok = load_tokenizer(model_path, trust_remote_code)
    model, generator = None, None
    if gcfg.backend == "vllm":
        from t3s.vllm_backend import Engine

        generator = Engine(model_path, tok, gcfg, trust_remote_code)
    else:
        model = objective.load(model_path, precision, trust_remote_code)
    samples = evaluate_model(model, tok, rows, rcfg, gcfg, precision, progress, desc, objective, generator)
    meta = {
        "model": str(model_path),
        "model_fingerprint": model_fingerprint(model_path),
        "data": str(data),
        "generation": asdict(gcfg),
        "precision": precision.name,
        "device": device_info(precision.device),
        **objective.record(),
    }
    return dist.on_main(lambda: write_eval(out, samples, meta, overwrite))  # the others wait for it


def write_eval(out: str | Path, samples: list[Sample], meta: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    m = {"kind": "t3s-eval", "t3s_version": __version__, **meta, "metrics": metrics(samples)}
    with atomic_dir(out, overwrite) as tmp:
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
        write_json(tmp / "metrics.json", m)
    return m


def format_metrics(m: dict[str, Any]) -> str:
    tok = "" if m["mean_tokens"] is None else f", tokens mean {m['mean_tokens']:.1f} / median {m['median_tokens']:.0f}"
    return (
        f"accuracy (avg@{m['k']}) {100 * m['accuracy']:.2f}%, pass@{m['k']} {100 * m['pass_at_k']:.2f}% "
        f"over {m['prompts']} prompts{tok}, no answer {100 * m['no_answer_rate']:.1f}%, "
        f"cut off {100 * m['truncated_rate']:.1f}%"
    )


def load_responses(path: str | Path) -> list[Response]:
    """Rows of a pre-generated responses file: `response` and `answer` required; `id`, `tokens`, `truncated`
    optional (a prompt's samples are numbered in file order)."""
    from t3s.data import raw_rows

    out, count = [], {}
    for where, raw in raw_rows(Path(path), None):
        if not isinstance(raw, dict):
            raise T3SError(f"{where}: a row must be a JSON object")
        for key in ("response", "answer"):
            if key not in raw or raw[key] is None:
                raise T3SError(f"{where}: missing field '{key}'")
        if not isinstance(raw["response"], str):
            raise T3SError(f"{where}: field 'response' must be a string")
        if isinstance(raw["answer"], bool) or not isinstance(raw["answer"], (str, int, float)):
            raise T3SError(f"{where}: field 'answer' must be a string or a number")
        rid = str(raw.get("id", where))
        j = count[rid] = count.get(rid, -1) + 1
        ntok = raw.get("tokens") if isinstance(raw.get("tokens"), int) else None
        out.append(Response(rid, raw["response"], str(raw["answer"]), ntok, bool(raw.get("truncated", False)), j))
    if not out:
        raise T3SError(f"{path}: no rows")
    return out


def evaluator(
    rows: list[Row],
    data: str,
    gcfg: GenConfig,
    rcfg: RenderConfig,
    objective: Objective,
    *,
    trust_remote_code: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Callable[[str, str], Callable[[Path], dict[str, Any]]]:
    """For `t3s run`'s stage ledger: evaluator(model_path, name) is a stage function that evaluates the model on
    `rows` into the stage's directory (`run_eval`), logs one line and returns the metrics."""
    from t3s.models import describe, resolve_precision

    log(f"evaluation {describe(resolve_precision(gcfg.dtype))}")

    def make(model_path: str, name: str) -> Callable[[Path], dict[str, Any]]:
        def fn(path: Path) -> dict[str, Any]:
            m = run_eval(
                model_path,
                rows,
                path,
                gcfg,
                rcfg,
                objective,
                data=data,
                trust_remote_code=trust_remote_code,
                overwrite=True,
                progress=progress,
                desc=f"eval {name}",
            )
            log(f"{name}: {format_metrics(m['metrics'])}")
            return m["metrics"]

        return fn

    return make
