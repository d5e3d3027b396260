#!/usr/bin/env bash
# The GPU acceptance check on a lent machine that has its own Python, torch and transformers but no network and no
# TRL / datasets / math-verify (docs/scaling.md, "The GPU acceptance check"):
#
#   make gpu-wheels                  # here, with a network: the missing wheels into gpu-wheels/ (ignored by git)
#   bash bench/gpu_check.sh DIR      # there: installs what the machine lacks, runs python -m bench.gpu_check
#
# A wheel is installed only when the machine has no distribution of that name, so the machine's own torch,
# transformers, accelerate and peft are what the check runs on (never shadowed). --no-deps: what a wheel
# requires and the machine lacks is printed, not fetched. t3s itself runs from the source tree (PYTHONPATH).
# Extra arguments go to bench.gpu_check (e.g. --only scoring,throughput).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR [bench.gpu_check arguments]}
shift
py=${PYTHON:-python3}
site=$PWD/.gpu-site
wheels=$PWD/gpu-wheels

missing=()
if [ -d "$wheels" ]; then
  for whl in "$wheels"/*.whl; do
    [ -e "$whl" ] || continue
    dist=$(basename "$whl" | cut -d- -f1)
    if "$py" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
      echo "gpu_check.sh: $dist is installed on this machine; using its own" >&2
    else
      missing+=("$whl")
    fi
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu_check.sh: installing ${#missing[@]} wheel(s) into .gpu-site" >&2
  "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${missing[@]}"
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

# what the installed distributions require and this machine lacks (markers evaluated; extras ignored)
"$py" - <<'EOF' || true
import importlib.metadata as m

try:
    from packaging.requirements import Requirement
except ImportError:  # packaging ships with transformers; without it, skip the report
    raise SystemExit(0)
seen = set()
for d in m.distributions():
    for spec in d.requires or []:
        r = Requirement(spec)
        if r.marker is not None and not r.marker.evaluate({"extra": ""}):
            continue
        key = (d.metadata["Name"], str(r))
        if key in seen:
            continue
        seen.add(key)
        try:
            have = m.version(r.name)
        except m.PackageNotFoundError:
            have = None
        if d.metadata["Name"].lower() in {"trl", "datasets", "math-verify", "latex2sympy2-extended"} and (
            have is None or (r.specifier and not r.specifier.contains(have, prereleases=True))
        ):
            print(f"gpu_check.sh: warning: {d.metadata['Name']} requires {r}, this machine has {have or 'none'}")
EOF

exec "$py" -m bench.gpu_check --out "$out" "$@"
