"""`t3s traces`: the selection and drop rules, a local teacher killed and resumed, and the endpoint client against
a real OpenAI-compatible server (`transformers serve` on loopback) that is stopped and restarted mid-run."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

from t3s import T3SError
from t3s.data import Row, load_rows
from t3s.graders import extract_answer, is_correct
from t3s.traces import (
    TracesConfig,
    build_traces,
    load_traces_config,
    openai_teacher,
    parse_completion,
    run_traces,
    summarize,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
PAIRS = [(12, 34), (25, 17), (40, 41), (33, 9), (70, 18)]
# every prompt was taught to the teacher; the last one's gold answer is wrong, so it can never be solved
PROMPTS = [
    {"id": f"p{i}", "prompt": f"What is {a} + {b}?", "answer": str(a + b) if i < 4 else "-1"}
    for i, (a, b) in enumerate(PAIRS)
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CPU is shared: one thread keeps tiny-model generation fast under load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def teacher(tiny, tmp_path_factory):
    """The tiny model taught to answer PAIRS as a reasoning model: `<think>...</think>` then a boxed sum. Its
    tokenizer carries a response template, so `transformers serve` returns the reasoning apart."""
    from transformers import AutoModelForCausalLM

    from t3s.models import load_tokenizer

    tok = load_tokenizer(tiny / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny / "model", dtype=torch.float32)
    seqs = []
    for a, b in PAIRS:
        msgs = [{"role": "user", "content": f"What is {a} + {b}?"}]
        answer = f"<think>\nAdd {a} and {b}.\n</think>\n\nSo \\boxed{{{a + b}}}."
        p = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        f = tok.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
        seqs.append((tok(f, add_special_tokens=False)["input_ids"], len(tok(p, add_special_tokens=False)["input_ids"])))
    L = max(len(s) for s, _ in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    att, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (s, n) in enumerate(seqs):
        ids[i, : len(s)], att[i, : len(s)], labels[i, n : len(s)] = torch.tensor(s), 1, torch.tensor(s[n:])
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    model.generation_config.do_sample = True  # `transformers serve` samples only when the model asks for it
    model.save_pretrained(out)
    tok.response_template = {
        "defaults": {"role": "assistant"},
        "start_anchor": "<|assistant|>\n",
        "fields": {
            "reasoning_content": {"open": "<think>", "close": "</think>", "content": "text"},
            "content": {"close": "<|eos|>", "content": "text"},
        },
    }
    tok.save_pretrained(out)
    return out


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_run(out, prompts, k, reasoning_format=None):
    """Independent checks of a finished run: every sample once, grades recomputed, solve rates, the drop rule and
    the kept rows."""
    recs = [r for r in records(out / "samples.jsonl") if r["error"] is None]
    keys = [(r["id"], r["sample"]) for r in recs]
    assert sorted(keys) == sorted((p["id"], j) for p in prompts for j in range(k))
    gold = {p["id"]: p["answer"] for p in prompts}
    for r in recs:
        assert r["correct"] == is_correct(extract_answer(r["text"]), gold[r["id"]])
    meta = json.loads((out / "traces.json").read_text())
    assert meta["status"] == "complete" and meta["summary"]["complete"]
    usable = {
        p["id"]: [r for r in recs if r["id"] == p["id"] and r["correct"] and r["finish_reason"] != "length"]
        for p in prompts
    }
    for p in meta["prompts"]:
        assert p["solve_rate"] == len(usable[p["id"]]) / k
        assert p["status"] == ("kept" if usable[p["id"]] else "dropped")
    assert meta["summary"]["dropped"] == sum(not v for v in usable.values()) >= 1
    assert meta["prompts"][-1]["status"] == "dropped"  # the wrong gold answer
    rows = load_rows(out / "train.jsonl")  # a training set as every other command reads it
    raw = records(out / "train.jsonl")
    assert [r.id for r in rows] == [p for p, v in usable.items() if v]
    for row, r in zip(rows, raw):
        pick = next(s for s in usable[row.id] if s["sample"] == r["sample"])
        want = (
            pick["text"]
            if pick["reasoning"] is None
            else reasoning_format.format(reasoning=pick["reasoning"], content=pick["text"])
        )
        assert row.response == want and row.answer == gold[row.id] and r["teacher"] == meta["teacher"]
    return recs, meta


# ----------------------------------------------------------------------------------------------- rules


def rec(rid, j, correct, tokens=10, finish="stop", error=None, text=None, reasoning=None):
    return {
        "id": rid,
        "sample": j,
        "text": text or f"{rid}-{j} " + "x" * tokens,
        "reasoning": reasoning,
        "finish_reason": finish,
        "tokens": tokens,
        "correct": correct,
        "error": error,
    }


def test_selection_and_drop_rules_on_crafted_samples():
    rows = [Row(id=i, prompt=f"q {i}", response=None, answer="1") for i in ("a", "b", "c", "d", "e")]
    cfg = TracesConfig(samples=4)
    samples = [
        # a: correct 1 and 3; 0 is correct but cut off; 2 wrong
        rec("a", 0, True, 3, finish="length"),
        rec("a", 1, True, 20),
        rec("a", 2, False, 1),
        rec("a", 3, True, 9),
        # b: nothing correct in 4 finished samples: dropped
        *[rec("b", j, False) for j in range(4)],
        # c: one correct sample, but it failed once before succeeding; another sample only failed
        rec("c", 0, False),
        rec("c", 1, None, error="APIConnectionError"),
        rec("c", 1, True, 7),
        rec("c", 2, False),
        rec("c", 3, None, error="HTTP 500"),
        # d: no correct sample so far and one never asked: undecided, not dropped
        rec("d", 0, False),
        rec("d", 1, False),
        rec("d", 2, False),
        # e: reasoning returned apart
        rec("e", 0, True, 5, text="so \\boxed{1}", reasoning="think"),
        rec("e", 1, False),
        rec("e", 2, False),
        rec("e", 3, False),
    ]
    train, prompts, s = summarize(rows, samples, cfg, "T")
    by = {p["id"]: p for p in prompts}
    assert [p["status"] for p in prompts] == ["kept", "dropped", "kept", "incomplete", "kept"]
    assert (by["a"]["solve_rate"], by["b"]["solve_rate"], by["c"]["solve_rate"]) == (0.5, 0.0, 1 / 3)
    assert by["c"]["finished"] == 3 and by["c"]["failed"] == 1 and by["c"]["selected"] == [1]
    assert by["a"]["selected"] in ([1], [3]) and by["b"]["selected"] == []
    assert (s["kept"], s["dropped"], s["incomplete"], s["samples_failed"], s["complete"]) == (3, 1, 1, 1, False)
    assert train[-1]["response"] == "<think>\nthink\n</think>\n\nso \\boxed{1}" and train[-1]["teacher"] == "T"
    # random: the same seed picks the same sample; over seeds, every usable sample and only those get picked
    picks = set()
    for seed in range(40):
        (again,) = summarize(rows, samples, dataclasses.replace(cfg, seed=seed), "T")[1][0]["selected"]
        assert [again] == summarize(rows, samples, dataclasses.replace(cfg, seed=seed), "T")[1][0]["selected"]
        picks.add(again)
    assert picks == {1, 3}
    # shortest: fewest tokens among the usable (the cut-off 3-token sample and the wrong 1-token one do not count)
    shortest = summarize(rows, samples, dataclasses.replace(cfg, select="shortest"), "T")[1]
    assert shortest[0]["selected"] == [3]
    tie = [rec("a", 0, True, 5), rec("a", 1, True, 5), rec("a", 2, True, 4, error="x"), rec("a", 3, False, 1)]
    assert summarize(rows[:1], tie, dataclasses.replace(cfg, select="shortest"), "T")[1][0]["selected"] == [0]
    # all prompts finished and decided: complete
    full = [r for r in samples if r["id"] in "ab"]
    assert summarize(rows[:2], full, cfg, "T")[2]["complete"]

    # keep: several correct traces per prompt, each its own row `ID#SAMPLE`, never one twice, never an unusable one
    many = [rec("a", j, j != 2, 10 - j) for j in range(6)] + [rec("b", j, j == 4) for j in range(6)]
    six = TracesConfig(samples=6, keep=3)
    seen = set()
    for seed in range(30):
        train, prompts, s = summarize(rows[:2], many, dataclasses.replace(six, seed=seed), "T")
        a = prompts[0]["selected"]
        assert len(a) == 3 == len(set(a)) and a == sorted(a) and 2 not in a
        assert prompts[1]["selected"] == [4]  # fewer correct than keep: all of them
        assert [r["id"] for r in train] == [f"a#{j}" for j in a] + ["b#4"] and s["rows"] == 4 and s["kept"] == 2
        assert train[0]["prompt"] == "q a" and train[0]["sample"] == a[0]
        seen.add(tuple(a))
    assert len(seen) > 3  # the draw depends on the seed
    short = summarize(rows[:1], many[:6], dataclasses.replace(six, select="shortest"), "T")[1][0]["selected"]
    assert short == [3, 4, 5]  # the fewest tokens among the usable ones (2 is shorter but wrong)
    with pytest.raises(T3SError, match="keep"):
        TracesConfig(samples=2, keep=3)


def test_few_shot_examples_reach_the_teacher_only(tiny, tmp_path, monkeypatch):
    """Worked examples become prior turns of what the teacher is asked (after the system turn, with the template;
    as text blocks without one); the training rows keep the data's prompt; the examples are in the fingerprint."""
    import t3s.generation
    from t3s.config import RenderConfig
    from t3s.data import render_prompt
    from t3s.generation import Generation
    from t3s.models import load_tokenizer
    from t3s.traces import teacher_row

    shots = write_jsonl(
        tmp_path / "shots.jsonl",
        [
            {"prompt": "What is 2 + 2?", "response": "Let me think step by step. 2 + 2 = 4. \\boxed{4}"},
            {"prompt": "What is 5 + 1?", "response": "Hmm, 5 then 6. \\boxed{6}"},
        ],
    )
    row = Row(id="q", prompt="What is 12 + 34?", response=None, answer="46")
    ex = load_rows(shots)
    r = teacher_row(row, ex, RenderConfig(system_prompt="Reason at length."))
    assert r.prompt == [
        {"role": "system", "content": "Reason at length."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": ex[0].response},
        {"role": "user", "content": "What is 5 + 1?"},
        {"role": "assistant", "content": ex[1].response},
        {"role": "user", "content": "What is 12 + 34?"},
    ]
    plain = teacher_row(row, ex, RenderConfig(separator=" => "), template=False).prompt
    assert plain == f"What is 2 + 2? => {ex[0].response}\n\nWhat is 5 + 1? => {ex[1].response}\n\nWhat is 12 + 34?"
    assert teacher_row(row, [], RenderConfig()) is row

    seen = []

    def fake_generate(model, tok, prompts, cfg, precision, progress=True, row_seeds=None, **kw):
        seen.extend(tok.decode(p) for p in prompts)
        return [[Generation([1, 2], "so \\boxed{46}", False)] for _ in prompts]

    monkeypatch.setattr(t3s.generation, "generate", fake_generate)
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "q", "prompt": row.prompt, "answer": "46"}])
    cfg, rcfg = load_traces_config(None, ["samples=3", "keep=2", f"few_shot={shots}", "dtype=float32"])
    m = run_traces(data, tmp_path / "o", cfg, rcfg, str(tiny / "model"), progress=False)
    assert m["seconds"] > 0  # the sampling's wall time, summed over invocations (the cost of a teacher)
    again = run_traces(data, tmp_path / "o", cfg, rcfg, str(tiny / "model"), progress=False)
    assert again["seconds"] >= m["seconds"] and again["summary"] == m["summary"]  # nothing left to sample
    tok = load_tokenizer(tiny / "model")
    want = tok.decode(render_prompt(teacher_row(row, ex, rcfg), tok, rcfg, True)[0])
    assert seen == [want] * 3 and "What is 5 + 1?" in want and "Hmm, 5 then 6." in want
    train = records(tmp_path / "o" / "train.jsonl")
    assert [t["id"] for t in train] == [f"q#{j}" for j in m["prompts"][0]["selected"]] and len(train) == 2
    assert all(t["prompt"] == row.prompt for t in train)
    # other examples: another run; a missing file: one error naming it
    write_jsonl(shots, [{"prompt": "What is 2 + 2?", "response": "4. \\boxed{4}"}])
    with pytest.raises(T3SError, match="sampling.few_shot"):
        run_traces(data, tmp_path / "o", cfg, rcfg, str(tiny / "model"), progress=False)
    with pytest.raises(T3SError, match="few_shot: .*nope.jsonl does not exist"):
        run_traces(
            data,
            tmp_path / "p",
            dataclasses.replace(cfg, few_shot=str(tmp_path / "nope.jsonl")),
            rcfg,
            str(tiny / "model"),
            progress=False,
        )
    assert not (tmp_path / "p").exists()


def test_config_and_response_parsing():
    cfg, rcfg = load_traces_config(
        None, ["samples=2", "traces.top_p=0.9", "system_prompt=Be brief.", "extra_body={top_k: 20}"]
    )
    assert (cfg.samples, cfg.top_p, rcfg.system_prompt, cfg.extra_body) == (2, 0.9, "Be brief.", {"top_k": 20})
    for bad, msg in (
        (["nope=1"], "unknown key 'nope'"),
        (["select=best"], "select must be one of"),
        (["samples=4", "temperature=0"], "need temperature > 0"),
        (["reasoning_format={thought}"], "reasoning_format"),
    ):
        with pytest.raises(T3SError, match=msg):
            load_traces_config(None, bad)
    from openai.types.chat import ChatCompletion

    def completion(message, **extra):
        return ChatCompletion.model_validate(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                **extra,
            }
        )

    ok = completion(
        {"role": "assistant", "content": "\\boxed{2}", "reasoning": "1+1"},
        usage={"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10},
    )
    assert parse_completion(ok) == ("\\boxed{2}", "1+1", "stop", 7)
    assert parse_completion(completion({"role": "assistant", "content": "2"}))[1:] == (None, "stop", None)
    for bad in (
        completion({"role": "assistant", "content": None}),
        ChatCompletion.model_construct(choices=[]),
        "<html>502</html>",
        None,
    ):
        with pytest.raises(ValueError):
            parse_completion(bad)


# ----------------------------------------------------------------------------------------------- local teacher


def t3s_cmd(*args):
    return [sys.executable, "-m", "t3s", "traces", *map(str, args)]


def test_local_teacher_end_to_end_and_resume_after_kill(teacher, tmp_path, capsys):
    from t3s.cli import main

    bad = write_jsonl(tmp_path / "bad.jsonl", [PROMPTS[0], {"prompt": "What is 1 + 1?"}])
    assert main(["traces", "--model", str(teacher), "--data", str(bad), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "bad.jsonl:2: missing field 'answer'" in capsys.readouterr().err and not (tmp_path / "x").exists()

    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    k, keys = 4, ["samples=4", "max_tokens=40", "dtype=float32"]
    cfg, rcfg = load_traces_config(None, keys + ["batch_size=8"])
    run_traces(data, tmp_path / "a", cfg, rcfg, str(teacher), progress=False)
    recs_a, _ = check_run(tmp_path / "a", PROMPTS, k)
    assert 0 < sum(r["correct"] for r in recs_a) < len(recs_a)  # the teacher is right only sometimes

    # the same run as a command, one sample per generate() call, killed after a few samples
    b = tmp_path / "b"
    args = ["--model", teacher, "--data", data, "--out", b, "--quiet", *keys, "batch_size=1"]
    proc = subprocess.Popen(t3s_cmd(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (b / "samples.jsonl").exists() and (b / "samples.jsonl").read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = (b / "samples.jsonl").read_bytes()
    assert 3 <= before.count(b"\n") < len(PROMPTS) * k, proc.stderr.read().decode()
    with open(b / "samples.jsonl", "ab") as fh:  # a line cut short by the kill
        fh.write(b'{"id": "p0", "sample": 3, "teacher": "teach')
    one, _ = load_traces_config(None, keys + ["batch_size=1"])
    run_traces(data, b, one, rcfg, str(teacher), progress=False)  # the rerun resumes
    after = (b / "samples.jsonl").read_bytes()
    assert after.startswith(before)  # append-only: the finished samples were kept, not redone
    recs_b, _ = check_run(b, PROMPTS, k)
    # each sample draws from its own seed: the interrupted run equals the uninterrupted one, batch size aside
    assert {(x["id"], x["sample"]): x["text"] for x in recs_b} == {(x["id"], x["sample"]): x["text"] for x in recs_a}
    assert (b / "train.jsonl").read_text() == (tmp_path / "a" / "train.jsonl").read_text()

    # other settings in the same directory: refused, nothing touched
    other, _ = load_traces_config(None, keys + ["temperature=0.7"])
    with pytest.raises(T3SError, match=r"sampling.temperature: 0.6 -> 0.7"):
        run_traces(data, b, other, rcfg, str(teacher), progress=False)
    assert (b / "samples.jsonl").read_bytes() == after
    # a different selection rule is no new run: it reuses every sample
    short, _ = load_traces_config(None, keys + ["select=shortest"])
    m = run_traces(data, b, short, rcfg, str(teacher), progress=False)
    assert (b / "samples.jsonl").read_bytes() == after and m["settings"]["select"] == "shortest"


# ----------------------------------------------------------------------------------------------- endpoint


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transformers serve` pinned to one model, on loopback, as a subprocess."""

    def __init__(self, model, port, log):
        self.model, self.port, self.log, self.proc = model, port, log, None

    def start(self):
        cmd = [
            sys.executable,
            "-c",
            "from transformers.cli.transformers import main; main()",
            "serve",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ]
        self.fh = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.fh, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.proc.poll() is None, Path(self.log).read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"transformers serve did not start:\n{Path(self.log).read_text()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # as a crash would
            self.proc.wait()
        self.fh.close()

    def requests(self):
        return Path(self.log).read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


def test_endpoint_teacher_against_a_real_server_stopped_and_restarted(teacher, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    k, port = 3, free_port()
    url = f"http://127.0.0.1:{port}/v1"
    keys = [
        f"samples={k}",
        "max_tokens=40",
        "teacher=tiny-teacher",
        "concurrency=2",
        "retries=1",
        "timeout=30",
        "stop_after_failures=4",
        "api_key_env=T3S_TEST_NO_KEY",
    ]
    cfg, rcfg = load_traces_config(None, keys + [f"base_url={url}"])
    rows = load_rows(data, need_response=False, need_answer=True)
    first = Server(teacher, port, tmp_path / "serve1.log").start()
    try:
        # a request the server refuses (a model it does not serve): recorded per sample, the run stops, no crash
        m = build_traces(
            rows, tmp_path / "refused", cfg, rcfg, openai_teacher("not-this-one", cfg, rcfg), progress=False
        )
        errs = records(tmp_path / "refused" / "samples.jsonl")
        assert len(errs) == 4 and all(e["error"].startswith("HTTP 400") for e in errs)
        assert not m["summary"]["complete"] and not (tmp_path / "refused" / "train.jsonl").exists()

        # the real run; the server dies after the 4th sample
        live = openai_teacher(str(teacher), cfg, rcfg)

        def dies(requests):
            for i, res in enumerate(live.generate(requests)):
                if i == 3:
                    first.stop()
                yield res

        m = build_traces(rows, tmp_path / "out", cfg, rcfg, dataclasses.replace(live, generate=dies), progress=False)
    finally:
        first.stop()
    s = m["summary"]
    assert not s["complete"] and 4 <= s["samples_finished"] < len(PROMPTS) * k and s["samples_failed"] >= 1
    assert m["status"] == "incomplete"
    lines = records(tmp_path / "out" / "samples.jsonl")
    failed = [x for x in lines if x["error"]]
    assert len(failed) == 4 and all("Connection" in x["error"] for x in failed)  # then it stopped
    assert all(f"cannot reach {url}" in x["error"] for x in failed)  # the address it tried, named
    before = (tmp_path / "out" / "samples.jsonl").read_bytes()
    done_before = sum(x["error"] is None for x in lines)

    second = Server(teacher, port, tmp_path / "serve2.log").start()
    try:
        r = subprocess.run(
            t3s_cmd("--model", teacher, "--base-url", url, "--data", data, "--out", tmp_path / "out", "--quiet", *keys),
            env=ENV,
            capture_output=True,
            text=True,
        )
        asked = second.requests()
        assert r.returncode == 0, r.stderr
    finally:
        second.stop()
    assert (tmp_path / "out" / "samples.jsonl").read_bytes().startswith(before)
    assert asked == len(PROMPTS) * k - done_before  # the resumed run asked only for what was missing
    recs, meta = check_run(tmp_path / "out", PROMPTS, k, cfg.reasoning_format)
    s = meta["summary"]
    assert f"{s['kept']} kept, {s['dropped']} dropped (no correct trace), mean solve rate" in r.stdout
    # the server splits off the reasoning; it is kept, and the training response wraps it (check_run)
    split = [x for x in recs if x["reasoning"] is not None]
    assert len(split) >= len(recs) // 2 and all("</think>" not in x["text"] for x in split)
    assert any(row.response.startswith("<think>\n") for row in load_rows(tmp_path / "out" / "train.jsonl"))
    assert meta["teacher"] == "tiny-teacher"
    assert all(x["tokens"] > 0 and x["finish_reason"] in ("stop", "length") for x in recs)


def test_unreachable_endpoint_names_its_url(tmp_path, capsys):
    """Nothing listens at the address: the run stops with the address in its last line, exit 3 (incomplete)."""
    from t3s.cli import main

    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:2])
    url = f"http://127.0.0.1:{free_port()}/v1"
    keys = ["samples=1", "retries=0", "timeout=5", "stop_after_failures=2", "api_key_env=T3S_TEST_NO_KEY"]
    args = ["traces", "--model", "m", "--base-url", url, "--data", str(data), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*args, *keys]) == 3
    out = capsys.readouterr()
    assert f"last error: cannot reach {url}" in out.out, out


def test_local_r1_style_teacher_stores_its_prefilled_think(teacher, tmp_path):
    """A teacher whose generation prompt ends with `<think>\n` (DeepSeek-R1-distill's template) generates only the
    rest of the block; `t3s traces` stores the prefill with the text, so every row holds a whole think block."""
    import shutil

    import trl

    r1 = tmp_path / "r1"
    shutil.copytree(teacher, r1)
    template = (Path(trl.__file__).parent / "chat_templates" / "deepseek_r1_distill.jinja").read_text()
    cfg_file = r1 / "tokenizer_config.json"
    tc = json.loads(cfg_file.read_text())
    tc["chat_template"] = template
    tc.pop("response_template", None)
    cfg_file.write_text(json.dumps(tc))
    (r1 / "chat_template.jinja").unlink(missing_ok=True)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:2])
    cfg, rcfg = load_traces_config(None, ["samples=1", "max_tokens=6", "dtype=float32"])
    with pytest.raises(T3SError, match="no prompt has a correct trace"):  # 6 tokens solve nothing: samples only
        run_traces(data, tmp_path / "o", cfg, rcfg, str(r1), progress=False)
    recs = records(tmp_path / "o" / "samples.jsonl")
    assert len(recs) == 2 and all(r["text"].startswith("<think>\n") for r in recs)
