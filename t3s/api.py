"""T3S in your own training code: the probe as a Trainer callback, and selections as a `labels` column.

For a plain `transformers.Trainer` / TRL `SFTTrainer` script (examples/trl_script.py runs one in the tests):

```python
from t3s.api import ProbeCallback, labeled_dataset, score, select

# 1. does your run show the imitation shock? (generation-based evaluation inside the Trainer)
probe = ProbeCallback(trainer, "train.jsonl", "runs/probe", heldout="heldout.jsonl", every=5)
trainer.add_callback(probe)
trainer.train()                    # logs t3s/train_accuracy, ... to report_to; keeps runs/probe/bottleneck
print(probe.result["bottleneck_step"], probe.result["dip_found"])

# 2. Δc and the keep-mask, then train on it with your own trainer
init = score("Qwen/Qwen3-8B", "train.jsonl", "runs/scores-init")
bottleneck = score("runs/probe/bottleneck", "train.jsonl", "runs/scores-b")
selection = select(init, bottleneck, "t3s")
dataset = labeled_dataset("train.jsonl", selection, tokenizer)   # input_ids + labels (-100: not trained)
trainer = SFTTrainer(model=..., train_dataset=dataset, args=SFTConfig(...))
```

The callback is `t3s probe`'s own evaluation (t3s.probe.ProbeRunner): the same prompts, grading, trajectory
files, bottleneck rule and online stop; `t3s probe` and `t3s run` stay the way to get the whole method with its
ledger. The student is autoregressive here (a masked-diffusion student: `t3s run` with `objective: diffusion`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from t3s import T3SError, dist
from t3s.config import GenConfig, ProbeConfig, RenderConfig, ScoreConfig
from t3s.data import fingerprints, load_rows, render_rows
from t3s.probe import ProbeRunner, ProbeTrainerCallback, find_bottleneck, no_dip_message, plot_trajectory, saved_step
from t3s.score import ScoreSet, load_scores, run_score
from t3s.select import MATCH_KEYS, Selection
from t3s.select import select as _select


def _section(cls: type, value: Any, where: str) -> Any:
    """A config section from None (defaults), a mapping of its keys, or the dataclass itself."""
    from t3s.config import coerce

    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**coerce(cls, value, where))
    raise T3SError(f"{where}: a mapping of settings or a {cls.__name__}, got {type(value).__name__}")


def score(
    model: str,
    data: str,
    out: str | Path,
    *,
    render: RenderConfig | dict | None = None,
    settings: ScoreConfig | dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ScoreSet:
    """`t3s score`: the teacher-forced log-probability of every response token of `data` under `model`, written
    to `out` and returned."""
    run_score(
        model,
        data,
        out,
        _section(RenderConfig, render, "render"),
        _section(ScoreConfig, settings, "score"),
        overwrite=overwrite,
        progress=progress,
    )
    return load_scores(out)


def select(
    init: ScoreSet | str | Path,
    bottleneck: ScoreSet | str | Path,
    mode: str = "t3s",
    *,
    threshold: float | str = 0.0,
    seed: int = 0,
) -> Selection:
    """`t3s select`: Δc = c(θ_b) − c(θ_0) and the keep-mask of `mode` (t3s drops the imitation anchors, Δc >
    threshold, and trains on the yet-to-learn tokens)."""
    a = init if isinstance(init, ScoreSet) else load_scores(init)
    b = bottleneck if isinstance(bottleneck, ScoreSet) else load_scores(bottleneck)
    return _select(a, b, mode, threshold, seed)


def labeled_dataset(data: str, selection: Selection | None, tokenizer: Any, render: RenderConfig | dict | None = None):
    """The training rows, in file order, as a `datasets.Dataset` with `input_ids` and `labels` (-100 on the prompt
    and on every token the selection drops; None: plain SFT): what TRL's SFTTrainer trains on as it is. The
    selection must have been made on the same rows, tokenizer and rendering (checked)."""
    import datasets

    from t3s.objectives.ar import apply_selection

    rcfg = _section(RenderConfig, render, "render")
    rows = load_rows(data)
    examples, _ = render_rows(rows, tokenizer, rcfg)
    if selection is not None:
        fps = fingerprints(rows, tokenizer, rcfg)
        for key in MATCH_KEYS:
            if selection.meta["fingerprints"].get(key) != fps[key]:
                raise T3SError(f"the selection was made with a different {key} than {data} rendered here")
    labels = apply_selection(examples, selection, "the selection")
    if not any(x != -100 for lab in labels for x in lab):
        raise T3SError(f"the selection keeps no token of {data}: there is nothing to train on")
    return datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": labels})


def sft_trainer(*args: Any, loss: str = "nll", reference: Any = None, **kwargs: Any):
    """TRL's SFTTrainer with one of t3s's online token losses (`loss`: eaft, memft, asft; nll: plain SFT),
    and the loss divided by the labelled tokens of the global batch (every micro-batch and process). Its
    settings as keyword arguments with their documented defaults (`eaft_alpha`, `eaft_k`, `memft_threshold`,
    `asft_kl_weight`); everything else goes to SFTTrainer as is:

    ```python
    trainer = sft_trainer(model=model, args=SFTConfig(...), train_dataset=dataset, loss="eaft", eaft_k=20)
    ```

    One forward per micro-batch, as the published methods take (TRL's `compute_loss_func` would add a second,
    for its metrics). asft compares with θ_0: under PEFT (`peft_config=`) the adapter-disabled model; without,
    pass `reference=` a second copy of the starting model."""
    from t3s.config import LOSS_KEYS, TrainConfig
    from t3s.objectives.ar import trainer_class

    settings = {k: kwargs.pop(k) for k in list(kwargs) if k in LOSS_KEYS}
    train = TrainConfig(loss=loss, **settings)
    stray = set(settings) - set(train.loss_settings())
    if stray:
        raise T3SError(f"{', '.join(sorted(stray))}: not a setting of loss={loss}")
    T3STrainer, _ = trainer_class()
    return T3STrainer(*args, train=train, reference=reference, **kwargs)


class ProbeCallback(ProbeTrainerCallback):
    """`t3s probe` inside your own Trainer: at step 0 and every `every` steps, generate on the training prompts
    (and `heldout`), grade, log `t3s/*` metrics through `trainer.log` (so every `report_to` tracker gets them),
    append to `out/trajectory.jsonl`, and keep the lowest-accuracy checkpoint as `out/bottleneck/`; with
    `online=True`, stop training once the dip is confirmed. At the end, `out/probe.json` and
    `out/trajectory.png`; `result` holds the summary (`bottleneck_step`, `dip_found`, ...).

    Settings: any `probe` key (`every` = eval_every, `subset`, `k`, `online`, `margin`, `patience`, `markers`,
    `keep_all`) as keyword arguments, `generation` (eval keys: max_new_tokens, grader, ...), `render`."""

    def __init__(
        self,
        trainer: Any,
        data: str,
        out: str | Path,
        *,
        heldout: str | None = None,
        every: int = 0,
        generation: GenConfig | dict | None = None,
        render: RenderConfig | dict | None = None,
        log: Callable[[str], None] = print,
        **probe: Any,
    ):
        from t3s.models import Precision
        from t3s.objectives import Autoregressive, Prepared

        self.out = Path(out)
        pcfg = _section(ProbeConfig, {"eval_every": every, **probe}, "probe")
        gcfg = _section(GenConfig, generation, "generation")
        rcfg = _section(RenderConfig, render, "render")
        tok = trainer.processing_class
        if tok is None or not hasattr(tok, "apply_chat_template"):
            raise T3SError("ProbeCallback needs the trainer's tokenizer (processing_class)")
        rows = load_rows(data)
        examples, report = render_rows(rows, tok, rcfg)
        self.fingerprints = fingerprints(rows, tok, rcfg)
        prepared = Prepared(tok, rows, examples, report, self.fingerprints, None, None, Autoregressive())
        held = load_rows(heldout, need_response=False, need_answer=True) if heldout else None
        model = trainer.model
        args = trainer.args
        autocast = "bfloat16" if args.bf16 else "float16" if args.fp16 else None
        import torch

        precision = Precision(model.dtype, None if autocast is None else getattr(torch, autocast), model.device.type)
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)  # trajectory.jsonl: restarted or resumed at on_train_begin
        runner = ProbeRunner(self.out, prepared, held, pcfg, gcfg, rcfg, precision, max(args.max_steps, 0), False, log)
        runner.trainer = trainer  # saves sharded (ZeRO-3 / FSDP) checkpoints through it
        super().__init__(runner, trainer)
        self.result: dict[str, Any] | None = None

    def on_train_end(self, args, state, control, **kw):
        from t3s.artifacts import write_json

        r = self.runner
        b = find_bottleneck(r.points, r.margin)
        self.result = {
            "kind": "t3s-probe-callback",
            **b,
            "margin": r.margin,
            "noise": r.noise,
            "message": None if b["dip_found"] else no_dip_message(b, r.margin),
            "stopped_early": r.stopped_early,
            # None when a resume dropped it (see ProbeRunner.restore) and the resumed run never went as low again
            "bottleneck_checkpoint": str(self.out / "bottleneck")
            if b["bottleneck_step"] is not None and saved_step(self.out / "bottleneck") == b["bottleneck_step"]
            else None,
            "steps_run": state.global_step,
            "eval_every": r.every,
            "probe_config": dataclasses.asdict(r.cfg),
            "fingerprints": self.fingerprints,
        }
        if dist.is_main():
            write_json(self.out / "probe.json", self.result)
            plot_trajectory(r.points, b["bottleneck_step"], self.out / "trajectory.png")
