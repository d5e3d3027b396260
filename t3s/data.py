"""Stage 1: training rows -> validated rows -> token ids with response labels.

A row is `{"prompt": str | [{"role", "content"}, ...], "response": str, "answer": str (optional),
"id": str (optional)}`, or one of TRL's formats (`messages`; `prompt` + `completion`, see `from_trl`). Rows come
from JSONL, Parquet or a saved Hugging Face dataset directory. Rendering uses the tokenizer's chat template
(prompt as the user turn, response as the assistant turn) or, without a template, plain concatenation; labels
cover the response tokens only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from t3s import T3SError
from t3s.artifacts import not_utf8, sha256_json
from t3s.config import RenderConfig


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


def from_trl(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """TRL's dataset formats as t3s rows (other keys, such as `answer` and `id`, are kept):
    - conversational language modeling, `messages`: the last turn, when it is the assistant's, is the response and
      the turns before it are the prompt (without an assistant turn at the end, all of them are the prompt);
    - prompt-completion, `prompt` + `completion`: strings (standard) or lists of messages (conversational, the
      completion being one assistant message).
    A row in t3s's own form (`prompt` + `response`) is returned as it is."""

    def bad(msg: str) -> T3SError:
        return T3SError(f"{where}: {msg}")

    if raw.get("messages") is not None:
        clash = [k for k in ("prompt", "response", "completion") if raw.get(k) is not None]
        if clash:
            raise bad(f"field 'messages' and field '{clash[0]}': one format per row (messages, or prompt + response)")
        msgs = raw["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise bad(f"field 'messages' must be a list of {{role, content}} objects, got {type(msgs).__name__}")
        last = msgs[-1] if msgs else {}
        if last.get("role") == "assistant":
            prompt, response = msgs[:-1], last.get("content")
            if not prompt:
                raise bad("field 'messages' has no turn before the assistant's (the prompt)")
        else:
            prompt, response = msgs, None
        return {**{k: v for k, v in raw.items() if k != "messages"}, "prompt": prompt, "response": response}
    if raw.get("completion") is not None:
        if raw.get("response") is not None:
            raise bad("field 'response' and field 'completion': one of them holds the response")
        completion = raw["completion"]
        if isinstance(completion, list):
            if len(completion) != 1 or not isinstance(completion[0], dict) or completion[0].get("role") != "assistant":
                raise bad("a conversational 'completion' must be one assistant message")
            completion = completion[0].get("content")
        return {**{k: v for k, v in raw.items() if k != "completion"}, "response": completion}
    return raw


def _check_row(raw: Any, where: str, need_response: bool = True, need_answer: bool = False) -> Row:
    def bad(msg: str) -> T3SError:
        return T3SError(f"{where}: {msg}")

    if not isinstance(raw, dict):
        raise bad(f"a row must be a JSON object, got {type(raw).__name__}")
    raw = from_trl(raw, where)
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


SPEC_KEYS = ("source", "name", "split", "columns", "response")


def spec_rows(path: Path, split: str | None) -> list[tuple[str, Any]]:
    """A dataset spec (`*.yaml`): a dataset as its authors published it, mapped to t3s's fields.

    ```yaml
    source: simplescaling/s1K     # a Hub id, a local dataset directory, or a .jsonl / .parquet file
    name: null                    # the Hub config, if the dataset has several
    split: train
    columns: {prompt: question, answer: solution}    # t3s field: the dataset's column
    response: "<think>\n{thinking_trajectories[0]}\n</think>\n\n{attempt}"   # built from the row's columns
    ```
    Relative paths in `source` are read from the spec's folder first, then from the current directory."""
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise T3SError(f"{path}: cannot read the dataset spec ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("source"), str):
        raise T3SError(f"{path}: a dataset spec is a mapping with at least `source` (keys: {', '.join(SPEC_KEYS)})")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise T3SError(f"{path}: unknown key(s) {', '.join(unknown)} (keys: {', '.join(SPEC_KEYS)})")
    columns, template = spec.get("columns") or {}, spec.get("response")
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        raise T3SError(f"{path}: `columns` maps t3s fields to column names, e.g. {{prompt: question}}")
    bad = sorted(set(columns) - {"prompt", "response", "answer", "id", "messages", "completion"})
    if bad:
        raise T3SError(
            f"{path}: `columns` maps t3s fields (prompt, response, answer, id, messages, completion), not {bad}"
        )
    if template is not None and not isinstance(template, str):
        raise T3SError(f"{path}: `response` is a template string such as '{{reasoning}}\\n\\n{{answer}}'")
    source = spec["source"]
    local = next((p for p in (path.parent / source, Path(source)) if p.exists()), None)
    split = split or spec.get("split")
    raw = raw_rows(local, split) if local is not None else hub_rows(source, spec.get("name"), split)
    out = []
    for where, row in raw:
        if not isinstance(row, dict):
            raise T3SError(f"{where}: a row must be a mapping of columns, got {type(row).__name__}")
        mapped = dict(row)
        for t3s_field, column in columns.items():
            if column not in row:
                raise T3SError(
                    f"{where}: no column '{column}' ({path} maps {t3s_field} to it; columns: {', '.join(row)})"
                )
            mapped[t3s_field] = row[column]
        if template is not None:
            try:
                mapped["response"] = template.format_map(row)
            except (KeyError, IndexError, AttributeError, ValueError) as e:
                raise T3SError(f"{where}: {path}'s response template: {type(e).__name__} {e}") from None
        out.append((f"{where} (via {path})", mapped))
    return out


def hub_rows(source: str, name: str | None, split: str | None) -> list[tuple[str, Any]]:
    """Rows of a Hugging Face Hub dataset (`datasets.load_dataset`, which works from its cache when offline)."""
    import datasets

    try:
        ds = datasets.load_dataset(source, name, split=split or "train")
    except Exception as e:  # noqa: BLE001 -- the library's many errors become one line naming the dataset
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " (offline: only datasets in the local cache load)" if offline else ""
        raise T3SError(f"{source}: cannot load the dataset{hint}: {' '.join(str(e).split())[:300]}") from None
    return [(f"{source} row {i + 1}", r) for i, r in enumerate(ds)]


def _hub_id(path: Path) -> bool:
    """`org/name` that is not a local path: a Hub dataset id."""
    text = str(path)
    return not path.exists() and text.count("/") == 1 and not path.suffix and not text.startswith((".", "/", "~"))


def raw_rows(path: Path, split: str | None) -> list[tuple[str, Any]]:
    """(location, raw object) pairs from any supported source: a .jsonl / .parquet file, a saved dataset
    directory, a directory of data files, a dataset spec (.yaml, `spec_rows`) or a Hub dataset id."""
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return spec_rows(path, split)
    if _hub_id(path):
        return hub_rows(str(path), None, split)
    if path.is_dir() and not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return hub_rows(str(path), None, split)  # a folder of data files (or a Hub-style repo) on disk
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
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise not_utf8(path, raw, e, lineno) from None
                if not line.strip():
                    continue
                try:
                    out.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise T3SError(f"{path}:{lineno}: bad JSON ({e.msg} at column {e.colno})") from None
        return out
    raise T3SError(
        f"{path}: unsupported data format (use .jsonl, .parquet, a dataset directory, a dataset spec .yaml or a "
        "Hub dataset id)"
    )


def load_rows(
    path: str | Path, split: str | None = None, *, need_response: bool = True, need_answer: bool = False
) -> list[Row]:
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


def prompt_messages(row: Row, cfg: RenderConfig) -> list[dict[str, str]]:
    if isinstance(row.prompt, list):
        return list(row.prompt)
    msgs = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return msgs + [{"role": "user", "content": row.prompt}]


def render_prompt(row: Row, tokenizer: Any, cfg: RenderConfig, template: bool) -> tuple[list[int], str]:
    """Token ids of the prompt as the model sees it before its answer, and the same as text."""
    if template:
        text = _apply_template(row, tokenizer, cfg, prompt_messages(row, cfg), add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        if isinstance(row.prompt, list):
            raise T3SError(f"{row.where}: the prompt is a list of messages but no chat template is used")
        text = row.prompt + cfg.separator
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if not ids:
        raise T3SError(f"{row.where}: the prompt renders to no tokens")
    return list(ids), text


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_SENTINEL = "T3S_RESPONSE_SENTINEL_8c1f"


def complete_think(response: str) -> str:
    """A trace whose reasoning is closed by </think> but never opened gets its opener back. R1-distill and QwQ
    (and Qwen3.5+ thinking mode) end the generation prompt with `<think>\n`, so what they generate starts inside
    the block: `reasoning\n</think>\n\nanswer`. Rendered as is for a student whose template does not prefill the
    opener (Qwen3, Llama-3, ...), the labels would hold a closing tag without an opening one."""
    close = response.find(THINK_CLOSE)
    if close < 0 or THINK_OPEN in response[:close]:
        return response
    return THINK_OPEN + ("" if response.startswith("\n") else "\n") + response


def trace_parts(response: str) -> list[str]:
    """The parts of a trace that must reach the model verbatim: the reasoning inside <think>…</think> and the
    answer after it (or the whole response when it has no think block), whitespace-stripped, non-empty."""
    if THINK_CLOSE in response:
        reasoning, answer = response.split(THINK_CLOSE, 1)
        reasoning = reasoning.split(THINK_OPEN, 1)[-1]
        return [x.strip() for x in (reasoning, answer) if x.strip()]
    return [response.strip()] if response.strip() else []


def _apply_template(row: Row, tokenizer: Any, cfg: RenderConfig, msgs: list[dict[str, str]], **kw: Any) -> str:
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, **kw, **cfg.template_kwargs)
    except Exception as e:  # jinja2 errors of templates written for other message shapes (images, tools)
        raise T3SError(
            f"{row.where}: the chat template cannot render this row ({type(e).__name__}: {e}); "
            "render without it (chat_template=off) or give a text-only template"
        ) from None


def _turn_end(row: Row, tokenizer: Any, cfg: RenderConfig, prefix: str) -> tuple[str, str]:
    """(prefill, end): what the template's generation prompt adds after the assistant header, and the text it
    puts after an assistant turn's content (e.g. `<|im_end|>\n`), read from a rendering of a sentinel turn."""
    full = _apply_template(
        row, tokenizer, cfg, prompt_messages(row, cfg) + [{"role": "assistant", "content": _SENTINEL}]
    )
    at = full.rfind(_SENTINEL)
    if at < 0:
        raise T3SError(
            f"{row.where}: the chat template drops the assistant's content; cannot find the response "
            "(a template for another message shape?); render without it (chat_template=off)"
        )
    common = len(os.path.commonprefix([full[:at], prefix]))
    return prefix[common:], full[at + len(_SENTINEL) :]


def _stop_text(tokenizer: Any) -> str:
    """What ends a response whose template writes no end-of-turn marker: the tokenizer's EOS token."""
    return tokenizer.eos_token or ""


def think_prefill(prefix: str) -> str:
    """The open think block a generation prompt ends with (`<think>\n` for DeepSeek-R1-distill, QwQ, Qwen3.5+
    thinking mode), or ''."""
    i = prefix.rfind(THINK_OPEN)
    if i >= 0 and not prefix[i + len(THINK_OPEN) :].strip():
        return prefix[i:]
    return ""


def render_response(row: Row, tokenizer: Any, cfg: RenderConfig, prefix: str) -> tuple[str, str, bool]:
    """(response text, the row's text it contains verbatim, rewritten): the text the model must produce after the
    generation prompt `prefix`, i.e. what it generates at inference time, end-of-turn included.

    The template's own rendering of the assistant turn is used when it renders the prompt as a prefix, keeps every
    part of the trace (reasoning and answer) exactly once, and opens and closes as many think blocks as the row
    does (counting an open `<think>` the prompt prefills): ChatML, Llama-3, Gemma, gpt-oss, Qwen3 with a <think>
    block. Reasoning-model templates often rewrite the turn instead: DeepSeek-R1-distill and QwQ drop everything up
    to </think> and end the generation prompt with `<think>\n`; some Qwen3 revisions put an empty think block
    before a content that has its own. Then (`rewritten`) the response is the row's text after what the generation
    prompt prefills (a leading `<think>` is in the prompt, not a label), followed by the template's end-of-turn
    text. A template that ends the turn with no marker at all (GLM-4.5: the next turn's header stops generation)
    gets the tokenizer's EOS token, so the student learns to stop. A template that would add a think block to a
    trace without one (Qwen3 thinking mode renders it as a non-thinking answer after an empty think block) is
    refused: the student would silently learn not to think."""
    resp = complete_think(row.response)  # a trace that starts inside its think block (see complete_think)
    row = replace(row, response=resp)
    msgs = prompt_messages(row, cfg) + [{"role": "assistant", "content": resp}]
    full = _apply_template(row, tokenizer, cfg, msgs)
    pre = think_prefill(prefix)
    want = (
        resp.count(THINK_OPEN) + (1 if pre and not resp.lstrip().startswith(THINK_OPEN) else 0),
        resp.count(THINK_CLOSE),
    )
    common = len(os.path.commonprefix([full, prefix]))
    if THINK_CLOSE not in resp and THINK_CLOSE in full[common:]:
        raise T3SError(
            f"{row.where}: the response has no <think>…</think> block, and the chat template renders it with one "
            "(an empty think block before the trace: a non-thinking answer): the student would learn to stop "
            "thinking. Wrap the reasoning in <think>…</think> (t3s traces does), or render in non-thinking mode "
            "(render.template_kwargs: {enable_thinking: false}) if that is what you want"
        )
    if common == len(prefix):
        text = full[len(prefix) :]
        seq = pre + text
        parts = trace_parts(resp)
        if all(text.count(x) == 1 for x in parts) and (seq.count(THINK_OPEN), seq.count(THINK_CLOSE)) == want:
            if parts and not text[text.rfind(parts[-1]) + len(parts[-1]) :].strip():
                text += _stop_text(tokenizer)  # a template that closes no turn (GLM): the model must learn to stop
            return text, resp if resp in text else text, False
    prefill, end = _turn_end(row, tokenizer, cfg, prefix)
    if not end.strip():
        end += _stop_text(tokenizer)
    prefill = pre or prefill
    body = resp
    if prefill and body.startswith(prefill):
        body = body[len(prefill) :]
    elif prefill.strip() and body.lstrip().startswith(prefill.strip()):
        body = body.lstrip()[len(prefill.strip()) :].lstrip("\n")
    return body + end, body, True


def render_row(row: Row, tokenizer: Any, cfg: RenderConfig, template: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids). The prompt is exactly what generation sees (`add_generation_prompt=True`); the
    response tokens are what the model produces after it (`render_response`), end-of-turn included. The two are
    tokenized separately at that boundary."""
    return _render(row, tokenizer, cfg, template)[:2]


def _render(row: Row, tokenizer: Any, cfg: RenderConfig, template: bool) -> tuple[list[int], list[int], bool]:
    prompt_ids, prefix = render_prompt(row, tokenizer, cfg, template)
    rewritten = False
    if template:
        text, _, rewritten = render_response(row, tokenizer, cfg, prefix)
        response_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        response_ids = tokenizer(complete_think(row.response), add_special_tokens=False)["input_ids"]
        if cfg.add_eos and tokenizer.eos_token_id is not None:
            response_ids = response_ids + [tokenizer.eos_token_id]
    if not response_ids:
        raise T3SError(f"{row.where}: the response renders to no tokens")
    return prompt_ids, list(response_ids), rewritten


@dataclass
class RenderReport:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0
    rewritten: int = 0  # rows whose assistant turn the template rewrites (rendered after the generation prompt)
    think_opened: int = 0  # rows whose trace closed a think block it never opened (`complete_think`)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        note = (
            ""
            if not self.rewritten
            else f"; {self.rewritten} responses rendered after the generation prompt (the chat template rewrites "
            "assistant turns)"
        )
        if self.think_opened:
            note += (
                f"; {self.think_opened} responses closed a <think> block they never opened (a teacher whose prompt "
                "prefilled it): rendered with the opener"
            )
        return (
            f"{self.rows} rows: {self.kept} kept ({self.truncated} truncated), {self.dropped} dropped as over-long; "
            f"{self.prompt_tokens} prompt + {self.response_tokens} response tokens{note}"
        )


def render_rows(rows: list[Row], tokenizer: Any, cfg: RenderConfig) -> tuple[list[Example], RenderReport]:
    template = uses_template(tokenizer, cfg)
    out, rep = [], RenderReport(rows=len(rows))
    for row in rows:
        p, r, rewritten = _render(row, tokenizer, cfg, template)
        rep.rewritten += int(rewritten)
        rep.think_opened += int(complete_think(row.response) != row.response)
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


def file_fingerprint(path: str | Path, need_response: bool) -> str:
    """The fingerprint of a data file's rows: a training set (with responses) or prompts with gold answers."""
    return data_fingerprint(load_rows(path, need_response=need_response, need_answer=not need_response))
