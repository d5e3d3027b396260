#!/usr/bin/env bash
# The t3s chain on the built-in tiny model and data: SFT (with checkpoints) -> score θ0 and θb -> select ->
# masked training -> RRT. Every step is a plain `t3s` command you can run on your own model and data.
set -euo pipefail
RUN=${RUN:-runs/demo}
mkdir -p "$RUN"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/6 built-in tiny student (2-layer Llama, BPE tokenizer trained offline) and 64 teacher traces"
t3s tiny --out "$RUN/tiny" --overwrite --quiet
M="$RUN/tiny/model"; D="$RUN/tiny/train.jsonl"
head -n 1 "$D"

step "2/6 plain SFT, keeping checkpoints (θb below is the step-10 checkpoint; the probe that locates it comes later)"
t3s train --model "$M" --data "$D" --out "$RUN/sft" --overwrite --quiet \
  learning_rate=3e-3 max_steps=40 save_steps=10 keep_checkpoints=true per_device_train_batch_size=8
THETA_B="$RUN/sft/checkpoints/checkpoint-10"

step "3/6 teacher-forced confidence of every response token under θ0 and θb"
t3s score --model "$M" --data "$D" --out "$RUN/scores-init" --overwrite --quiet --dtype float32
t3s score --model "$THETA_B" --data "$D" --out "$RUN/scores-bottleneck" --overwrite --quiet --dtype float32

step "4/6 selections: T3S and its controls at a matched ratio"
for mode in t3s reverse static-high static-low random none; do
  t3s select --init "$RUN/scores-init" --bottleneck "$RUN/scores-bottleneck" --mode "$mode" \
    --out "$RUN/selection-$mode" --overwrite
done

step "5/6 T3S training from θ0 with the anchors masked out of the loss"
t3s train --model "$M" --data "$D" --selection "$RUN/selection-t3s" --out "$RUN/t3s" --overwrite --quiet \
  learning_rate=3e-3 max_steps=40 per_device_train_batch_size=8

step "6/6 RRT: θ0 + (θT − θb) from the SFT run"
t3s rrt --init "$M" --bottleneck "$THETA_B" --final "$RUN/sft" --out "$RUN/rrt" --overwrite --quiet

step "done: artifacts in $RUN"
ls "$RUN"
