import json

import pytest
import torch
from safetensors.torch import load_file

from t3s import T3SError
from t3s.models import load_causal_lm, resolve_precision
from t3s.rrt import rrt
from t3s.tiny import build_model


def save(tmp_path, name, seed, dtype=torch.float32, **kw):
    m = build_model(64, seed=seed, **kw).to(dtype)
    m.save_pretrained(tmp_path / name)
    return str(tmp_path / name)


def tensors(d):
    from pathlib import Path

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_rrt_is_exact_arithmetic(tmp_path):
    i, b, f = save(tmp_path, "i", 0), save(tmp_path, "b", 1), save(tmp_path, "f", 2)
    rrt(i, b, f, tmp_path / "out", progress=False)
    got, t0, tb, tf = tensors(tmp_path / "out"), tensors(i), tensors(b), tensors(f)
    assert set(got) == set(t0)
    for name in t0:
        assert torch.equal(got[name], t0[name] + (tf[name] - tb[name])), name
    # identity checks: final == bottleneck gives back θ0; bottleneck == init gives back θT
    rrt(i, f, f, tmp_path / "same", progress=False)
    assert all(torch.equal(v, t0[k]) for k, v in tensors(tmp_path / "same").items())
    rrt(i, i, f, tmp_path / "final", progress=False)
    assert all(torch.allclose(v, tf[k], atol=1e-6) for k, v in tensors(tmp_path / "final").items())
    model = load_causal_lm(tmp_path / "out", resolve_precision("float32"))
    assert torch.equal(dict(model.named_parameters())["lm_head.weight"], got["lm_head.weight"])


def test_rrt_sharded_output_and_bf16_rounding(tmp_path):
    i, b, f = (save(tmp_path, n, s, torch.bfloat16) for n, s in (("i", 0), ("b", 1), ("f", 2)))
    rrt(i, b, f, tmp_path / "out", max_shard_bytes=20_000, progress=False)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    got, t0, tb, tf = tensors(tmp_path / "out"), tensors(i), tensors(b), tensors(f)
    for name in t0:
        want = (t0[name].float() + (tf[name].float() - tb[name].float())).to(torch.bfloat16)
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], want), name
    load_causal_lm(tmp_path / "out", resolve_precision("float32"))  # the sharded result loads


def test_rrt_across_dtypes_keeps_the_fp32_updates(tmp_path):
    """A bf16 student whose probe and SFT run were saved in fp32 (t3s trains fp32 master weights): the result is
    fp32, so a difference θ_T − θ_b smaller than bf16's spacing survives (rounding to bf16 would lose it)."""
    i = save(tmp_path, "i", 0, torch.bfloat16)
    b = save(tmp_path, "b", 1)
    fm = build_model(64, seed=1)
    with torch.no_grad():
        for p in fm.parameters():
            p.add_(1e-5)  # θ_T = θ_b + 1e-5: an update bf16 cannot hold next to a weight near 1
    fm.save_pretrained(tmp_path / "f")
    rrt(i, b, str(tmp_path / "f"), tmp_path / "out", progress=False)
    got, t0, tb, tf = tensors(tmp_path / "out"), tensors(i), tensors(b), tensors(tmp_path / "f")
    for name in t0:
        want = t0[name].float() + (tf[name] - tb[name])
        assert got[name].dtype == torch.float32 and torch.equal(got[name], want), name
    norm = next(n for n in t0 if "norm" in n)
    assert not torch.equal(got[norm].to(torch.bfloat16).float(), got[norm])  # bf16 would have lost it
    assert json.loads((tmp_path / "out" / "config.json").read_text()).get("dtype", "float32") == "float32"
    assert json.loads((tmp_path / "out" / "t3s_rrt.json").read_text())["widened_to"] == ["float32"]


def test_rrt_refuses_mismatches_and_leaves_nothing(tmp_path):
    i, b = save(tmp_path, "i", 0), save(tmp_path, "b", 1)
    deep = save(tmp_path, "deep", 2, layers=3)
    with pytest.raises(T3SError, match="architectures differ"):
        rrt(i, b, deep, tmp_path / "out", progress=False)
    wide = save(tmp_path, "wide", 2, hidden=32)
    with pytest.raises(T3SError, match="architectures differ"):
        rrt(i, wide, b, tmp_path / "out", progress=False)
    with pytest.raises(T3SError, match="not a Hugging Face model directory"):
        rrt(i, b, str(tmp_path), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
