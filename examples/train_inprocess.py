#!/usr/bin/env python3
"""`train_ddp.py`'s job written for in-process restart (`holdfast launch --in-process`): the
same model, data and checkpoints, with the loop run through `holdfast.run` (python/holdfast).

On a fault the surviving ranks keep their processes and re-form the group in place; a replaced
rank takes model, optimizer state (SGD with momentum, so the state matters) and step from a
survivor. Data depend only on the step and the rank, so a run with faults ends with the same
weights as one without when no step is lost or applied twice.

At the end each rank writes `<checkpoint uri>/final/rank-R.json`: its pid, the generation it
started in and ended in, how many steps it ran, steps it ran twice, where its state came from,
and the SHA-256 of its final weights.
"""
import time

STARTED = time.time()  # before the imports, which a warm standby has done already

import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import holdfast  # noqa: E402
except ImportError:  # run from the checkout without `pip install ./python`
    sys.path.insert(0, os.path.join(HERE, "..", "python"))
    import holdfast  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from train_ddp import MARKER, Store, arguments, open_resume, phase  # noqa: E402

IMPORTED = time.time()


def weights_digest(model):
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main():
    phase("start", STARTED)
    phase("imports", IMPORTED)
    args = arguments(__doc__).parse_args()
    store = Store(args.checkpoint_uri) if args.checkpoint_uri else None

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps_run = []

    def load(ctx):
        if not ctx.resume_from:
            print(f"rank {ctx.rank}/{ctx.world_size} generation {ctx.generation}: fresh start", flush=True)
            return 0
        source, name = open_resume(ctx.resume_from)
        state = torch.load(io.BytesIO(source.get(f"{name}/model.pt")), weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"rank {ctx.rank}/{ctx.world_size}: resumed from {ctx.resume_from} at step {state['step']}", flush=True)
        return int(state["step"])

    def train(ctx):
        phase("rendezvous")
        phase("state")
        print(f"rank {ctx.rank}/{ctx.world_size} generation {ctx.generation}: training from step {ctx.step} "
              f"(state: {ctx.restored_from}, pid {os.getpid()})", flush=True)
        ddp = DistributedDataParallel(model)
        while ctx.step < args.steps:
            started = time.monotonic()
            step = ctx.step + 1
            # Synthetic data that depends only on the step and rank.
            g = torch.Generator().manual_seed(step * 1000 + ctx.rank)
            x = torch.randn(64, 32, generator=g)
            y = x.sum(dim=1, keepdim=True)
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(ddp(x), y)
            loss.backward()
            optimizer.step()
            ctx.step = step  # done: a re-form from here on resumes after it
            steps_run.append(step)
            print(f"step {step} loss {loss.item():.4f}", flush=True)
            if ctx.rank == 0 and store is not None and step % args.ckpt_every == 0:
                buffer = io.BytesIO()
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, buffer)
                store.put(f"step-{step}/model.pt", buffer.getvalue())
                store.put(f"step-{step}/{MARKER}", json.dumps({"step": step, "generation": ctx.generation}).encode())
            time.sleep(max(0.0, args.step_time - (time.monotonic() - started)))
        return ctx

    ctx = holdfast.run(train, state={"model": model, "optimizer": optimizer}, load=load)
    report = {
        "rank": ctx.rank,
        "pid": os.getpid(),
        "started_generation": ctx.started_generation,
        "generation": ctx.generation,
        "step": ctx.step,
        "steps_run": len(steps_run),
        "first_step_run": steps_run[0] if steps_run else None,
        "steps_run_twice": len(steps_run) - len(set(steps_run)),
        "restored_from": ctx.restored_from,
        "reforms": ctx.reforms,
        "weights_sha256": weights_digest(model),
    }
    if store is not None:
        store.put(f"final/rank-{ctx.rank}.json", json.dumps(report).encode())
    print(f"rank {ctx.rank}: done at step {ctx.step}: {json.dumps(report)}", flush=True)


if __name__ == "__main__":
    main()
