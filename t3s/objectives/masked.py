"""The masked-diffusion objective (LLaDA-style students): a bidirectional mask predictor, trained with the
diffusion loss and joint masking of a forced set, sampled with the reverse process. The machinery (loading with
the LM head, loss, sampler) is in `t3s.objectives.diffusion`, the cross-tokenizer Δc projection in
`t3s.objectives.projection`; this class is what the stages see.

Δc comes from an autoregressive selector (the run's `selector`): a mask predictor has no left-to-right
confidence of its own, so `confidence` is None and the probe of a diffusion student records accuracy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from t3s import T3SError
from t3s.config import DiffusionConfig, GenConfig, TrainConfig
from t3s.data import Example
from t3s.models import Precision
from t3s.modes import DIFFUSION_MODES
from t3s.objectives.base import Objective, Prepared, Selector, selection_rows

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

    from t3s.config import RunConfig
    from t3s.generation import Generation
    from t3s.objectives.base import Projection
    from t3s.score import ScoreSet
    from t3s.select import Selection


class MaskedDiffusion(Objective):
    name = "diffusion"
    modes = DIFFUSION_MODES
    selection_stat, selection_header = "forced_fraction", "forced (always masked) tokens %"
    samples_with = "the diffusion sampler"

    def __init__(self, cfg: DiffusionConfig | None = None):
        self.cfg = cfg or DiffusionConfig()

    @classmethod
    def from_config(cls, cfg: RunConfig, model: str | Path | None = None) -> MaskedDiffusion:
        """`diffusion.attention: auto` is resolved here for a student read block-causally (LLaDA-2), so that the
        sampler's fingerprint says so: its evaluations differ from those of earlier versions, which read every
        student bidirectionally. Other students keep `auto` (bidirectional, as before) and their fingerprints."""
        import dataclasses

        from t3s.objectives.diffusion import auto_attention, model_type

        dcfg = cfg.diffusion
        model = model or cfg.student
        # a model whose config cannot be read (None) leaves `auto` to the sampler, which reads the loaded model
        if dcfg.attention == "auto" and model and auto_attention(model_type(str(model))) == "block_causal":
            dcfg = dataclasses.replace(dcfg, attention="block_causal")
        return cls(dcfg)

    @classmethod
    def recognises(cls, model: str | Path, trust_remote_code: bool = False) -> bool:
        """A *ForMaskedLM, LLaDA, LLaDA-2 or Dream model."""
        from t3s.objectives.diffusion import is_mask_predictor

        return is_mask_predictor(model, trust_remote_code)

    def load(
        self, path: str | Path, precision: Precision, trust_remote_code: bool = False, *, place: bool = True
    ) -> PreTrainedModel:
        from t3s.objectives.diffusion import load_mask_predictor

        return load_mask_predictor(path, precision, trust_remote_code, place=place)

    def selector(self, cfg: RunConfig) -> Selector:
        """A mask predictor has no left-to-right confidence: Δc comes from the run's autoregressive `selector`
        (ideally with the student's tokenizer), probed with `selector_train`'s settings."""
        from t3s.objectives.ar import Autoregressive

        if not cfg.selector:
            raise T3SError(
                f"objective: {self.name} needs `selector`: an autoregressive model (ideally with the student's "
                "tokenizer) whose probe and scores give Δc"
            )
        return Selector(
            str(cfg.selector),
            Autoregressive(),
            cfg.selector_train_config(),
            is_student=False,
            probe_student=cfg.probe_student,
        )

    def columns(self, examples: list[Example], sel: Selection | None, where: str, cfg: TrainConfig) -> dict[str, list]:
        return {
            "input_ids": [e.input_ids for e in examples],
            "prompt_len": [e.prompt_len for e in examples],
            "forced": forced_sets(examples, sel, where),
            "row": list(range(len(examples))),
        }

    def trainer(
        self,
        model: PreTrainedModel,
        data: Prepared,
        cfg: TrainConfig,
        output_dir: str | Path,
        *,
        progress: bool = True,
        callbacks: list[TrainerCallback] | None = None,
        reference: PreTrainedModel | None = None,
    ) -> Trainer:
        from t3s.objectives.diffusion import make_trainer

        if cfg.loss != "nll":  # the diffusion loss is over masked positions, not next tokens
            raise T3SError(f"train.loss={cfg.loss} trains an autoregressive student; this one is masked-diffusion")
        return make_trainer(model, data, cfg, self.cfg, output_dir, progress=progress, callbacks=callbacks)

    def generate(
        self,
        model: PreTrainedModel,
        tok: PreTrainedTokenizerBase,
        prompts: list[list[int]],
        gcfg: GenConfig,
        precision: Precision,
        progress: bool = True,
        desc: str = "generate",
    ) -> list[list[Generation]]:
        from t3s.objectives.diffusion import sample

        return sample(model, tok, prompts, gcfg, self.cfg, precision, progress, desc)

    def select(
        self,
        init: ScoreSet,
        bottleneck: ScoreSet,
        mode: str,
        *,
        threshold: float | str,
        seed: int,
        bottleneck_step: int | None,
        reference: ScoreSet | None = None,
        project: Projection | None = None,
    ) -> Selection:
        return select_forced(
            init, bottleneck, mode, self.cfg.tau, seed=seed, bottleneck_step=bottleneck_step, project=project
        )

    def confidence(self, model: PreTrainedModel, examples: list[Example], precision: Precision, pad_id: int) -> None:
        return None

    def check_backend(self, backend: str, setting: str) -> None:
        if backend == "vllm":
            raise T3SError(
                f"{setting}=vllm generates with autoregressive models only (vLLM has no masked-diffusion "
                f"models); a masked-diffusion student generates with its own sampler: {setting}=hf"
            )

    def training_inputs(self) -> dict[str, Any]:
        return self.cfg.training()

    def sampler_inputs(self) -> dict[str, Any]:
        return self.cfg.sampler()

    def selection_inputs(self) -> dict[str, Any]:
        return self.cfg.selection()

    def record(self) -> dict[str, Any]:
        import dataclasses

        return {"objective": self.name, "diffusion": dataclasses.asdict(self.cfg)}

    def trained_on(self, summary: dict[str, Any]) -> str:
        return (
            f"diffusion objective, {summary['forced_tokens']}/{summary['response_tokens']} response tokens "
            "always masked"
        )


def forced_sets(examples: list[Example], sel: Selection | None, where: str = "") -> list[list[bool]]:
    """Per example, which response positions are always masked (the forced set)."""
    if sel is None:
        return [[False] * len(e.response_ids) for e in examples]
    if sel.forced is None:
        raise T3SError(
            f"the selection {where} is a keep-mask for an autoregressive student; a diffusion student "
            "needs a forced set (`t3s select --forced`)"
        )
    return [[bool(x) for x in sel.forced[i]] for i in selection_rows(examples, sel, where)]


def forced_mask(mode: str, delta: np.ndarray, tau: float, seed: int = 0) -> np.ndarray:
    """Flat forced set over the student's response tokens (True = always masked). NaN Δc (no selector token
    overlaps the student token) is never forced. `t3s`: Δc < −tau; `random`: as many positions, uniformly at
    random among those with a Δc (seeded); `sft`: none."""
    if mode not in DIFFUSION_MODES:
        raise T3SError(f"unknown forced-set mode '{mode}' (choose from {', '.join(DIFFUSION_MODES)})")
    known = ~np.isnan(delta)
    yet = known & (np.nan_to_num(delta, nan=0.0) < -tau)
    forced = np.zeros(delta.shape, dtype=bool)
    if mode == "t3s":
        forced = yet
    elif mode == "random":
        pool = np.flatnonzero(known)
        forced[np.random.default_rng(seed).choice(pool, size=int(yet.sum()), replace=False)] = True
    return forced


def select_forced(
    init: ScoreSet,
    bottleneck: ScoreSet,
    mode: str,
    tau: float = 0.2,
    seed: int = 0,
    bottleneck_step: int | None = None,
    project: Any = None,
) -> Selection:
    """The forced set of a masked-diffusion student from an autoregressive selector's two score sets (what
    `MaskedDiffusion.select` returns; `t3s select --forced` calls it through the objective).
    `project`: None when the student shares the selector's tokenizer; otherwise a function
    (selection with the selector's Δc) -> (Δc per row on the student's tokens, student response ids per row,
    student fingerprints, student tokens with no overlapping selector token)."""
    from t3s.select import Selection, quantiles, select, split_rows

    base = select(init, bottleneck, "sft", 0.0, seed, bottleneck_step)
    delta_rows, response_ids, fps, no_overlap = base.delta, base.response_ids, base.meta["fingerprints"], 0
    if project is not None:
        delta_rows, response_ids, fps, no_overlap = project(base)
    sizes = [len(d) for d in delta_rows]
    delta = np.concatenate(delta_rows).astype(np.float32)
    forced = forced_mask(mode, delta, tau, seed)
    n = int(delta.size)
    stats = {
        "rows": len(sizes),
        "tokens": n,
        "forced_tokens": int(forced.sum()),
        "forced_fraction": float(forced.mean()) if n else 0.0,
        "dropped_fraction": 0.0,  # nothing is dropped from a diffusion student's loss
        "yet_to_learn_fraction": float((np.nan_to_num(delta, nan=0.0) < -tau).mean()) if n else 0.0,
        "no_overlap_tokens": no_overlap,
        "delta": quantiles(delta[~np.isnan(delta)]),
    }
    meta = {
        **base.meta,
        "mode": mode,
        "objective": "diffusion",
        "tau": tau,
        "threshold": None,
        "seed": seed if mode == "random" else None,
        "fingerprints": fps,
        "selector_fingerprints": base.meta["fingerprints"],
        "projected": project is not None,
        "stats": stats,
    }
    return Selection(
        meta,
        list(base.ids),
        [np.asarray(r) for r in response_ids],
        [np.ones(k, dtype=bool) for k in sizes],
        split_rows(delta, sizes),
        split_rows(forced, sizes),
    )
