"""The vLLM backend without vLLM (it needs CUDA): the clear error when it is missing, the translation of t3s's
generation settings into vLLM's, and of vLLM's outputs back into t3s's. The glue is checked end to end with a
stand-in `vllm` module whose engine runs the tiny model's own greedy `generate` and answers like vLLM (stop token
kept in the output, finish reason): `t3s eval --backend vllm` then writes what `--backend hf` writes. vLLM
itself is not exercised here."""

import json
import sys
import types

import pytest
import torch
from conftest import write_jsonl

from t3s import T3SError
from t3s.cli import main as t3s
from t3s.config import GenConfig
from t3s.vllm_backend import Engine, engine_kwargs, require_vllm, sampling_kwargs, to_generations


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not


def test_missing_vllm_is_one_clear_error(tiny, tmp_path, no_vllm, capsys):
    with pytest.raises(T3SError, match="pip install vllm"):
        require_vllm()
    out = tmp_path / "e"
    code = t3s(
        [
            "eval",
            "--model",
            str(tiny / "model"),
            "--data",
            str(tiny / "train.jsonl"),
            "--out",
            str(out),
            "--backend",
            "vllm",
            "--quiet",
        ]
    )
    assert code == 2 and not out.exists()
    assert "needs vLLM" in capsys.readouterr().err
    code = t3s(
        [
            "probe",
            "--model",
            str(tiny / "model"),
            "--data",
            str(tiny / "train.jsonl"),
            "--out",
            str(out),
            "--quiet",
            "backend=vllm",
            "max_steps=2",
        ]
    )
    assert code == 2 and not out.exists()
    with pytest.raises(T3SError, match="backend must be hf or vllm"):
        GenConfig(backend="tgi")


def test_engine_refuses_torchrun(monkeypatch, tok):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(T3SError, match="without torchrun"):
        Engine("unused", tok, GenConfig())


def test_sampling_settings_translation():
    greedy = sampling_kwargs(GenConfig(max_new_tokens=64, seed=2, top_p=0.5), [1, 7], 3)
    assert greedy == {
        "n": 1,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 64,
        "seed": 2 * 100_003 + 3,
        "stop_token_ids": [1, 7],
        "detokenize": False,
    }
    s = sampling_kwargs(GenConfig(temperature=0.6, top_p=0.95, k=16, seed=2), [1], 4)
    assert (s["n"], s["temperature"], s["top_p"]) == (16, 0.6, 0.95)
    assert s["seed"] != sampling_kwargs(GenConfig(temperature=0.6, k=16, seed=2), [1], 5)["seed"]  # per prompt
    assert "top_k" not in s  # vLLM's default: no top-k, as the HF backend (top_k=0)
    kw = engine_kwargs("m", GenConfig(dtype="bfloat16", vllm={"tensor_parallel_size": 8}))
    assert kw["dtype"] == "bfloat16" and kw["tensor_parallel_size"] == 8 and kw["model"] == kw["tokenizer"] == "m"


def test_outputs_cut_at_the_first_stop_token(tok):
    gens = to_generations(
        [([5, 6, 1, 9], "stop"), ([5, 6, 7], "length"), ([5, 2], "stop"), ([5], "stop")],
        [1, 2],
        lambda ids: tok.decode(ids, skip_special_tokens=True),
    )
    assert [g.token_ids for g in gens] == [[5, 6], [5, 6, 7], [5], [5]]
    assert [g.truncated for g in gens] == [False, True, False, False]
    assert gens[0].text == tok.decode([5, 6], skip_special_tokens=True)


def fake_vllm():
    """A stand-in `vllm` module: LLM runs the HF model greedily, one prompt at a time, and returns vLLM-shaped
    outputs (the stop token kept in token_ids; finish_reason 'stop' or 'length')."""
    from t3s.models import load_causal_lm, resolve_precision

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, model, dtype, **kw):
            assert dtype == "float32"
            self.model = load_causal_lm(model, resolve_precision("float32"))

        def generate(self, prompts, params, use_tqdm=False):
            assert len(prompts) == len(params)
            out = []
            for p, sp in zip(prompts, params):
                assert sp.temperature == 0.0 and sp.n == 1
                ids = torch.tensor([p["prompt_token_ids"]])
                with torch.no_grad():
                    seq = self.model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=False,
                        max_new_tokens=sp.max_tokens,
                        eos_token_id=sp.stop_token_ids,
                        pad_token_id=sp.stop_token_ids[0],
                    )[0, ids.shape[1] :].tolist()
                end = next((j for j, t in enumerate(seq) if t in sp.stop_token_ids), None)
                done = types.SimpleNamespace(
                    token_ids=seq if end is None else seq[: end + 1], finish_reason="length" if end is None else "stop"
                )
                out.append(types.SimpleNamespace(outputs=[done]))
            return out

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_eval_through_the_vllm_glue_writes_what_hf_writes(tiny, trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm())
    data = write_jsonl(tmp_path / "eight.jsonl", [json.loads(r) for r in open(tiny / "train.jsonl")][:8])
    common = [
        "--model",
        str(trained),
        "--data",
        str(data),
        "--quiet",
        "--dtype",
        "float32",
        "max_new_tokens=39",
        "batch_size=1",
    ]
    assert t3s(["eval", *common, "--out", str(tmp_path / "hf")]) == 0
    assert t3s(["eval", *common, "--out", str(tmp_path / "vllm"), "--backend", "vllm"]) == 0
    a = (tmp_path / "hf" / "samples.jsonl").read_text().splitlines()
    b = (tmp_path / "vllm" / "samples.jsonl").read_text().splitlines()
    assert a == b and len(a) == 8
    ends = {json.loads(s)["truncated"] for s in a}
    assert ends == {True, False}  # some responses ended at EOS, others ran out of budget
    assert json.loads((tmp_path / "vllm" / "metrics.json").read_text())["generation"]["backend"] == "vllm"
