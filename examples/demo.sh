#!/usr/bin/env bash
# make demo: the CPU testbed world (built once, then reused) -> `t3s run` with every mode and RRT over 3 seeds
# -> the report. Each step is a plain `t3s` command.
set -euo pipefail
WORLD=${WORLD:-runs/testbed-world}
RUN=${RUN:-runs/demo}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
start=$(date +%s)

step "1/3 the testbed world: a tiny student pretrained on style S, 256 teacher traces in style T ($WORLD)"
t3s testbed build --out "$WORLD"

step "2/3 t3s run: probe -> score -> select -> train sft, t3s, reverse, static-high, static-low, random -> RRT -> eval"
code=0
t3s run "$WORLD/run.yaml" --out "$RUN" || code=$?
if [ "$code" -ne 0 ] && [ "$code" -ne 3 ]; then exit "$code"; fi   # 3: no dip; the report says so

step "3/3 the report"
t3s report "$RUN"
echo "demo finished in $(( $(date +%s) - start ))s; open $RUN/report/report.html"
exit "$code"
