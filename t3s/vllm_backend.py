"""Generation with vLLM (optional, GPU only): the same prompts, settings, outputs and grading as the Hugging Face
backend (`t3s.generation.generate`), much faster for long reasoning traces.

- `t3s eval --backend vllm` (and `eval.backend: vllm`): one vLLM engine on the model directory; vLLM spreads it
  over GPUs itself (`eval.vllm: {tensor_parallel_size: 8}`), so the command runs as one process, not under
  torchrun.
- The probe (`probe.backend: vllm`): TRL's colocated vLLM engine (`trl.generation.vllm_generation`), one per
  training process (or per tensor-parallel group), sharing the GPUs with training. Before each evaluation the
  current weights are copied into it in memory (gathered one tensor at a time under ZeRO-3 / FSDP; LoRA merged
  first), with no checkpoint written to disk. Prompts are split across the engines and gathered back in order.

Each prompt gets its own sampling seed (`seed * 100003 + prompt index`), so results do not depend on how
prompts are batched or split; they are not the same draws as the Hugging Face backend's. Responses are cut at
the first stop token and decoded with the model's tokenizer exactly as in `t3s.generation.generate`.

This module cannot run without vLLM and a GPU; only its pure helpers are tested on CPU.
"""

from __future__ import annotations

from typing import Any, Callable

from t3s import T3SError, dist
from t3s.config import GenConfig

BACKENDS = ("hf", "vllm")
SEED_STRIDE = 100_003


def require_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise T3SError(
            f"the vllm backend needs vLLM, which is not installed ({e}); on a CUDA machine run "
            "`pip install vllm` (or `pip install -e '.[vllm]'`), or use backend=hf"
        ) from None
    return vllm


def sampling_kwargs(cfg: GenConfig, stops: list[int], index: int, gen_config: Any = None) -> dict[str, Any]:
    """vLLM SamplingParams arguments for prompt number `index` under a GenConfig: k samples, temperature 0 =
    greedy, exactly the sampling settings of the HF backend (`t3s.generation.sampling_settings`: no top-k, min-p or
    repetition penalty unless `model_defaults` takes them from the model's `gen_config`), the prompt's own seed,
    stop at any EOS id; text is decoded by t3s, not by vLLM. A neutral setting is left out (vLLM's own default
    is the same neutral value, whatever its version spells it as)."""
    from t3s.generation import MODEL_SAMPLING_KEYS, sampling_settings

    st = sampling_settings(cfg, gen_config)
    out = {
        "n": cfg.k,
        "temperature": st["temperature"],
        "top_p": st["top_p"],
        "max_tokens": cfg.max_new_tokens,
        "seed": cfg.seed * SEED_STRIDE + index,
        "stop_token_ids": list(stops),
        "detokenize": False,
    }
    out.update({k: st[k] for k, neutral in MODEL_SAMPLING_KEYS.items() if st[k] != neutral})
    return out


def to_generations(
    completions: list[tuple[list[int], str | None]], stops: list[int], decode: Callable[[list[int]], str]
) -> list[Any]:
    """(token ids, finish reason) of one prompt's completions -> t3s Generations: the tokens before the first stop
    token (vLLM keeps the stop token in its output), truncated = the budget ran out."""
    from t3s.generation import Generation

    out = []
    for ids, reason in completions:
        ids = list(ids)
        end = next((j for j, t in enumerate(ids) if t in stops), None)
        toks = ids if end is None else ids[:end]
        out.append(Generation(toks, decode(toks), end is None and reason == "length"))
    return out


def engine_kwargs(model_path: str, cfg: GenConfig, trust_remote_code: bool = False) -> dict[str, Any]:
    """vllm.LLM arguments: the model and its tokenizer, t3s's dtype names, vLLM's neutral sampling defaults
    (`generation_config="vllm"`: t3s passes every sampling setting itself), then `eval.vllm` as given."""
    dtype = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[cfg.dtype]
    return {
        "model": model_path,
        "tokenizer": model_path,
        "dtype": dtype,
        "seed": cfg.seed,
        "trust_remote_code": trust_remote_code,
        "generation_config": "vllm",
        **cfg.vllm,
    }


def generate_with(
    llm: Any,
    tok: Any,
    prompts: list[list[int]],
    cfg: GenConfig,
    stops: list[int],
    indices: list[int] | None = None,
    progress: bool = False,
    gen_config: Any = None,
) -> list[list[Any]]:
    """k generations per prompt from a vLLM engine; `indices`: the prompts' numbers in the whole set (seeds);
    `gen_config`: the model's GenerationConfig (read only with `model_defaults`)."""
    vllm = require_vllm()
    indices = list(range(len(prompts))) if indices is None else indices
    params = [vllm.SamplingParams(**sampling_kwargs(cfg, stops, i, gen_config)) for i in indices]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=progress)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    return [to_generations([(o.token_ids, o.finish_reason) for o in r.outputs], stops, decode) for r in outs]


class Engine:
    """`t3s eval --backend vllm`: a vLLM engine on a model directory, with `t3s.generation.generate`'s interface."""

    def __init__(self, model_path: str, tok: Any, cfg: GenConfig, trust_remote_code: bool = False):
        if dist.launched():
            raise T3SError(
                "the vllm backend runs as one process and uses the GPUs through vLLM "
                "(eval.vllm.tensor_parallel_size=N); start it without torchrun / accelerate launch"
            )
        vllm = require_vllm()
        from types import SimpleNamespace

        from transformers import GenerationConfig

        from t3s.generation import eos_ids
        from t3s.models import resolve_model_path

        path = resolve_model_path(model_path)
        try:
            gen = GenerationConfig.from_pretrained(path)
        except OSError:
            gen = None
        self.tok, self.stops = tok, eos_ids(SimpleNamespace(generation_config=gen), tok)  # as the HF backend
        self.gen = gen
        self.llm = vllm.LLM(**engine_kwargs(path, cfg, trust_remote_code))

    def __call__(
        self, prompts: list[list[int]], cfg: GenConfig, progress: bool = True, desc: str = ""
    ) -> list[list[Any]]:
        return generate_with(self.llm, self.tok, prompts, cfg, self.stops, progress=progress, gen_config=self.gen)


class ProbeGenerator:
    """The probe's vLLM backend: a colocated engine per training process (TRL's VLLMGeneration), refreshed with
    the current weights in memory before each evaluation step."""

    ENGINE_KEYS = {
        "tensor_parallel_size": "tensor_parallel_size",
        "gpu_memory_utilization": "gpu_memory_utilization",
        "max_model_len": "max_model_length",
        "max_num_seqs": "max_num_seqs",
    }

    def __init__(self, trainer: Any, tok: Any, cfg: GenConfig, trust_remote_code: bool = False):
        require_vllm()
        unknown = sorted(set(cfg.vllm) - set(self.ENGINE_KEYS))
        if unknown:
            raise T3SError(
                f"eval.vllm: the probe's colocated engine takes {', '.join(sorted(self.ENGINE_KEYS))}; "
                f"not {', '.join(unknown)}"
            )
        self.trainer, self.tok, self.cfg, self.trust_remote_code = trainer, tok, cfg, trust_remote_code
        self.engine_args = {self.ENGINE_KEYS[k]: v for k, v in cfg.vllm.items()}
        self.engine_args.setdefault("gpu_memory_utilization", 0.3)  # training holds the rest of the GPU
        self.vg = None
        self.synced_step = -1

    def __call__(
        self, prompts: list[list[int]], cfg: GenConfig, progress: bool = True, desc: str = ""
    ) -> list[list[Any]]:
        from t3s.generation import eos_ids

        model = self.trainer.model
        if self.vg is None:  # created once training has prepared (wrapped, sharded) the model
            from trl.generation.vllm_generation import VLLMGeneration

            self.vg = VLLMGeneration(
                model,
                self.trainer.accelerator,
                self.tok,
                mode="colocate",
                trust_remote_code=self.trust_remote_code,
                **self.engine_args,
            )
        step = self.trainer.state.global_step
        if step != self.synced_step:  # every process takes part (gathering sharded weights is a collective)
            self.vg.sync_weights()
            self.synced_step = step
        tp = self.engine_args.get("tensor_parallel_size", 1)
        stops = eos_ids(model, self.tok)
        # engines are per tensor-parallel group: the members of a group generate the same prompts
        return dist.map_rows(
            lambda part: generate_with(
                self.vg.llm,
                self.tok,
                [p for _, p in part],
                cfg,
                stops,
                [i for i, _ in part],
                gen_config=getattr(model, "generation_config", None),
            ),
            list(enumerate(prompts)),
            [len(p) for p in prompts],
            part=dist.rank() // tp,
            parts=dist.world() // tp,
        )
