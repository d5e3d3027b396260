"""Stage 5: recovering residual transfer, θ_RRT = θ_0 + (θ_T − θ_b): keep only the updates made after the
bottleneck.

Streams tensor by tensor from the three safetensors checkpoints (memory-mapped) and writes output shards of at
most `max_shard_bytes`, so peak memory is about one shard, not three models. Each tensor is computed in float32
(float64 for float64 tensors) and rounded once to the widest dtype of the three: θ_0's, unless the probe's
checkpoints are wider (t3s trains fp32 master weights, so a bf16 student's θ_b and θ_T are fp32; rounding
θ_0 + (θ_T − θ_b) to bf16 would lose the small updates again, every update of a norm weight near 1 among them).
The copied config.json then names the result's dtype.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from t3s import T3SError
from t3s.artifacts import atomic_dir, read_json, write_json
from t3s.models import resolve_model_path

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# Files copied from θ_0 so the result loads like the student it came from.
_COPY = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def _weight_map(model_dir: Path) -> dict[str, Path]:
    """tensor name -> safetensors file holding it."""
    if (model_dir / INDEX).exists():
        index = read_json(model_dir / INDEX)
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise T3SError(f"{model_dir / INDEX}: no weight_map (a corrupt shard index)")
        wmap = {name: model_dir / f for name, f in index["weight_map"].items()}
        for f in sorted(set(wmap.values())):
            _open_safetensors(f).keys()  # every shard exists and has a complete header
        return wmap
    if (model_dir / SINGLE).exists():
        return {name: model_dir / SINGLE for name in _open_safetensors(model_dir / SINGLE).keys()}
    raise T3SError(f"{model_dir}: no safetensors weights ({SINGLE} or {INDEX})")


def _open_safetensors(path: Path):
    """A memory-mapped safetensors file, or one clear error when it is missing, truncated or corrupt."""
    from safetensors import safe_open

    try:
        return safe_open(path, "pt")
    except Exception as e:  # noqa: BLE001 -- SafetensorError, FileNotFoundError, ...
        raise T3SError(f"{path}: not a readable safetensors file, truncated or corrupt? ({e})") from e


def _arch(model_dir: Path) -> dict:
    cfg = read_json(model_dir / "config.json")
    keys = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
    return {k: cfg.get(k) for k in keys}


class _Reader:
    """Open safetensors files lazily and keep them open (memory-mapped) for tensor-by-tensor reads."""

    def __init__(self, wmap: dict[str, Path]):
        self.wmap, self.handles = wmap, {}

    def meta(self, name: str) -> tuple[list[int], str]:
        h = self._open(self.wmap[name])
        s = h.get_slice(name)
        return list(s.get_shape()), s.get_dtype()

    def get(self, name: str) -> torch.Tensor:
        return self._open(self.wmap[name]).get_tensor(name)

    def _open(self, path: Path):
        if path not in self.handles:
            self.handles[path] = _open_safetensors(path)
        return self.handles[path]


def rrt(
    init: str,
    bottleneck: str,
    final: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    max_shard_bytes: int = 2 * 1024**3,
    progress: bool = True,
) -> dict:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    dirs = {k: Path(resolve_model_path(p)) for k, p in (("init", init), ("bottleneck", bottleneck), ("final", final))}
    for k, d in dirs.items():
        if not d.is_dir():
            raise T3SError(f"--{k} {d}: not a local model directory")
    archs = {k: _arch(d) for k, d in dirs.items()}
    for k in ("bottleneck", "final"):
        if archs[k] != archs["init"]:
            raise T3SError(
                f"architectures differ: --init {dirs['init']} is {archs['init']}, --{k} {dirs[k]} is {archs[k]}"
            )
    readers = {k: _Reader(_weight_map(d)) for k, d in dirs.items()}
    names = sorted(readers["init"].wmap)
    for k in ("bottleneck", "final"):
        if sorted(readers[k].wmap) != names:
            missing = set(names) ^ set(readers[k].wmap)
            raise T3SError(f"--{k} {dirs[k]} has other tensors than --init: {', '.join(sorted(missing)[:5])}")
    for name in names:  # dtypes may differ (a bf16 student trained in fp32): the result takes the widest
        shapes = {k: r.meta(name)[0] for k, r in readers.items()}
        if len({json.dumps(m) for m in shapes.values()}) != 1:
            raise T3SError(f"tensor '{name}' differs in shape: {shapes}")

    with atomic_dir(out, overwrite) as tmp:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size, files, weight_map, total = 0, [], {}, 0

        def flush() -> None:
            nonlocal size
            if shards[-1]:
                fname = f"model-{len(files) + 1:05d}.safetensors"
                save_file(shards[-1], tmp / fname, metadata={"format": "pt"})
                files.append(fname)
                weight_map.update({n: fname for n in shards[-1]})
                shards[-1] = {}
                size = 0

        widened = set()
        for name in tqdm(names, desc="rrt", unit="tensor", disable=not progress):
            t0, tf, tb = readers["init"].get(name), readers["final"].get(name), readers["bottleneck"].get(name)
            if not t0.is_floating_point():
                res = t0.contiguous()  # integer buffers are copied from θ_0
            else:
                acc = torch.float64 if torch.float64 in (t0.dtype, tf.dtype, tb.dtype) else torch.float32
                dtype = max((t0.dtype, tf.dtype, tb.dtype), key=lambda d: torch.finfo(d).bits)
                if dtype != t0.dtype:
                    widened.add(str(dtype).removeprefix("torch."))
                res = (t0.to(acc) + (tf.to(acc) - tb.to(acc))).to(dtype).contiguous()
            nbytes = res.numel() * res.element_size()
            if size and size + nbytes > max_shard_bytes:
                flush()
            shards[-1][name] = res
            size += nbytes
            total += nbytes
        flush()
        if len(files) == 1:
            (tmp / files[0]).rename(tmp / SINGLE)
        else:
            write_json(tmp / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
        for f in _COPY:
            if (dirs["init"] / f).exists():
                shutil.copy2(dirs["init"] / f, tmp / f)
        if len(widened) == 1:  # the result is wider than θ_0: say so in its config, for dtype="auto" loaders
            cfg = read_json(tmp / "config.json")
            for key in ("torch_dtype", "dtype"):
                if key in cfg:
                    cfg[key] = next(iter(widened))
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        info = {
            "kind": "t3s-rrt",
            "formula": "init + (final - bottleneck)",
            **{k: str(d) for k, d in dirs.items()},
            "tensors": len(names),
            "bytes": total,
            "widened_to": sorted(widened),
        }
        write_json(tmp / "t3s_rrt.json", info)
    return info
