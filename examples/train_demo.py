#!/usr/bin/env python3
"""A small training job for the holdfast demo and tests: standard library only.

Each step takes a fixed time and prints `step N`. Rank 0 writes a checkpoint every K steps to
`$HOLDFAST_CHECKPOINT_URI/step-N/` (a local file:// prefix): the state first, then the
`COMPLETE` marker, last. On start it resumes from `$HOLDFAST_RESUME_FROM` when set.
"""
import argparse
import json
import os
import sys
import time
from urllib.parse import urlparse


def local_path(uri):
    """Path of a file:// URI (or a plain path)."""
    if not uri:
        return ""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return parsed.path
    sys.exit(f"train_demo.py only writes local checkpoints, got {uri!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=80, help="last step")
    parser.add_argument("--step-time", type=float, default=0.1, help="seconds per step")
    parser.add_argument("--ckpt-every", type=int, default=10, help="steps between checkpoints")
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

    while step < args.steps:
        time.sleep(args.step_time)
        step += 1
        print(f"step {step}", flush=True)
        if rank == 0 and prefix and step % args.ckpt_every == 0:
            directory = os.path.join(prefix, f"step-{step}")
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "state.json"), "w") as f:
                json.dump({"step": step}, f)
                f.flush()
                os.fsync(f.fileno())
            # The marker is written last: only then does the checkpoint count.
            with open(os.path.join(directory, "COMPLETE"), "w") as f:
                json.dump({"step": step, "generation": generation}, f)
    print(f"rank {rank}: done at step {step}", flush=True)


if __name__ == "__main__":
    main()
