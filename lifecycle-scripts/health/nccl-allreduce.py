#!/usr/bin/env python3
"""Deep health check: an NCCL all-reduce across this node's GPUs, with a bandwidth floor.

Checks the result (every rank must hold the sum) and the bus bandwidth
(algorithm bandwidth x 2(n-1)/n, as nccl-tests reports it). Contract
(lifecycle-scripts/health/README.md): one line on stdout, exit 0 on pass or "not applicable",
non-zero on failure.

Settings (environment): HOLDFAST_NCCL_MIN_BUSBW_GBPS (floor in GB/s, default 50: well under
what NVLink hosts reach, above what a broken link leaves), HOLDFAST_NCCL_BYTES (message size,
default 256 MiB), HOLDFAST_NCCL_ITERS (timed iterations, default 20),
HOLDFAST_NCCL_TIMEOUT_S (default 300).
"""
import os
import socket
import sys
import time

from _gpus import gpu_count_or_verdict


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, port, nbytes, iters, results):
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
    for _ in range(5):
        dist.all_reduce(x)
    x.fill_(1.0)
    dist.all_reduce(x)
    correct = bool((x == world).all().item())
    torch.cuda.synchronize()
    dist.barrier()
    started = time.monotonic()
    for _ in range(iters):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    elapsed = (time.monotonic() - started) / iters
    results.put((rank, correct, elapsed))
    dist.destroy_process_group()


def main():
    count, verdict = gpu_count_or_verdict()
    if verdict is not None:
        return verdict
    import torch.multiprocessing as mp

    if count == 1:
        print("not applicable: one GPU, nothing to all-reduce across")
        return 0
    floor = float(os.environ.get("HOLDFAST_NCCL_MIN_BUSBW_GBPS", "50"))
    nbytes = int(os.environ.get("HOLDFAST_NCCL_BYTES", str(256 << 20)))
    iters = int(os.environ.get("HOLDFAST_NCCL_ITERS", "20"))
    timeout = float(os.environ.get("HOLDFAST_NCCL_TIMEOUT_S", "300"))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, count, port, nbytes, iters, results)) for r in range(count)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    got = []
    try:
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"fail: all-reduce across {count} GPUs did not finish within {timeout:.0f} s")
                return 1
            try:
                got.append(results.get(timeout=min(left, 1.0)))
            except Exception:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    print(f"fail: rank {procs.index(dead[0])} exited with code {dead[0].exitcode}")
                    return 1
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    wrong = [r for r, ok, _ in got if not ok]
    if wrong:
        print(f"fail: all-reduce gave a wrong sum on rank(s) {sorted(wrong)}")
        return 1
    elapsed = max(t for _, _, t in got)
    busbw = nbytes / elapsed * 2 * (count - 1) / count / 1e9
    if busbw < floor:
        print(f"fail: all-reduce bus bandwidth {busbw:.1f} GB/s below the floor {floor:.1f} GB/s ({count} GPUs)")
        return 1
    print(f"pass: all-reduce across {count} GPUs, bus bandwidth {busbw:.1f} GB/s (floor {floor:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
