import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from t3s import T3SError
from t3s.config import RenderConfig
from t3s.data import fingerprints, load_rows, render_rows, stable_id

GOOD = {"prompt": "What is 1 + 2?", "response": "It is 3.", "answer": "3"}


def test_load_jsonl_and_stable_ids(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "prompt": "What is 2 + 2?", "id": 7}, ""])
    rows = load_rows(p)
    assert [r.id for r in rows] == [stable_id(GOOD["prompt"], GOOD["response"]), "7"]
    assert load_rows(p)[0].id == rows[0].id  # stable across loads
    assert rows[0].where == f"{p}:1"


def test_load_parquet_and_saved_dataset(tmp_path):
    import datasets

    rows = [{**GOOD, "id": f"r{i}", "prompt": f"What is {i} + 2?"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    for src in ("d.parquet", "ds", "dd"):
        got = load_rows(tmp_path / src)
        assert [r.id for r in got] == ["r0", "r1", "r2"], src
        assert got[1].prompt == "What is 1 + 2?"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "x", "response": ', "bad JSON"),
        ({"response": "r"}, "missing field 'prompt'"),
        ({"prompt": "p", "response": "  "}, "field 'response' is empty"),
        ({"prompt": 3, "response": "r"}, "field 'prompt' must be a string or a list of messages"),
        ({"prompt": [{"role": "user"}], "response": "r"}, "prompt message 0 must be an object"),
        ({"prompt": "p", "response": ["r"]}, "field 'response' must be a string"),
        ({"prompt": "p", "response": "r", "answer": {"a": 1}}, "field 'answer' must be a string or a number"),
        ({"prompt": "p", "response": "r", "id": ""}, "field 'id' is empty"),
        ([1, 2], "a row must be a JSON object"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    p = write_jsonl(tmp_path / "bad.jsonl", [GOOD, line if isinstance(line, str) else json.dumps(line)])
    with pytest.raises(T3SError) as e:
        load_rows(p)
    assert f"{p}:2:" in str(e.value) and message in str(e.value)


def test_duplicate_ids_and_empty_file(tmp_path):
    p = write_jsonl(tmp_path / "dup.jsonl", [{**GOOD, "id": "a"}, {**GOOD, "id": "a", "prompt": "q"}])
    with pytest.raises(T3SError, match=r"dup.jsonl:2: duplicate id 'a' \(first seen at .*dup.jsonl:1\)"):
        load_rows(p)
    with pytest.raises(T3SError, match="no rows"):
        load_rows(write_jsonl(tmp_path / "empty.jsonl", []))


def test_render_with_chat_template_labels_cover_response_only(tmp_path, tok):
    rows = load_rows(write_jsonl(tmp_path / "d.jsonl", [GOOD]))
    (ex,), rep = render_rows(rows, tok, RenderConfig())
    prompt_text = tok.decode(ex.input_ids[: ex.prompt_len])
    assert prompt_text == "<|user|>\nWhat is 1 + 2?\n<|assistant|>\n"
    assert tok.decode(ex.response_ids) == "It is 3.<|eos|>"
    labels = ex.labels()
    assert labels[: ex.prompt_len] == [-100] * ex.prompt_len and labels[ex.prompt_len :] == ex.response_ids
    assert rep.response_tokens == len(ex.response_ids) and rep.kept == 1


def test_render_messages_system_prompt_and_plain(tmp_path, tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 + 2?"}]
    rows = load_rows(write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "prompt": msgs}]))
    (ex,), _ = render_rows(rows, tok, RenderConfig())
    assert tok.decode(ex.input_ids[: ex.prompt_len]).startswith("<|system|>\nBe brief.\n<|user|>")
    with pytest.raises(T3SError, match="list of messages but no chat template"):
        render_rows(rows, tok, RenderConfig(chat_template="off"))
    rows = load_rows(write_jsonl(tmp_path / "p.jsonl", [GOOD]))
    (ex,), _ = render_rows(rows, tok, RenderConfig(chat_template="off", separator="\n"))
    assert tok.decode(ex.input_ids[: ex.prompt_len]) == "What is 1 + 2?\n"
    assert tok.decode(ex.response_ids) == "It is 3.<|eos|>"
    # the rendering is part of the fingerprint
    assert (
        fingerprints(rows, tok, RenderConfig())["template"]
        != fingerprints(rows, tok, RenderConfig(chat_template="off"))["template"]
    )


def test_overlong_policies(tmp_path, tok):
    long = {**GOOD, "id": "long", "response": "It is 3. " * 20}
    rows = load_rows(write_jsonl(tmp_path / "d.jsonl", [GOOD, long]))
    full, _ = render_rows(rows, tok, RenderConfig())
    limit = len(full[0].input_ids)  # the short row fits exactly, the long one does not
    with pytest.raises(T3SError, match=rf"d.jsonl:2: \d+ tokens exceed max_length={limit}"):
        render_rows(rows, tok, RenderConfig(max_length=limit))
    ex, rep = render_rows(rows, tok, RenderConfig(max_length=limit, overlong="truncate"))
    assert (rep.kept, rep.truncated, rep.dropped) == (2, 1, 0)
    assert len(ex[1].input_ids) == limit and ex[1].response_ids == full[1].response_ids[: limit - ex[1].prompt_len]
    ex, rep = render_rows(rows, tok, RenderConfig(max_length=limit, overlong="drop"))
    assert (rep.kept, rep.truncated, rep.dropped) == (1, 0, 1) and [e.id for e in ex] == [rows[0].id]
    with pytest.raises(T3SError, match="overlong must be one of"):
        RenderConfig(overlong="cut")


# ----------------------------------------------------------------------------------------------- TRL's formats

USER = {"role": "user", "content": "What is 2 + 2?"}
SYSTEM = {"role": "system", "content": "Be brief."}
REPLY = {"role": "assistant", "content": "It is \\boxed{4}."}


@pytest.mark.parametrize(
    "raw, prompt, response",
    [
        # t3s's own form
        ({"prompt": "What is 2 + 2?", "response": "It is \\boxed{4}."}, "What is 2 + 2?", "It is \\boxed{4}."),
        # conversational language modeling: the last assistant turn is the response
        ({"messages": [USER, REPLY]}, [USER], "It is \\boxed{4}."),
        ({"messages": [SYSTEM, USER, REPLY]}, [SYSTEM, USER], "It is \\boxed{4}."),
        # prompt-completion, standard and conversational
        ({"prompt": "What is 2 + 2?", "completion": "It is \\boxed{4}."}, "What is 2 + 2?", "It is \\boxed{4}."),
        ({"prompt": [USER], "completion": [REPLY]}, [USER], "It is \\boxed{4}."),
    ],
)
def test_trl_formats_become_rows(tmp_path, raw, prompt, response):
    rows = load_rows(write_jsonl(tmp_path / "d.jsonl", [{**raw, "answer": 4, "id": "r1"}]))
    assert (rows[0].prompt, rows[0].response, rows[0].answer, rows[0].id) == (prompt, response, "4", "r1")


def test_messages_without_an_assistant_turn_are_prompts_for_evaluation(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "e.jsonl", [{"messages": [USER], "answer": "4"}]), need_response=False)
    assert rows[0].prompt == [USER] and rows[0].response is None


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"messages": [REPLY]}, "field 'messages' has no turn before the assistant's (the prompt)"),
        ({"messages": "hi"}, "field 'messages' must be a list of {role, content} objects, got str"),
        ({"messages": [USER, REPLY], "prompt": "x"}, "field 'messages' and field 'prompt': one format per row"),
        ({"messages": [USER]}, "missing field 'response'"),
        ({"prompt": "x", "completion": "y", "response": "z"}, "field 'response' and field 'completion'"),
        ({"prompt": [USER], "completion": [REPLY, REPLY]}, "a conversational 'completion' must be one assistant"),
        ({"prompt": [USER], "completion": [USER]}, "a conversational 'completion' must be one assistant"),
        ({"messages": [USER, {"role": "assistant", "content": ""}]}, "field 'response' is empty"),
    ],
)
def test_malformed_trl_rows_name_file_and_line(tmp_path, raw, message):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "response": "fine"}, raw])
    with pytest.raises(T3SError) as e:
        load_rows(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value), str(e.value)


def summary_rows(tiny, tmp_path, name, train, ev=None):
    """The summary table of a short `t3s run` of the tiny model on these data (every stage, two modes)."""
    import yaml

    from t3s.config import load_config
    from t3s.pipeline import run

    cfg = {
        "student": str(tiny / "model"),
        "train_data": str(train),
        "eval_data": None if ev is None else str(ev),
        "modes": ["sft", "t3s"],
        "rrt": False,
        "train": {"learning_rate": 3e-3, "max_steps": 2, "dtype": "float32"},
        "probe": {"eval_every": 1, "continue_without_dip": True, "markers": []},
        "eval": {"max_new_tokens": 8, "dtype": "float32"},
        "score": {"dtype": "float32"},
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    summary, code = run(load_config(tmp_path / f"{name}.yaml", [], flat=()), tmp_path / name, progress=False)
    assert code == 0
    return summary["rows"]


def test_a_messages_dataset_runs_through_t3s_run_like_its_rows(tiny, tmp_path):
    """The tiny training set rewritten as `messages` gives the run the same summary (accuracies, lengths, dropped
    fractions) as the original rows: they render to the same tokens."""
    rows = [json.loads(x) for x in (tiny / "train.jsonl").read_text().splitlines()]
    msgs = [
        {
            "id": r["id"],
            "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}],
            "answer": r["answer"],
        }
        for r in rows
    ]
    write_jsonl(tmp_path / "messages.jsonl", msgs)
    rows_run = summary_rows(tiny, tmp_path, "rows", tiny / "train.jsonl")
    assert summary_rows(tiny, tmp_path, "messages", tmp_path / "messages.jsonl") == rows_run


# ----------------------------------------------------------------------------------------------- datasets as published


def s1k_like(tiny, folder):
    """The tiny training set in an s1K-like layout (question, solution, a list of reasoning traces), as a folder
    of Parquet data files such as a Hub dataset repository holds (`load_dataset` reads it, offline)."""
    rows = [json.loads(x) for x in (tiny / "train.jsonl").read_text().splitlines()]
    table = pa.Table.from_pylist(
        [
            {
                "uid": r["id"],
                "question": r["prompt"],
                "solution": r["answer"],
                "trajectories": [r["response"], "unused"],
            }
            for r in rows
        ]
    )
    (folder / "data").mkdir(parents=True)
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    return rows


def test_a_dataset_folder_through_a_spec_maps_columns_and_builds_the_response(tiny, tmp_path):
    rows = s1k_like(tiny, tmp_path / "s1k-like")
    spec = tmp_path / "s1k.yaml"
    spec.write_text(
        "source: s1k-like\n"  # relative to the spec's folder
        "split: train\n"
        "columns: {prompt: question, answer: solution, id: uid}\n"
        "response: '{trajectories[0]}'\n"
    )
    got = load_rows(spec)
    assert [(r.id, r.prompt, r.response, r.answer) for r in got] == [
        (r["id"], r["prompt"], r["response"], r["answer"]) for r in rows
    ]
    # the folder itself is a source too (its own columns: no response, so only as prompts... with a mapping)
    with pytest.raises(T3SError, match="missing field 'prompt'"):
        load_rows(tmp_path / "s1k-like")


@pytest.mark.parametrize(
    "body, message, row",
    [
        ("split: train\n", "a dataset spec is a mapping with at least `source`", False),
        ("source: s1k-like\nfilter: x\n", "unknown key(s) filter", False),
        ("source: s1k-like\ncolumns: {question: prompt}\n", "`columns` maps t3s fields", False),
        ("source: s1k-like\ncolumns: {prompt: problem}\n", "no column 'problem'", True),
        ("source: s1k-like\ncolumns: {prompt: question}\nresponse: '{reasoning}'\n", "KeyError 'reasoning'", True),
        ("source: s1k-like\ncolumns: {prompt: question}\nresponse: '{trajectories[5]}'\n", "IndexError", True),
    ],
)
def test_bad_dataset_specs_are_one_error_naming_spec_and_row(tiny, tmp_path, body, message, row):
    s1k_like(tiny, tmp_path / "s1k-like")
    (tmp_path / "bad.yaml").write_text(body)
    with pytest.raises(T3SError) as e:
        load_rows(tmp_path / "bad.yaml")
    assert message in str(e.value) and "bad.yaml" in str(e.value), str(e.value)
    assert ("row 1" in str(e.value)) == row, str(e.value)


def test_a_hub_id_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(T3SError, match=r"^nobody/no-such-dataset: cannot load the dataset \(offline"):
        load_rows("nobody/no-such-dataset")


def test_a_mapped_dataset_runs_through_t3s_run_like_its_rows(tiny, tmp_path):
    """`train_data` and `eval_data` as dataset specs over an s1K-like folder: the same summary as the rows."""
    s1k_like(tiny, tmp_path / "s1k-like")
    (tmp_path / "train.yaml").write_text(
        "source: s1k-like\ncolumns: {prompt: question, answer: solution, id: uid}\nresponse: '{trajectories[0]}'\n"
    )
    (tmp_path / "eval.yaml").write_text("source: s1k-like\ncolumns: {prompt: question, answer: solution, id: uid}\n")
    rows_run = summary_rows(tiny, tmp_path, "rows", tiny / "train.jsonl", tiny / "train.jsonl")
    assert summary_rows(tiny, tmp_path, "mapped", tmp_path / "train.yaml", tmp_path / "eval.yaml") == rows_run
