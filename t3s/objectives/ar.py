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
        reference: PreTrainedModel | None = None,
    ) -> Trainer:
        return make_trainer(model, data, cfg, output_dir, progress=progress, callbacks=callbacks, reference=reference)

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


def trainer_class():
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

        def __init__(self, *args, normalize: str = "kept", train: TrainConfig | None = None, reference=None, **kw):
            self.normalize = normalize
            self.token_loss = "nll" if train is None else train.loss  # train.loss: eaft | memft | asft
            self.loss_settings = {} if train is None else train.loss_settings()
            super().__init__(*args, **kw)
            keep_the_loss_scaled(self)  # transformers < 5.19 has no loss_is_scaled_for_ga
            if self.token_loss != "nll":
                check_online_loss(self, reference)
            self.reference = None
            if reference is not None:  # asft without LoRA: θ_0, frozen, placed as the model is (one process: as is)
                reference.requires_grad_(False)
                self.reference = self.accelerator.prepare_model(reference.eval(), evaluation_mode=True)
            self.kept_in_step = None  # memft: tokens kept so far in this optimizer step, on this process
            self.step_losses = None  # ... and the losses its earlier micro-batches returned

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
            if self.token_loss == "nll":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = self.online_loss(model, inputs, num_items_in_batch)
            if not return_outputs:
                return loss
            import torch

            with torch.no_grad():  # evaluation asking for the logits: one more forward, outside training
                return loss, model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)

        def online_loss(self, model, inputs, num_items_in_batch):
            """Σ w·CE (+ asft's KL) over the labelled tokens / N, N counted over the global batch as for SFT.
            One forward of the model (asft adds a no-grad one of θ_0): memft reads the label's log-probability
            from TRL's fused head; eaft and asft need every logit of a response position, so they build them
            (as LLaMA-Factory and the authors' code do)."""
            import torch

            from t3s.objectives import token_losses as tl

            labels = inputs["labels"]
            mode = "train" if model.training else "eval"
            n = (labels[:, 1:] != -100).sum() if num_items_in_batch is None else num_items_in_batch
            if self.token_loss == "memft":
                out = model(**inputs, use_cache=False, fused_lm_head=True)  # log p of each label, 0 where -100
                kept = out.label_mask & tl.memft_kept(out.log_probs, self.loss_settings["memft_threshold"])
                total = -(out.log_probs * kept).sum()
                count = kept.sum()
                if self.normalize == "kept" and model.training:  # the global kept count: see training_step
                    self.kept_in_step = count if self.kept_in_step is None else self.kept_in_step + count
                self._metrics[mode]["memft_kept"].append(float(count) / max(int(out.label_mask.sum()), 1))
            else:
                logits_inputs = {k: v for k, v in inputs.items() if k != "labels"}
                reference = self.reference_logits(model, logits_inputs) if self.token_loss == "asft" else None
                logits = model(**logits_inputs, use_cache=False).logits[:, :-1]
                target = labels[:, 1:]
                where = target != -100
                rows = logits[where]  # (labelled tokens, vocabulary)
                logp_all = rows.float().log_softmax(dim=-1)
                logp = logp_all.gather(-1, target[where].unsqueeze(-1)).squeeze(-1)
                if self.token_loss == "eaft":
                    s = self.loss_settings
                    weights = tl.eaft_weights(rows, s["eaft_k"], s["eaft_alpha"])
                    total = -(logp * weights).sum()
                    self._metrics[mode]["eaft_weight"].append(float(weights.detach().mean()) if len(weights) else 0.0)
                else:  # asft: DFT + λ KL(θ_0 || θ)
                    kl = tl.kl_from_reference(logp_all, reference[:, :-1][where])
                    total = -(logp * tl.dft_weights(logp)).sum() + self.loss_settings["asft_kl_weight"] * kl.sum()
                    self._metrics[mode]["asft_kl"].append(float(kl.detach().mean()) if len(kl) else 0.0)
            # as TRL's compute_loss: a batch without labelled tokens gives a finite zero; N counts every process's
            # tokens and DDP averages the gradients, hence the process count
            loss = total / torch.as_tensor(n, device=total.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return loss

        def reference_logits(self, model, logits_inputs):
            """θ_0's logits (asft), without gradient: the frozen copy, or under LoRA the model itself with its
            adapter disabled (no second copy in memory). The unwrapped module is called: a forward through the DDP
            wrapper outside the one that backpropagates would disturb its gradient bookkeeping."""
            import torch

            with torch.no_grad():
                if self.reference is not None:
                    return self.reference(**logits_inputs, use_cache=False).logits
                inner = self.accelerator.unwrap_model(model)
                with inner.disable_adapter():
                    return inner(**logits_inputs, use_cache=False).logits

        def training_step(self, model, inputs, num_items_in_batch=None):
            """memft normalised by the kept tokens (normalize: kept): how many a global batch keeps is known only
            once its last micro-batch has been through the model, so each micro-batch's loss is divided by the
            global count of labelled tokens, and after the last backward (the gradients are then summed over
            processes) the gradients and the logged loss are scaled by labelled / kept, before clipping and the
            optimizer step. No second forward, exact under accumulation and across processes."""
            import torch

            loss = super().training_step(model, inputs, num_items_in_batch)
            if self.kept_in_step is None:  # not memft normalised by the kept tokens
                return loss
            if not self.accelerator.sync_gradients:  # more micro-batches to come in this step
                self.step_losses = loss if self.step_losses is None else self.step_losses + loss
                return loss
            kept, self.kept_in_step = self.kept_in_step, None
            if self.args.world_size > 1:
                kept = self.accelerator.gather(kept.reshape(1)).sum()
            labelled = torch.as_tensor(num_items_in_batch, dtype=torch.float64).item()
            factor = labelled / max(kept.item(), 1)  # a number: sharded (DTensor) gradients take it as well
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(factor)
            # the Trainer sums the loss each micro-batch returns: the earlier ones are in already, so this one
            # carries the correction of the whole step
            earlier, self.step_losses = (loss.new_zeros(()) if self.step_losses is None else self.step_losses), None
            return (earlier + loss) * factor - earlier

    return T3STrainer, Collator


def check_online_loss(trainer, reference) -> None:
    """Refuse, before training, an online token loss where it cannot be computed as documented."""
    from accelerate.utils import DistributedType, is_peft_model

    loss = trainer.token_loss
    engine = trainer.accelerator.distributed_type
    if getattr(trainer, "aux_loss_enabled", False):
        raise T3SError(f"train.loss={loss}: a mixture-of-experts model's router loss is not added by t3s's losses")
    if loss == "memft" and trainer.normalize == "kept":
        why = (
            "DeepSpeed steps inside that backward"
            if engine == DistributedType.DEEPSPEED
            else "each process normalises by its own tokens (trainer.average_tokens_across_devices: false)"
            if trainer.args.world_size > 1 and not trainer.args.average_tokens_across_devices
            else None
        )
        if why:
            raise T3SError(
                "train.loss=memft: the loss is normalised by the kept tokens of the global batch, known after its "
                f"last backward, and {why}; set train.normalize=response"
            )
    if loss == "asft" and reference is None and not is_peft_model(trainer.model):
        raise T3SError("train.loss=asft needs θ_0: a reference model, or LoRA (lora_r > 0)")
    if loss == "asft" and reference is not None and engine in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise T3SError(
            "train.loss=asft without LoRA under DeepSpeed or FSDP is not supported: the frozen copy of θ_0 would "
            "have to be sharded too; use lora_r > 0 (θ_0 is then the adapter-disabled model, no copy)"
        )


def make_trainer(
    model: PreTrainedModel,
    data: Prepared,
    cfg: TrainConfig,
    output_dir: str | Path,
    *,
    progress: bool = True,
    callbacks: list[TrainerCallback] | None = None,
    reference: PreTrainedModel | None = None,
) -> Trainer:
    """TRL SFTTrainer configured from a TrainConfig (precision, checkpoints, LoRA, loss normalisation, the
    per-token loss). `reference`: θ_0 for asft without LoRA (a second copy of the model, frozen)."""
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
    T3STrainer, Collator = trainer_class()
    trainer = T3STrainer(
        model=model,
        args=args,
        train_dataset=data.dataset,
        processing_class=data.tokenizer,
        data_collator=Collator(data.tokenizer.pad_token_id, cfg.normalize == "response"),
        peft_config=peft_config,
        callbacks=[*(callbacks or []), finite_loss_callback(cfg.stop_on_divergence)],
        normalize=cfg.normalize,
        train=cfg,
        reference=reference if cfg.needs_reference else None,
    )
    return quiet(trainer, progress)
