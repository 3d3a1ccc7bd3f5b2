#!/usr/bin/env python3
"""`train_ddp.py`'s job with the memory state tier (`holdfast.memtier`): every
`--memory-every` steps (default 1) each rank keeps its model and optimizer state in its host's
memory tier and sends a copy to the peer host. Under `restart: relaunch` a relaunch resumes from
the memory tier when the coordinator finds every rank's state there newer than the newest S3
checkpoint (HOLDFAST_RESUME_FROM=memory://…); otherwise, or if a memory copy cannot be read, from
the durable checkpoint as `train_ddp.py` does.

SGD with momentum, so the optimizer state matters; data depend only on the step and the rank, so
a run with a fault ends with the same weights as one without when no step is lost or applied
twice. At the end each rank writes `<checkpoint uri>/final/rank-R.json` (as
`train_inprocess.py` does): the generation, the step its state came from and from where, the
steps it ran, and the SHA-256 of its final weights.
"""
import time

STARTED = time.time()  # before the imports, which a warm standby has done already

import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from holdfast import checkpoint, memtier  # noqa: E402
from train_ddp import MARKER, Store, arguments, open_resume, phase  # noqa: E402
from train_inprocess import weights_digest  # noqa: E402

IMPORTED = time.time()


def main():
    phase("start", STARTED)
    phase("imports", IMPORTED)
    parser = arguments(__doc__)
    parser.add_argument("--memory-every", type=int, default=1, help="steps between memory-tier saves")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    phase("rendezvous")
    rank, generation = dist.get_rank(), int(os.environ.get("HOLDFAST_GENERATION", "0"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    store = Store(args.checkpoint_uri) if args.checkpoint_uri else None
    tier = memtier.MemoryTier(every=args.memory_every)

    def state_bytes(step):
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, buffer)
        return buffer.getvalue()

    def load(data):
        state = torch.load(io.BytesIO(data), weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])

    step, restored_from = 0, "fresh"
    restored = tier.restore()
    if restored is not None:
        step, restored_from = load(restored[1]), "memory"
    else:
        # Resuming from memory failed: the durable checkpoint the coordinator named instead.
        resume = tier.durable_from if tier.resume_step() is not None else os.environ.get("HOLDFAST_RESUME_FROM", "")
        if resume:
            source, name = open_resume(resume)
            step, restored_from = load(source.get(f"{name}/model.pt")), resume
    print(f"rank {rank} generation {generation}: state from {restored_from} at step {step}", flush=True)
    phase("state")
    ddp = DistributedDataParallel(model)
    first_step = step + 1
    while step < args.steps:
        started = time.monotonic()
        step += 1
        g = torch.Generator().manual_seed(step * 1000 + rank)
        x = torch.randn(64, 32, generator=g)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(ddp(x), x.sum(dim=1, keepdim=True))
        loss.backward()
        optimizer.step()
        # Kept on both hosts before the step is reported: a step seen done is never lost.
        tier.save(step, lambda: state_bytes(step))
        print(f"step {step} loss {loss.item():.4f}", flush=True)
        if rank == 0 and store is not None and step % args.ckpt_every == 0:
            data = state_bytes(step)
            store.put(f"step-{step}/model.pt", data)
            store.put(f"step-{step}/{MARKER}", checkpoint.marker(step, generation, {"model.pt": data}))
        time.sleep(max(0.0, args.step_time - (time.monotonic() - started)))
    report = {
        "rank": rank,
        "generation": generation,
        "restored_from": restored_from,
        "first_step_run": first_step,
        "step": step,
        "memory_fallback": tier.fallback_reason,
        "weights_sha256": weights_digest(model),
    }
    if store is not None:
        store.put(f"final/rank-{rank}.json", json.dumps(report).encode())
    print(f"rank {rank}: done at step {step}: {json.dumps(report)}", flush=True)
    tier.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
