"""A plain TRL SFT script, made into a T3S run by the lines marked `# T3S`.

Without them it is an ordinary SFTTrainer run on a prompt-completion dataset. With them it (1) probes that run
for the imitation shock (generation-based accuracy along training, logged to `report_to`, the bottleneck kept),
(2) scores the training traces at θ_0 and at the bottleneck and finds the imitation anchors (Δc > 0), and (3)
trains again, with the same script, on a `labels` column that drops the anchors and keeps the yet-to-learn
tokens. On the tiny model:

    t3s tiny --out runs/tiny
    python examples/trl_script.py --model runs/tiny/model --data runs/tiny/train.jsonl --out runs/trl-t3s
"""

import argparse
import json
from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from t3s.api import ProbeCallback, labeled_dataset, score, select  # T3S


def sft_trainer(model_path: str, dataset: datasets.Dataset, out: Path, steps: int, lr: float) -> SFTTrainer:
    """The user's own training setup: nothing here knows about T3S."""
    args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        learning_rate=lr,
        per_device_train_batch_size=8,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,  # this example runs on a CPU; drop both lines on a GPU
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="rows with prompt, response and answer (.jsonl)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-3)
    a = p.parse_args()
    out = Path(a.out)
    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines() if line.strip()]
    plain = datasets.Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["response"]}],
            }
            for r in rows
        ]
    )

    trainer = sft_trainer(a.model, plain, out / "sft", a.steps, a.lr)
    probe = ProbeCallback(  # T3S: the shock in this run; the bottleneck checkpoint θ_b
        trainer, a.data, out / "probe", every=4, generation={"max_new_tokens": 48}, markers=["Let us"]
    )
    trainer.add_callback(probe)  # T3S
    trainer.train()
    print(
        f"probe: lowest training accuracy at step {probe.result['bottleneck_step']}; dip: {probe.result['dip_found']}"
    )

    init = score(a.model, a.data, out / "scores-init", progress=False)  # T3S: c(θ_0)
    bottleneck = score(str(out / "probe" / "bottleneck"), a.data, out / "scores-bottleneck", progress=False)  # T3S
    selection = select(init, bottleneck, "t3s")  # T3S: drop the anchors (Δc > 0), keep the yet-to-learn tokens
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    t3s_data = labeled_dataset(a.data, selection, tokenizer)  # T3S: labels -100 on the dropped tokens

    trainer = sft_trainer(a.model, t3s_data, out / "t3s", a.steps, a.lr)  # the same training setup
    trainer.train()
    trainer.save_model(str(out / "t3s" / "model"))
    kept = 1 - selection.meta["stats"]["dropped_fraction"]
    print(f"t3s: trained on {kept:.1%} of the response tokens; model in {out / 't3s' / 'model'}")


if __name__ == "__main__":
    main()
