"""Stage 0: teacher traces. For every prompt with a gold answer, sample `samples` responses from a teacher, grade
each with `t3s eval`'s extraction and math-verify, and keep `keep` correct traces per prompt as training rows;
prompts with no correct trace are dropped (the paper: 16 samples at temperature 0.6, one correct kept at random).

What the teacher is asked can differ from what the student is trained on: `render.system_prompt` and `few_shot`
(worked examples, given as prior user/assistant turns) shape the teacher's voice when sampling only; every
training row holds the prompt as the data gave it.

A teacher is anything that turns a list of `Request`s into an iterator of `Result`s, in any order:
`hf_teacher` (a local Hugging Face model, `t3s eval`'s batched `generate` with one seed per sample) and
`openai_teacher` (an OpenAI-compatible chat-completions endpoint: vLLM, SGLang, `transformers serve`, hosted APIs).

The run directory is resumable: `samples.jsonl` gets one line per finished sample, flushed and fsync'd as it
arrives, so an interrupted run loses at most the samples in flight. A rerun skips every sample already there
(after checking that the inputs and settings are the same) and asks the teacher for the rest only; samples that
failed (connection errors after the retries, malformed responses) are recorded with their error and asked again
on the next run. `train.jsonl` and `traces.json` are rebuilt from `samples.jsonl` at the end of every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from t3s import T3SError, __version__
from t3s.artifacts import read_json, read_text, sha256_json, write_json
from t3s.config import FALLBACKS, RenderConfig, check_grader
from t3s.data import Row
from t3s.fields import check_fields
from t3s.graders import grader

SELECTIONS = ("random", "shortest")


@dataclass
class TracesConfig:
    """Settings of `t3s traces`. Sampling and grading settings are part of the run's fingerprint; the selection
    rule and the reasoning format only shape train.jsonl and may change between runs of one directory."""

    samples: int = field(default=16, metadata={"help": "responses sampled per prompt"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (0 = greedy, samples=1 only)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling (1 = off)"})
    max_tokens: int = field(default=32768, metadata={"help": "generation budget per response"})
    seed: int = field(default=0, metadata={"help": "base seed: each (prompt, sample) draws from its own seed"})
    select: str = field(default="random", metadata={"help": "random: correct traces at random | shortest"})
    keep: int = field(
        default=1,
        metadata={"help": "correct traces kept per prompt (rows `ID#SAMPLE` when > 1; fewer when fewer are correct)"},
    )
    few_shot: str | None = field(
        default=None,
        metadata={
            "help": "file of worked examples (prompt + response rows, as training data) given to the teacher as "
            "prior turns before every prompt; teacher side only, the training rows keep their own prompt"
        },
    )
    fallback: str = field(default="last_number", metadata={"help": "answer fallback: last_number | none"})
    grader: str = field(
        default="math",
        metadata={"help": "math | exact | choice | regex:PATTERN | module:function (as eval.grader; t3s/graders.py)"},
    )
    teacher: str | None = field(default=None, metadata={"help": "teacher name in every row (default: the model)"})
    reasoning_format: str = field(
        default="<think>\n{reasoning}\n</think>\n\n{content}",
        metadata={"help": "training response when the server returns reasoning apart"},
    )
    # local Hugging Face teacher
    batch_size: int = field(default=32, metadata={"help": "local teacher: sequences per generate() call"})
    dtype: str = field(default="auto", metadata={"help": "local teacher: auto | float32 | bfloat16 | float16"})
    # OpenAI-compatible endpoint
    base_url: str | None = field(default=None, metadata={"help": "endpoint, e.g. http://localhost:8000/v1"})
    api_key_env: str | None = field(
        default="OPENAI_API_KEY", metadata={"help": "environment variable holding the API key (unset: no key)"}
    )
    concurrency: int = field(default=8, metadata={"help": "endpoint: requests in flight at once"})
    timeout: float = field(default=3600.0, metadata={"help": "endpoint: seconds per request"})
    retries: int = field(default=5, metadata={"help": "endpoint: retries on connection errors, timeouts, 429, 5xx"})
    stop_after_failures: int = field(
        default=16,
        metadata={
            "help": "stop after this many failed samples in a row (the endpoint is down; rerun to resume); 0 = never"
        },
    )
    extra_body: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "endpoint: extra request fields, e.g. {top_k: 20}"}
    )

    def __post_init__(self) -> None:
        check_fields(self, "traces")
        if min(self.samples, self.max_tokens, self.batch_size, self.concurrency, self.keep) < 1:
            raise T3SError("samples, keep, max_tokens, batch_size and concurrency must be >= 1")
        if self.keep > self.samples:
            raise T3SError(f"keep ({self.keep}) cannot exceed samples ({self.samples})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise T3SError("temperature must be >= 0 and top_p in (0, 1]")
        if self.samples > 1 and self.temperature == 0:
            raise T3SError("samples > 1 need temperature > 0 (greedy samples would all be the same)")
        if self.select not in SELECTIONS:
            raise T3SError(f"select must be one of {SELECTIONS}, got '{self.select}'")
        if self.fallback not in FALLBACKS:
            raise T3SError(f"fallback must be one of {FALLBACKS}, got '{self.fallback}'")
        check_grader(self.grader)
        if self.retries < 0 or self.timeout <= 0 or self.stop_after_failures < 0:
            raise T3SError("retries and stop_after_failures must be >= 0 and timeout > 0")
        try:
            self.reasoning_format.format(reasoning="", content="")
        except (KeyError, IndexError, ValueError) as e:
            raise T3SError(f"reasoning_format may use only {{reasoning}} and {{content}} ({e!r})") from None
        if "{content}" not in self.reasoning_format:
            raise T3SError("reasoning_format must contain {content}")


def load_traces_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[TracesConfig, RenderConfig]:
    """The `traces` and `render` sections of a YAML file (other keys are ignored, so a run config can hold them),
    then KEY=VALUE overrides: bare keys of TracesConfig first, then RenderConfig; or `traces.KEY`, `render.KEY`."""
    import yaml

    from t3s.config import coerce, parse_override, parse_value

    classes = {"traces": TracesConfig, "render": RenderConfig}
    raw: dict[str, dict[str, Any]] = {"traces": {}, "render": {}}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            doc = parse_value(read_text(path)) or {}
        except (OSError, yaml.YAMLError) as e:
            raise T3SError(f"{path}: cannot read config ({e})") from None
        if not isinstance(doc, dict):
            raise T3SError(f"{path}: a config must be a mapping of keys to values")
        for name in raw:
            body = doc.get(name) or {}
            if not isinstance(body, dict):
                raise T3SError(f"{path}: section '{name}' must be a mapping")
            raw[name].update(body)
    names = {s: {f.name for f in dataclasses.fields(c)} for s, c in classes.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not key or len(parts) > 2:
            raise T3SError(f"override '{item}' is not KEY=VALUE (or traces.KEY=VALUE, render.KEY=VALUE)")
        if len(parts) == 1:
            section = next((s for s in classes if key in names[s]), None)
            if section is None:
                known = ", ".join(sorted(names["traces"] | names["render"]))
                raise T3SError(f"unknown key '{key}' (keys here: {known})")
            parts = [section, key]
        if parts[0] not in classes:
            raise T3SError(f"override '{item}': sections here are traces and render")
        raw[parts[0]][parts[1]] = parse_override(value)
    out = []
    for name, cls in classes.items():
        try:
            out.append(cls(**coerce(cls, raw[name], f"{where} [{name}]")))
        except TypeError as e:
            raise T3SError(f"{where} [{name}]: {e}") from None
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------- teachers


@dataclass
class Request:
    row: Row
    sample: int  # index among the prompt's samples
    seed: int  # this sample's own seed (sample_seed)


@dataclass
class Result:
    id: str
    sample: int
    text: str = ""  # the answer text: the whole response, or the content when reasoning comes apart
    reasoning: str | None = None  # reasoning the server returned separately (reasoning_content / reasoning)
    finish_reason: str | None = None  # stop | length | ...
    tokens: int | None = None  # completion tokens, when known
    error: str | None = None  # the sample failed: why


@dataclass
class Teacher:
    name: str  # recorded in every sample and training row
    identity: dict[str, Any]  # what the run fingerprint hashes about the teacher
    generate: Callable[[list[Request]], Iterator[Result]]


def sample_seed(seed: int, rid: str, sample: int) -> int:
    """A seed per (prompt, sample): a rerun draws the same sample whatever else is pending."""
    return int(hashlib.sha256(f"{seed}/{rid}/{sample}".encode()).hexdigest()[:8], 16)


def load_few_shot(path: str | None) -> list[Row]:
    """The worked examples of `few_shot` (none when unset); a bad file is one error naming it and its row."""
    from t3s.data import load_rows

    if path is None:
        return []
    if not Path(path).exists():
        raise T3SError(f"few_shot: {path} does not exist")
    shots = load_rows(path, need_response=True)
    if not shots:
        raise T3SError(f"few_shot: {path} holds no examples")
    return shots


def teacher_row(row: Row, shots: list[Row], rcfg: RenderConfig, template: bool = True) -> Row:
    """The row as the teacher is asked it: the worked examples before the prompt, as user/assistant turns after
    the system turn (with a chat template or an endpoint), or as `prompt separator response` blocks before the
    prompt (plain text). Without examples it is the row itself, so the system prompt applies as everywhere."""
    from t3s.data import prompt_messages

    if not shots:
        return row
    if template:
        turns: list[dict[str, str]] = []
        for s in shots:
            turns += [m for m in prompt_messages(s, RenderConfig()) if m["role"] != "system"]
            turns.append({"role": "assistant", "content": s.response or ""})
        msgs = prompt_messages(row, rcfg)
        head = 0
        while head < len(msgs) and msgs[head]["role"] == "system":
            head += 1
        return dataclasses.replace(row, prompt=msgs[:head] + turns + msgs[head:])
    for r in (*shots, row):
        if isinstance(r.prompt, list):
            raise T3SError(f"{r.where}: few-shot examples without a chat template need string prompts")
    blocks = "".join(f"{s.prompt}{rcfg.separator}{s.response}\n\n" for s in shots)
    return dataclasses.replace(row, prompt=blocks + str(row.prompt))


def hf_teacher(model: str | Path, cfg: TracesConfig, rcfg: RenderConfig, trust_remote_code: bool = False) -> Teacher:
    """A local Hugging Face model. Prompts are rendered as `t3s eval` renders them (chat template or plain);
    the model is loaded on the first request, so a finished directory needs no model load."""
    from t3s.config import GenConfig
    from t3s.data import render_prompt, template_fingerprint, think_prefill, tokenizer_fingerprint, uses_template
    from t3s.generation import generate
    from t3s.models import load_causal_lm, load_tokenizer, model_fingerprint, resolve_precision

    tok = load_tokenizer(model, trust_remote_code)
    template = uses_template(tok, rcfg)
    shots = load_few_shot(cfg.few_shot)
    precision = resolve_precision(cfg.dtype)
    identity = {
        "backend": "hf",
        "model": model_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tok),
        "template": template_fingerprint(tok, rcfg),
    }
    loaded: list[Any] = []

    def run(requests: list[Request]) -> Iterator[Result]:
        if not loaded:
            loaded.append(load_causal_lm(model, precision, trust_remote_code))
        rows = {r.row.id: r.row for r in requests}
        rendered = {
            rid: render_prompt(teacher_row(row, shots, rcfg, template), tok, rcfg, template)
            for rid, row in rows.items()
        }
        ids = {rid: p[0] for rid, p in rendered.items()}
        # what the generation prompt prefills (`<think>\n` for R1-distill, QwQ) is part of the trace: stored with
        # the generated text, so the row holds a whole think block for any student's template
        prefill = {rid: think_prefill(p[1]) for rid, p in rendered.items()}
        # longest prompts first, as `t3s eval` batches them; each row samples from its own seed
        order = sorted(requests, key=lambda r: (-len(ids[r.row.id]), r.row.id, r.sample))
        gcfg = GenConfig(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_tokens,
            k=1,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
        )
        for start in range(0, len(order), cfg.batch_size):
            chunk = order[start : start + cfg.batch_size]
            gens = generate(
                loaded[0],
                tok,
                [ids[r.row.id] for r in chunk],
                gcfg,
                precision,
                progress=False,
                row_seeds=[r.seed for r in chunk],
            )
            for r, (g,) in zip(chunk, gens):
                yield Result(
                    r.row.id,
                    r.sample,
                    prefill[r.row.id] + g.text,
                    None,
                    "length" if g.truncated else "stop",
                    len(g.token_ids),
                )

    name = cfg.teacher or Path(str(model).rstrip("/")).name
    return Teacher(name, identity, run)


def parse_completion(resp: Any) -> tuple[str, str | None, str | None, int | None]:
    """(content, reasoning, finish_reason, completion tokens) of a chat completion; ValueError when malformed.
    Reasoning returned apart is `reasoning_content` (DeepSeek API, SGLang, transformers serve) or `reasoning`
    (vLLM)."""
    try:
        choice = resp.choices[0]
        msg = choice.message
        extra = getattr(msg, "model_extra", None) or {}
        content = msg.content
        finish = choice.finish_reason
    except (AttributeError, IndexError, KeyError, TypeError) as e:
        raise ValueError(f"no choices[0].message in the response ({type(e).__name__}: {e})") from None
    reasoning = next((extra[k] for k in ("reasoning_content", "reasoning") if isinstance(extra.get(k), str)), None)
    if content is not None and not isinstance(content, str):
        raise ValueError(f"message content is a {type(content).__name__}, not text")
    if not content and not reasoning:
        raise ValueError(f"empty message (finish_reason {finish})")
    usage = getattr(resp, "usage", None)
    tokens = getattr(usage, "completion_tokens", None)
    return content or "", reasoning or None, finish, tokens if isinstance(tokens, int) else None


def openai_teacher(model: str, cfg: TracesConfig, rcfg: RenderConfig) -> Teacher:
    """An OpenAI-compatible chat-completions endpoint, one request per sample, `concurrency` in flight. Retries
    and backoff are the openai client's: connection errors, timeouts, 408/409/429 and 5xx are retried `retries`
    times with exponential backoff (0.5 s doubling, at most 8 s, Retry-After honoured). A sample that still fails,
    or comes back malformed, is returned with its error; a refused key or an unknown model stops the run."""
    try:
        import openai
    except ImportError:
        raise T3SError("an endpoint teacher needs the openai package (pip install openai)") from None
    from t3s.data import prompt_messages

    if not cfg.base_url:
        raise T3SError("an endpoint teacher needs base_url")
    if rcfg.template_kwargs or rcfg.chat_template != "auto":
        raise T3SError(
            "the endpoint applies its own chat template: pass template variables as "
            "extra_body={chat_template_kwargs: {...}} (vLLM, SGLang, transformers serve)"
        )
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    shots = load_few_shot(cfg.few_shot)

    def one(client: Any, req: Request) -> Result:
        res = Result(req.row.id, req.sample)
        try:
            resp = client.chat.completions.create(
                model=model,
                messages=prompt_messages(teacher_row(req.row, shots, rcfg), rcfg),
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_tokens,
                seed=req.seed,
                extra_body=cfg.extra_body or None,
            )
            res.text, res.reasoning, res.finish_reason, res.tokens = parse_completion(resp)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise T3SError(
                f"{cfg.base_url} refused the request ({e.status_code}): {e.message}"
                + (f"; is ${cfg.api_key_env} set?" if e.status_code in (401, 403) else "")
            ) from None
        except openai.APIStatusError as e:
            res.error = f"HTTP {e.status_code}: {e.message}"
        except (openai.APIConnectionError, openai.APITimeoutError) as e:  # after the client's retries
            res.error = (
                f"cannot reach {cfg.base_url} ({type(e).__name__}: {e}); is the server running, and is "
                "traces.base_url its address (http://HOST:PORT/v1)?"
            )
        except openai.APIError as e:  # undecodable bodies, other protocol errors
            res.error = f"{cfg.base_url}: {type(e).__name__}: {e}"
        except ValueError as e:
            res.error = f"malformed response: {e}"
        return res

    def run(requests: list[Request]) -> Iterator[Result]:
        # local servers take no key, but the client insists on one
        client = openai.OpenAI(
            base_url=cfg.base_url, api_key=key or "EMPTY", timeout=cfg.timeout, max_retries=cfg.retries
        )
        pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="t3s-traces")
        try:
            for fut in as_completed([pool.submit(one, client, r) for r in requests]):
                yield fut.result()
        finally:  # stopped early or interrupted: drop what is queued, cut what is in flight (no waiting)
            pool.shutdown(wait=False, cancel_futures=True)
            client.close()

    return Teacher(cfg.teacher or model, {"backend": "openai", "model": model}, run)


# ----------------------------------------------------------------------------------------------- selection


def usable(rec: dict[str, Any]) -> bool:
    """A sample that may become a training row: no error, answer correct, not cut off at max_tokens."""
    return rec.get("error") is None and bool(rec.get("correct")) and rec.get("finish_reason") != "length"


def training_response(rec: dict[str, Any], reasoning_format: str) -> str:
    """The training row's response: the reasoning returned apart (a reasoning parser) put in `reasoning_format`,
    or the text as generated, its think block completed (an endpoint without a reasoning parser returns
    `reasoning</think>answer` when its template prefilled the opener: `t3s.data.complete_think`)."""
    from t3s.data import complete_think

    if rec.get("reasoning") is None:
        return complete_think(rec["text"])
    return reasoning_format.format(reasoning=rec["reasoning"], content=rec["text"])


def choose(
    recs: list[dict[str, Any]], rule: str, seed: int, rid: str, reasoning_format: str, keep: int = 1
) -> list[dict[str, Any]]:
    """The kept samples of one prompt, in sample order: up to `keep` of the usable ones (none when no sample is
    usable). `random`: uniform without replacement, seeded by (seed, prompt id) so reruns agree; `shortest`: fewest
    completion tokens (characters of the training response when a token count is missing), ties to the lowest
    sample index."""
    ok = sorted((r for r in recs if usable(r)), key=lambda r: r["sample"])
    if not ok:
        return []
    if rule == "shortest":
        by_tokens = all(isinstance(r.get("tokens"), int) for r in ok)
        ranked = sorted(
            ok, key=lambda r: (r["tokens"] if by_tokens else len(training_response(r, reasoning_format)), r["sample"])
        )
        return sorted(ranked[:keep], key=lambda r: r["sample"])
    rng = random.Random(int(hashlib.sha256(f"{seed}/{rid}/select".encode()).hexdigest()[:16], 16))
    if keep == 1:  # one draw, as before `keep` existed: traces made then keep their selection
        return [ok[rng.randrange(len(ok))]]
    return sorted(rng.sample(ok, min(keep, len(ok))), key=lambda r: r["sample"])


def summarize(
    rows: list[Row], records: list[dict[str, Any]], cfg: TracesConfig, teacher: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Training rows, per-prompt statistics and totals from the sample records (the first success of a
    (prompt, sample) counts; its errors count only while it has no success)."""
    done: dict[tuple[str, int], dict[str, Any]] = {}
    failed: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        key = (r["id"], r["sample"])
        if r.get("error") is None:
            done.setdefault(key, r)
        else:
            failed[key] = r
    train, prompts = [], []
    for row in rows:
        recs = [done[(row.id, j)] for j in range(cfg.samples) if (row.id, j) in done]
        n_failed = sum((row.id, j) in failed and (row.id, j) not in done for j in range(cfg.samples))
        good = sum(usable(r) for r in recs)
        picks = choose(recs, cfg.select, cfg.seed, row.id, cfg.reasoning_format, cfg.keep)
        status = "kept" if picks else ("dropped" if len(recs) == cfg.samples else "incomplete")
        prompts.append(
            {
                "id": row.id,
                "finished": len(recs),
                "failed": n_failed,
                "correct": good,
                "solve_rate": good / len(recs) if recs else None,
                "status": status,
                "selected": [p["sample"] for p in picks],
            }
        )
        for pick in picks:
            train.append(
                {
                    # one row per kept trace: its own id, so a selection can tell the traces of one prompt apart
                    "id": row.id if cfg.keep == 1 else f"{row.id}#{pick['sample']}",
                    "prompt": row.prompt,
                    "response": training_response(pick, cfg.reasoning_format),
                    "answer": row.answer,
                    "teacher": teacher,
                    "sample": pick["sample"],
                }
            )
    rates = [p["solve_rate"] for p in prompts if p["solve_rate"] is not None]
    n = {s: sum(p["status"] == s for p in prompts) for s in ("kept", "dropped", "incomplete")}
    summary = {
        "prompts": len(rows),
        "samples_per_prompt": cfg.samples,
        **n,
        "rows": len(train),
        "samples_finished": sum(p["finished"] for p in prompts),
        "samples_failed": sum(p["failed"] for p in prompts),
        "mean_solve_rate": sum(rates) / len(rates) if rates else None,
        "complete": n["incomplete"] == 0 and all(p["finished"] == cfg.samples for p in prompts),
        # what went wrong last (it names the endpoint): the one line a stopped run ends with
        "last_error": next((r["error"] for r in reversed(records) if (r["id"], r["sample"]) not in done), None),
    }
    return train, prompts, summary


def format_summary(s: dict[str, Any]) -> str:
    rate = "n/a" if s["mean_solve_rate"] is None else f"{100 * s['mean_solve_rate']:.1f}%"
    line = (
        f"{s['prompts']} prompts x {s['samples_per_prompt']} samples: {s['kept']} kept, {s['dropped']} dropped "
        f"(no correct trace), mean solve rate {rate}"
    )
    if s.get("rows", s["kept"]) != s["kept"]:
        line += f"; {s['rows']} training rows (several traces per prompt)"
    if not s["complete"]:
        line += (
            f"; INCOMPLETE: {s['samples_failed']} failed and "
            f"{s['prompts'] * s['samples_per_prompt'] - s['samples_finished'] - s['samples_failed']} "
            f"unasked samples, {s['incomplete']} prompts undecided (rerun the same command to continue)"
        )
        if s.get("last_error"):
            line += f"; last error: {s['last_error']}"
    return line


# ----------------------------------------------------------------------------------------------- the run


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _read_samples(fh: Any, path: Path) -> list[dict[str, Any]]:
    """Every complete line of samples.jsonl; a partial last line (a run killed mid-write) is cut off."""
    fh.seek(0)
    data = fh.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        fh.truncate(end)
    out = []
    for n, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise T3SError(f"{path}:{n}: bad JSON ({e.msg}); the file is damaged") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not isinstance(rec.get("sample"), int):
            raise T3SError(f"{path}:{n}: not a sample record")
        out.append(rec)
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_traces(
    rows: list[Row],
    out: str | Path,
    cfg: TracesConfig,
    rcfg: RenderConfig,
    teacher: Teacher,
    data_name: str = "",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample what `out/samples.jsonl` lacks, then write `out/train.jsonl` and `out/traces.json`. Returns
    traces.json's content. Raises T3SError when `out` holds a run of other inputs or settings."""
    import fcntl

    from tqdm.auto import tqdm

    from t3s.data import data_fingerprint

    for r in rows:
        if r.answer is None:
            raise T3SError(f"{r.where}: missing field 'answer'")
    shots = load_few_shot(cfg.few_shot)
    out = Path(out)
    inputs = {
        "data": data_fingerprint(rows),
        "teacher": teacher.identity,
        "sampling": {
            "samples": cfg.samples,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
            "seed": cfg.seed,
            "system_prompt": rcfg.system_prompt,
            "extra_body": cfg.extra_body,
            # the examples' content, not their path (left out when unset: older runs keep their fingerprint)
            **({"few_shot": sha256_json([r.content() for r in shots])} if shots else {}),
        },
        # the default grader is left out: traces made before graders existed keep their fingerprint
        "grading": {"fallback": cfg.fallback, **({"grader": cfg.grader} if cfg.grader != "math" else {})},
    }
    fingerprint = sha256_json(inputs)
    grade = grader(cfg.grader, cfg.fallback)  # a user function that does not import fails here, before any sampling
    meta_path, samples_path = out / "traces.json", out / "samples.jsonl"
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists() and not out.is_dir():
        raise T3SError(f"{out} exists and is not a directory")
    fresh = out.exists() and all(p.name == "samples.jsonl" and p.stat().st_size == 0 for p in out.iterdir())
    if out.exists() and not fresh:  # an empty directory, or one killed before its first record, is fresh
        try:
            old = read_json(meta_path)
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict) or old.get("kind") != "t3s-traces":
            raise T3SError(f"{out} exists and is not a t3s traces directory; pass --overwrite to replace it")
        if old.get("fingerprint") != fingerprint:
            was, now = _flat(old.get("inputs", {})), _flat(inputs)
            diff = [
                f"{k}: {was.get(k)!r} -> {now.get(k)!r}"
                for k in sorted(set(was) | set(now))
                if was.get(k) != now.get(k)
            ]
            raise T3SError(
                f"{out} holds traces of other inputs or settings ({'; '.join(diff) or 'fingerprint'}); "
                "use another --out, or --overwrite to start over"
            )
    # sampling seconds of earlier invocations on this directory; None (unknown) for one made before they were kept
    earlier: float | None = 0.0
    if meta_path.exists() and not overwrite:
        try:
            earlier = read_json(meta_path).get("seconds")
        except (OSError, ValueError):
            earlier = None
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": "t3s-traces",
        "t3s_version": __version__,
        "status": "running",
        "fingerprint": fingerprint,
        "inputs": inputs,
        "data": data_name,
        "teacher": teacher.name,
        "settings": dataclasses.asdict(cfg),
        "render": dataclasses.asdict(rcfg),
        "seconds": earlier,  # until this invocation ends (a killed one's time is not counted)
    }
    gold = {r.id: r.answer for r in rows}
    with samples_path.open("a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise T3SError(f"{samples_path}: another t3s traces run is writing here") from None
        records = _read_samples(fh, samples_path)
        write_json(meta_path, meta)
        finished = {(r["id"], r["sample"]) for r in records if r.get("error") is None}
        pending = [
            Request(row, j, sample_seed(cfg.seed, row.id, j))
            for row in rows
            for j in range(cfg.samples)
            if (row.id, j) not in finished
        ]
        bar = tqdm(total=len(pending), unit="sample", desc="traces", disable=not progress, dynamic_ncols=True)
        in_a_row, failed_now = 0, 0
        results = teacher.generate(pending) if pending else iter(())
        t0 = time.perf_counter()
        try:
            for res in results:
                rec = {
                    "id": res.id,
                    "sample": res.sample,
                    "teacher": teacher.name,
                    "seed": sample_seed(cfg.seed, res.id, res.sample),
                    "text": res.text,
                    "reasoning": res.reasoning,
                    "finish_reason": res.finish_reason,
                    "tokens": res.tokens,
                    "extracted": None,
                    "correct": False,
                    "error": res.error,
                }
                if res.error is None:  # graded here, in the main thread (math-verify's timeouts need it)
                    rec["extracted"], rec["correct"] = grade(res.text, gold[res.id])
                fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
                records.append(rec)
                in_a_row = in_a_row + 1 if res.error else 0
                failed_now += res.error is not None
                bar.update(1)
                bar.set_postfix(failed=failed_now)
                if cfg.stop_after_failures and in_a_row >= cfg.stop_after_failures:
                    bar.write(f"t3s traces: {in_a_row} samples failed in a row, stopping (last error: {res.error})")
                    break
        finally:
            close = getattr(results, "close", None)
            if close:
                close()
            bar.close()
    train, prompts, summary = summarize(rows, records, cfg, teacher.name)
    meta.update(
        status="complete" if summary["complete"] else "incomplete",
        summary=summary,
        prompts=prompts,
        # wall seconds of sampling and grading, summed over invocations
        seconds=None if earlier is None else earlier + time.perf_counter() - t0,
    )
    if train:
        _write_jsonl(out / "train.jsonl", train)
    else:
        (out / "train.jsonl").unlink(missing_ok=True)
    write_json(meta_path, meta)
    if not train and summary["complete"]:
        raise T3SError(
            f"no prompt has a correct trace among {cfg.samples} samples: nothing to train on (see {meta_path})"
        )
    return meta


def run_traces(
    data: str | Path,
    out: str | Path,
    cfg: TracesConfig,
    rcfg: RenderConfig,
    model: str,
    split: str | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """`t3s traces`: prompts with gold answers in, `out/train.jsonl` out. The teacher is `model`: a local
    Hugging Face model, or, with `cfg.base_url`, the name of a model behind an OpenAI-compatible endpoint."""
    from t3s.data import load_rows

    rows = load_rows(data, split, need_response=False, need_answer=True)
    teacher = openai_teacher(model, cfg, rcfg) if cfg.base_url else hf_teacher(model, cfg, rcfg, trust_remote_code)
    return build_traces(rows, out, cfg, rcfg, teacher, str(data), overwrite, progress)
