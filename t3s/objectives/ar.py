"""The autoregressive objective: a causal LM trained on the teacher's tokens that its keep-mask keeps.

Dropped positions get label −100 (the tokens stay in the input). Training runs on TRL's SFTTrainer, so PEFT,
accelerate (DDP, DeepSpeed, FSDP), `report_to` trackers and checkpoint resume behave as in TRL.

Loss normalisation (`train.normalize`):
- `kept` (default): sum of the kept tokens' cross-entropy / number of kept tokens in the global batch (all
  gradient-accumulation micro-batches and all processes). This is the Trainer's own `num_items_in_batch` path.
- `response`: the same sum / number of *response* tokens in the global batch, so a masked run keeps SFT's
  effective step size per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from t3s import T3SError, dist
from t3s.config import GenConfig, TrainConfig
from t3s.data import Example
from t3s.models import Precision, load_causal_lm
from t3s.modes import RUN_MODES
from t3s.objectives.base import (
    Objective,
    Prepared,
    Selector,
    finite_loss_callback,
    keep_the_loss_scaled,
    quiet,
    selection_rows,
    training_arguments,
)

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

    from t3s.config import RunConfig
    from t3s.generation import Generation
    from t3s.objectives.base import Projection
    from t3s.score import ScoreSet
    from t3s.select import Selection


class Autoregressive(Objective):
    name = "ar"
    modes = RUN_MODES
    selection_stat, selection_header = "dropped_fraction", "dropped tokens %"
    samples_with = "transformers generate"

    def load(
        self, path: str | Path, precision: Precision, trust_remote_code: bool = False, *, place: bool = True
    ) -> PreTrainedModel:
        return load_causal_lm(path, precision, trust_remote_code, place=place)

    def selector(self, cfg: RunConfig) -> Selector:
        return Selector(str(cfg.student), self, cfg.train, is_student=True)

    def columns(self, examples: list[Example], sel: Selection | None, where: str, cfg: TrainConfig) -> dict[str, list]:
        if sel is not None and sel.forced is not None:
            raise T3SError(
                f"the selection {where} is a forced set for a masked-diffusion student, not a "
                "keep-mask; the student is an autoregressive model"
            )
        columns = {"input_ids": [e.input_ids for e in examples], "labels": apply_selection(examples, sel, where)}
        if cfg.normalize == "response":
            columns["response_labels"] = [e.labels() for e in examples]
        return columns

    def trainer(
        self,
        model: PreTrainedModel,
        data: Prepared,
        cfg: TrainConfig,
        output_dir: str | Path,
        *,
        progress: bool = True,
        callbacks: list[TrainerCallback] | None = None,
    ) -> Trainer:
        return make_trainer(model, data, cfg, output_dir, progress=progress, callbacks=callbacks)

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
        from t3s.generation import generate

        return generate(model, tok, prompts, gcfg, precision, progress, desc)

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
        from t3s.select import select

        return select(
            init, bottleneck, mode, threshold, seed=seed, bottleneck_step=bottleneck_step, reference=reference
        )

    def confidence(
        self, model: PreTrainedModel, examples: list[Example], precision: Precision, pad_id: int
    ) -> list[np.ndarray]:
        from t3s.score import response_logprobs

        return dist.map_forward(  # several processes share the rows
            model,
            lambda part: response_logprobs(model, part, precision, progress=False, pad_id=pad_id),
            examples,
            [len(e.input_ids) for e in examples],
        )

    def trained_on(self, summary: dict[str, Any]) -> str:
        return f"{summary['kept_tokens']}/{summary['response_tokens']} response tokens trained on"


def apply_selection(examples: list[Example], sel: Selection | None, where: str = "") -> list[list[int]]:
    """Labels per example: −100 on the prompt and on dropped response tokens."""
    if sel is None:
        return [e.labels() for e in examples]
    out = []
    for e, i in zip(examples, selection_rows(examples, sel, where)):
        out.append([-100] * e.prompt_len + [t if k else -100 for t, k in zip(e.response_ids, sel.keep[i])])
    return out


def _trainer_class():
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class Collator:
        """TRL's collator, plus the padded response labels when the loss is normalised by response tokens."""

        def __init__(self, pad_token_id: int, with_response: bool):
            self.base = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)
            self.with_response = with_response

        def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = self.base([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
            if self.with_response:
                alt = self.base([{"input_ids": e["input_ids"], "labels": e["response_labels"]} for e in examples])
                out["response_labels"] = alt["labels"]
            return out

    class T3STrainer(SFTTrainer):
        """SFTTrainer whose loss is Σ CE over the kept tokens / N, exactly over the global batch (every
        micro-batch and process), for every model class: N = the kept tokens (normalize=kept) or the response
        tokens (normalize=response) of the global batch.

        TRL's compute_loss divides the summed token losses by `num_items_in_batch` when it is given, and by the
        micro-batch's own count otherwise. transformers computes `num_items_in_batch` only for models that accept
        loss kwargs (`accepts_loss_kwargs`); for the others (several multimodal and newer classes) the loss would
        silently become a mean of per-micro-batch means. This trainer always counts N itself and says that the
        loss is already scaled for gradient accumulation."""

        loss_is_scaled_for_ga = True  # the loss is divided by the global N, never again by the accumulation steps

        def __init__(self, *args, normalize: str = "kept", **kwargs):
            self.normalize = normalize
            super().__init__(*args, **kwargs)
            keep_the_loss_scaled(self)  # transformers < 5.19 has no loss_is_scaled_for_ga

        def _get_num_items_in_batch(self, batch_samples, device):
            key = "response_labels" if self.normalize == "response" else "labels"
            # causal LM: position p predicts token p + 1, so the first label never counts (the Trainer's own rule);
            # counted where the batches are (the training device), no host round trip
            n = sum((b[key][..., 1:] != -100).sum().to(device) for b in batch_samples)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                n = self.accelerator.gather(n).sum()  # TRL multiplies the loss by the process count to match
            return n

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs.pop("response_labels", None)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return T3STrainer, Collator


def make_trainer(
    model: PreTrainedModel,
    data: Prepared,
    cfg: TrainConfig,
    output_dir: str | Path,
    *,
    progress: bool = True,
    callbacks: list[TrainerCallback] | None = None,
) -> Trainer:
    """TRL SFTTrainer configured from a TrainConfig (precision, checkpoints, LoRA, loss normalisation)."""
    from trl import SFTConfig

    args = SFTConfig(
        **training_arguments(cfg, output_dir, progress),
        max_length=None,  # rows are rendered (and truncated by policy) by t3s.data
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    peft_config = None
    if cfg.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    T3STrainer, Collator = _trainer_class()
    trainer = T3STrainer(
        model=model,
        args=args,
        train_dataset=data.dataset,
        processing_class=data.tokenizer,
        data_collator=Collator(data.tokenizer.pad_token_id, cfg.normalize == "response"),
        peft_config=peft_config,
        callbacks=[*(callbacks or []), finite_loss_callback(cfg.stop_on_divergence)],
        normalize=cfg.normalize,
    )
    return quiet(trainer, progress)
