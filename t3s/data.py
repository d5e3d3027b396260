"""Stage 1: training rows -> validated rows -> token ids with response labels.

A row is `{"prompt": str | [{"role", "content"}, ...], "response": str, "answer": str (optional),
"id": str (optional)}`. Rows come from JSONL, Parquet or a saved Hugging Face dataset directory. Rendering uses
the tokenizer's chat template (prompt as the user turn, response as the assistant turn) or, without a template,
plain concatenation; labels cover the response tokens only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from t3s import T3SError
from t3s.artifacts import sha256_json

OVERLONG_POLICIES = ("error", "truncate", "drop")


@dataclass
class Row:
    id: str
    prompt: str | list[dict[str, str]]
    response: str | None
    answer: str | None = None
    where: str = ""  # "file:line" or "file row N", for error messages

    def content(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "response": self.response, "answer": self.answer}


def stable_id(prompt: Any, response: str) -> str:
    """Id of a row without one: a hash of its content, stable across runs and machines."""
    return sha256_json({"prompt": prompt, "response": response})[:16]


def _check_row(raw: Any, where: str, need_response: bool = True, need_answer: bool = False) -> Row:
    def bad(msg: str) -> T3SError:
        return T3SError(f"{where}: {msg}")

    if not isinstance(raw, dict):
        raise bad(f"a row must be a JSON object, got {type(raw).__name__}")
    needed = ["prompt"] + (["response"] if need_response else []) + (["answer"] if need_answer else [])
    for key in needed:
        if key not in raw or raw[key] is None:
            raise bad(f"missing field '{key}'")
    prompt = raw["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise bad("field 'prompt' is empty")
    elif isinstance(prompt, list):
        if not prompt:
            raise bad("field 'prompt' is an empty list of messages")
        for i, m in enumerate(prompt):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise bad(f"prompt message {i} must be an object with string 'role' and 'content'")
            if not m["content"].strip():
                raise bad(f"prompt message {i} has empty 'content'")
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    else:
        raise bad(f"field 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
    response = raw.get("response")
    if response is not None or need_response:
        if not isinstance(response, str):
            raise bad(f"field 'response' must be a string, got {type(response).__name__}")
        if not response.strip():
            raise bad("field 'response' is empty")
    answer = raw.get("answer")
    if answer is not None:
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise bad(f"field 'answer' must be a string or a number, got {type(answer).__name__}")
        answer = str(answer)
        if not answer.strip():
            raise bad("field 'answer' is empty")
    rid = raw.get("id")
    if rid is None:
        rid = stable_id(prompt, response)
    else:
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise bad(f"field 'id' must be a string or an integer, got {type(rid).__name__}")
        rid = str(rid)
        if not rid.strip():
            raise bad("field 'id' is empty")
    return Row(id=rid, prompt=prompt, response=response, answer=answer, where=where)


def raw_rows(path: Path, split: str | None) -> list[tuple[str, Any]]:
    """(location, raw object) pairs from any supported source."""
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # not a saved dataset
            raise T3SError(f"{path}: not a saved Hugging Face dataset directory ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            name = split or ("train" if "train" in ds else None)
            if name not in ds:
                raise T3SError(f"{path}: choose a split with --split (available: {', '.join(ds)})")
            ds = ds[name]
        return [(f"{path} row {i + 1}", r) for i, r in enumerate(ds)]
    if not path.exists():
        raise T3SError(f"{path}: no such file or directory")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:
            raise T3SError(f"{path}: cannot read Parquet ({e})") from None
        return [(f"{path} row {i + 1}", r) for i, r in enumerate(table.to_pylist())]
    if path.suffix in (".jsonl", ".json"):
        out = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    out.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise T3SError(f"{path}:{lineno}: bad JSON ({e.msg} at column {e.colno})") from None
        return out
    raise T3SError(f"{path}: unsupported data format (use .jsonl, .parquet or a saved dataset directory)")


def load_rows(path: str | Path, split: str | None = None, *, need_response: bool = True,
              need_answer: bool = False) -> list[Row]:
    """Read and validate every row; the first problem raises one error naming the file and line (or row).
    Evaluation sets need `answer` but not `response`; training sets need `response`."""
    path = Path(path)
    rows, seen = [], {}
    for where, raw in raw_rows(path, split):
        row = _check_row(raw, where, need_response, need_answer)
        if row.id in seen:
            raise T3SError(f"{where}: duplicate id '{row.id}' (first seen at {seen[row.id]})")
        seen[row.id] = where
        rows.append(row)
    if not rows:
        raise T3SError(f"{path}: no rows")
    return rows


def data_fingerprint(rows: list[Row]) -> str:
    return sha256_json([r.content() for r in rows])


# ----------------------------------------------------------------------------------------------- rendering


@dataclass
class RenderConfig:
    """How rows become token ids. Part of every score/selection fingerprint."""

    chat_template: str = field(default="auto", metadata={"help": "auto | on | off: use the tokenizer's chat template"})
    system_prompt: str | None = field(default=None, metadata={"help": "system turn prepended to string prompts"})
    separator: str = field(default="\n", metadata={"help": "between prompt and response without a template"})
    add_eos: bool = field(default=True, metadata={"help": "append EOS to the response without a template"})
    template_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "extra chat-template variables"})
    max_length: int | None = field(default=None, metadata={"help": "max tokens per row (prompt + response)"})
    overlong: str = field(default="error", metadata={"help": "error | truncate | drop for rows over max_length"})

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG_POLICIES:
            raise T3SError(f"overlong must be one of {OVERLONG_POLICIES}, got '{self.overlong}'")
        if self.chat_template not in ("auto", "on", "off"):
            raise T3SError(f"chat_template must be auto, on or off, got '{self.chat_template}'")


@dataclass
class Example:
    """One rendered row: response tokens are input_ids[prompt_len:]."""

    id: str
    input_ids: list[int]
    prompt_len: int
    truncated: bool = False

    @property
    def response_ids(self) -> list[int]:
        return self.input_ids[self.prompt_len :]

    def labels(self) -> list[int]:
        return [-100] * self.prompt_len + self.response_ids


def uses_template(tokenizer: Any, cfg: RenderConfig) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if cfg.chat_template == "on" and not has:
        raise T3SError("chat_template=on but the tokenizer has no chat template")
    return has if cfg.chat_template == "auto" else cfg.chat_template == "on"


def _messages(row: Row, cfg: RenderConfig) -> list[dict[str, str]]:
    if isinstance(row.prompt, list):
        return list(row.prompt)
    msgs = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return msgs + [{"role": "user", "content": row.prompt}]


def render_prompt(row: Row, tokenizer: Any, cfg: RenderConfig, template: bool) -> tuple[list[int], str]:
    """Token ids of the prompt as the model sees it before its answer, and the same as text."""
    if template:
        msgs = _messages(row, cfg)
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **cfg.template_kwargs)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        if isinstance(row.prompt, list):
            raise T3SError(f"{row.where}: the prompt is a list of messages but no chat template is used")
        text = row.prompt + cfg.separator
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if not ids:
        raise T3SError(f"{row.where}: the prompt renders to no tokens")
    return list(ids), text


def render_row(row: Row, tokenizer: Any, cfg: RenderConfig, template: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids). The prompt and the response are tokenized separately at the boundary the
    template gives, so the response tokens are exactly the assistant turn (including its end-of-turn tokens)."""
    prompt_ids, prefix = render_prompt(row, tokenizer, cfg, template)
    if template:
        full = tokenizer.apply_chat_template(
            _messages(row, cfg) + [{"role": "assistant", "content": row.response}], tokenize=False,
            **cfg.template_kwargs,
        )
        if not full.startswith(prefix):
            raise T3SError(
                f"{row.where}: the chat template does not render the prompt as a prefix of prompt + response; "
                "render without it (chat_template=off) or fix the template"
            )
        response_ids = tokenizer(full[len(prefix) :], add_special_tokens=False)["input_ids"]
    else:
        response_ids = tokenizer(row.response, add_special_tokens=False)["input_ids"]
        if cfg.add_eos and tokenizer.eos_token_id is not None:
            response_ids = response_ids + [tokenizer.eos_token_id]
    if not response_ids:
        raise T3SError(f"{row.where}: the response renders to no tokens")
    return prompt_ids, list(response_ids)


@dataclass
class RenderReport:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.rows} rows: {self.kept} kept ({self.truncated} truncated), {self.dropped} dropped as over-long; "
            f"{self.prompt_tokens} prompt + {self.response_tokens} response tokens"
        )


def render_rows(rows: list[Row], tokenizer: Any, cfg: RenderConfig) -> tuple[list[Example], RenderReport]:
    template = uses_template(tokenizer, cfg)
    out, rep = [], RenderReport(rows=len(rows))
    for row in rows:
        p, r = render_row(row, tokenizer, cfg, template)
        truncated = False
        if cfg.max_length is not None and len(p) + len(r) > cfg.max_length:
            if cfg.overlong == "error":
                raise T3SError(
                    f"{row.where}: {len(p) + len(r)} tokens exceed max_length={cfg.max_length} "
                    "(set overlong=truncate or overlong=drop, or raise max_length)"
                )
            if cfg.overlong == "drop" or len(p) >= cfg.max_length:
                rep.dropped += 1  # truncation would leave no response token: nothing to train on
                continue
            r, truncated = r[: cfg.max_length - len(p)], True
            rep.truncated += 1
        out.append(Example(id=row.id, input_ids=p + r, prompt_len=len(p), truncated=truncated))
        rep.kept += 1
        rep.prompt_tokens += len(p)
        rep.response_tokens += len(r)
    if not out:
        raise T3SError("every row was dropped as over-long; raise max_length")
    return out, rep


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return sha256_json({"tokenizer": body, "specials": specials})


def template_fingerprint(tokenizer: Any, cfg: RenderConfig) -> str:
    template = uses_template(tokenizer, cfg)
    return sha256_json(
        {
            "template": tokenizer.chat_template if template else None,
            "system_prompt": cfg.system_prompt,
            "separator": None if template else cfg.separator,
            "add_eos": None if template else cfg.add_eos,
            "template_kwargs": cfg.template_kwargs,
            "max_length": cfg.max_length,
            "overlong": cfg.overlong,
        }
    )


def fingerprints(rows: list[Row], tokenizer: Any, cfg: RenderConfig) -> dict[str, str]:
    """What makes two token streams comparable: the same rows, tokenizer and rendering."""
    return {
        "data": data_fingerprint(rows),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": template_fingerprint(tokenizer, cfg),
    }
