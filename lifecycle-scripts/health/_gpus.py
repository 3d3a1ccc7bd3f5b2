"""Shared by the GPU deep checks (not a check itself): find the GPUs PyTorch can use, or give
the check's verdict when it cannot run (contract: README.md)."""
import os


def gpu_count_or_verdict():
    """Returns (count, None) with the number of GPUs CUDA sees, or (None, exit code) after
    printing the verdict: "not applicable" (0) on a host without GPUs, "fail" (1) when GPUs are
    present but PyTorch or CUDA cannot use them."""
    present = os.path.exists("/dev/nvidiactl")
    try:
        import torch
    except ImportError:
        problem = "fail: GPUs present but PyTorch is not installed"
    else:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > 0:
            return count, None
        problem = "fail: /dev/nvidiactl exists but CUDA sees no GPU"
    if present:
        print(problem)
        return None, 1
    print("not applicable: no GPU on this host")
    return None, 0
