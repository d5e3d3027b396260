"""Is bf16 fast on this CPU, and on one without bf16 hardware? (docs/method.md, "Precision of inference")

    python -m bench.cpu_precision      # a few seconds; prints a Markdown table

Measures, with 2 threads, a 256x512 @ 512x512 matmul in fp32 and bf16 (GFLOP/s) and a Linear(512, 512) on 64
rows in fp32 and under bf16 autocast (ms), in two fresh processes: this machine as it is, and the same machine
made to compute like an AVX2-only CPU (`ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`,
`MKL_ENABLE_INSTRUCTIONS=AVX2`). Each row also says what `auto` resolves to there (t3s.models.cpu_bf16_fast).
The emulation lowers the kernels, not the clock or the memory system: a real AVX2-only machine measured 70-100
GFLOP/s in fp32 (this one's fp32 stays near its own figure under emulation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
CLEAN = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "T3S_CPU_BF16")


def measure() -> dict:
    import statistics
    import time

    import torch

    from t3s.models import cpu_bf16_fast, resolve_precision

    torch.set_num_threads(2)

    def timed(fn, reps: int) -> float:
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    out = {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_fast": cpu_bf16_fast()[0],
        "why": cpu_bf16_fast()[1],
        "auto": resolve_precision("auto", "cpu").name,
    }
    a, b = torch.randn(256, 512), torch.randn(512, 512)
    for dt in (torch.float32, torch.bfloat16):
        x, y = a.to(dt), b.to(dt)
        out[f"matmul_gflops_{str(dt)[6:]}"] = 2 * 256 * 512 * 512 / timed(lambda: x @ y, 7) / 1e9
    lin, inp = torch.nn.Linear(512, 512), torch.randn(64, 512)
    with torch.no_grad():
        out["linear_ms_float32"] = 1e3 * timed(lambda: lin(inp), 30)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["linear_ms_bf16_autocast"] = 1e3 * timed(lambda: lin(inp), 30)
    return out


def _run(env: dict) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in CLEAN}
    r = subprocess.run(
        [sys.executable, "-c", "import json, bench.cpu_precision as m; print(json.dumps(m.measure()))"],
        env={**e, "OMP_NUM_THREADS": "2", **env},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    rows = {"this CPU": _run({}), "this CPU with AVX2 kernels only": _run(AVX2)}
    print(
        "| CPU | PyTorch kernels | matmul fp32 GFLOP/s | matmul bf16 GFLOP/s | Linear fp32 ms | Linear bf16 "
        "autocast ms | `auto` resolves to |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['capability']} | {r['matmul_gflops_float32']:.0f} | {r['matmul_gflops_bfloat16']:.1f} | "
            f"{r['linear_ms_float32']:.3f} | {r['linear_ms_bf16_autocast']:.3f} | {r['auto']} ({r['why']}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
