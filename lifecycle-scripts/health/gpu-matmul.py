#!/usr/bin/env python3
"""Deep health check: a matrix multiply on every GPU, compared with a CPU reference.

Catches GPUs that compute wrong answers (silent data corruption) as well as ones that fail
outright. Contract (lifecycle-scripts/health/README.md): one line on stdout, exit 0 on pass or
"not applicable", non-zero on failure.

Settings (environment): HOLDFAST_MATMUL_N (matrix size, default 2048),
HOLDFAST_MATMUL_RTOL (largest error allowed, relative to the largest reference value,
default 1e-4).
"""
import os
import sys
import time

from _gpus import gpu_count_or_verdict


def main():
    count, verdict = gpu_count_or_verdict()
    if verdict is not None:
        return verdict
    import torch

    n = int(os.environ.get("HOLDFAST_MATMUL_N", "2048"))
    rtol = float(os.environ.get("HOLDFAST_MATMUL_RTOL", "1e-4"))
    # Full fp32 on the GPU: TF32 would differ from the reference by design, not by fault.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(20261121)
    a = torch.randn(n, n, generator=gen, dtype=torch.float32)
    b = torch.randn(n, n, generator=gen, dtype=torch.float32)
    reference = (a.double() @ b.double())
    scale = reference.abs().max().item()
    started = time.monotonic()
    worst = 0.0
    for i in range(count):
        try:
            dev = torch.device("cuda", i)
            got = (a.to(dev) @ b.to(dev)).double().cpu()
            torch.cuda.synchronize(dev)
        except Exception as e:  # a failing GPU raises CUDA errors of many kinds
            print(f"fail: gpu {i}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return 1
        err = (got - reference).abs().max().item() / scale
        if not err <= rtol:  # also catches NaN
            print(f"fail: gpu {i}: matmul differs from the CPU reference (max relative error {err:.2e} > {rtol:.0e})")
            return 1
        worst = max(worst, err)
    print(f"pass: {count} GPUs matched the CPU reference ({n}x{n} fp32, max relative error {worst:.1e}, {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
