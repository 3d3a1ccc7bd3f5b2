#!/usr/bin/env python3
"""A small training job for the holdfast demo and tests: standard library only.

Each step takes a fixed time and prints `step N`. Rank 0 writes a checkpoint every K steps to
`$HOLDFAST_CHECKPOINT_URI/step-N/` (a local file:// prefix): the state first, then the
`COMPLETE` marker, last, with the manifest holdfast verifies (`holdfast.checkpoint`, beside this
script or in the repository's `python/`). On start it resumes from `$HOLDFAST_RESUME_FROM` when
set.

With `--sync-dir DIR` the ranks are synchronous, as collective training is: after each step
every rank writes `DIR/g<generation>/step-N.rank-R` and waits until every rank's file for step
N exists, so one stuck rank stops them all. For tests, a file `DIR/spin.rank-R` makes rank R
busy-loop in its own code, never reaching the next exchange.
"""
import argparse
import json
import os
import sys
import time
from urllib.parse import urlparse

# holdfast's helpers: beside this script (as the demo writes them) or in the repository.
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from holdfast import checkpoint  # noqa: E402


def local_path(uri):
    """Path of a file:// URI (or a plain path)."""
    if not uri:
        return ""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return parsed.path
    sys.exit(f"train_demo.py only writes local checkpoints, got {uri!r}")


def spin_while_told(path):
    """Busy-loops in this rank's own code while the file `path` exists."""
    spins = 0
    while os.path.exists(path):
        for _ in range(100_000):
            spins += 1


def exchange(sync, step, rank, nranks):
    """Announces that this rank finished `step` and waits until every rank did (a barrier)."""
    with open(os.path.join(sync, f"step-{step}.rank-{rank}"), "w"):
        pass
    peers = [os.path.join(sync, f"step-{step}.rank-{r}") for r in range(nranks)]
    while not all(os.path.exists(p) for p in peers):
        time.sleep(0.01)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=80, help="last step")
    parser.add_argument("--step-time", type=float, default=0.1, help="seconds per step")
    parser.add_argument("--ckpt-every", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--sync-dir", default="", help="wait for every rank at every step here")
    args = parser.parse_args()

    rank = int(os.environ.get("HOLDFAST_NODE_RANK", "0"))
    generation = int(os.environ.get("HOLDFAST_GENERATION", "1"))
    prefix = local_path(os.environ.get("HOLDFAST_CHECKPOINT_URI", ""))
    resume = local_path(os.environ.get("HOLDFAST_RESUME_FROM", ""))

    step = 0
    if resume:
        with open(os.path.join(resume, "state.json")) as f:
            step = json.load(f)["step"]
        print(f"rank {rank} generation {generation}: resumed from {resume} at step {step}", flush=True)
    else:
        print(f"rank {rank} generation {generation}: fresh start", flush=True)

    nranks = int(os.environ.get("HOLDFAST_NNODES", "1"))
    sync = os.path.join(args.sync_dir, f"g{generation}") if args.sync_dir else ""
    if sync:
        os.makedirs(sync, exist_ok=True)

    while step < args.steps:
        time.sleep(args.step_time)
        step += 1
        if sync:
            spin_while_told(os.path.join(args.sync_dir, f"spin.rank-{rank}"))
            exchange(sync, step, rank, nranks)
        print(f"step {step}", flush=True)
        if rank == 0 and prefix and step % args.ckpt_every == 0:
            directory = os.path.join(prefix, f"step-{step}")
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "state.json"), "w") as f:
                json.dump({"step": step}, f)
                f.flush()
                os.fsync(f.fileno())
            # The marker is written last: only then does the checkpoint count.
            checkpoint.write_marker(directory, step, generation)
    print(f"rank {rank}: done at step {step}", flush=True)


if __name__ == "__main__":
    main()
