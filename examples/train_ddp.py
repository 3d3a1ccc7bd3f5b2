#!/usr/bin/env python3
"""A small PyTorch DDP job for holdfast's end-to-end tier: launched by `torchrun` on every host.

gloo on CPU, a small MLP on synthetic data (the same on every run, so a resumed run computes what
an uninterrupted one would). Every step prints `step N` (holdfast's progress signal) and takes at
least `--step-time` seconds. Global rank 0 writes a checkpoint every `--ckpt-every` steps to
`<checkpoint uri>/step-N/`: `model.pt` first, then the `COMPLETE` marker, last, holding
`{"step": N, "generation": G, "files": {…}}` (G from HOLDFAST_GENERATION; the manifest from
`holdfast.checkpoint` in the repository's `python/`, which the coordinator verifies) — only then
does it count.

Checkpoints go to `s3://bucket/prefix` (endpoint and credentials from the standard AWS_*
variables, AWS_ENDPOINT_URL included) or to a `file://` prefix. On start the job resumes from
HOLDFAST_RESUME_FROM when holdfast sets it; with `--resume-latest` (for runs without holdfast) it
looks for the newest complete checkpoint itself.

With `--ft-heartbeats` (only for the benchmark's `ft_launcher` baseline) each rank connects to
its rank monitor through `nvidia_resiliency_ext`'s `RankMonitorClient` and sends a heartbeat
after every step, as that package's heartbeat API asks; without it nothing of the package is
imported.

For the benchmarks each rank prints `phase NAME UNIX_SECONDS` as it starts (`start`, before the
torch import), has imported torch (`imports`), joined the process group (`rendezvous`) and
loaded its state (`state`).
"""
import time

STARTED = time.time()  # before the imports, which a warm standby has done already

import argparse  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

IMPORTED = time.time()

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from holdfast import checkpoint  # noqa: E402

MARKER = "COMPLETE"


class Store:
    """A checkpoint prefix in S3 or on the local filesystem."""

    def __init__(self, uri):
        parsed = urlparse(uri)
        self.scheme = parsed.scheme or "file"
        if self.scheme == "s3":
            import boto3  # only S3 runs need it

            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
            self.client = boto3.client("s3")
        elif self.scheme == "file":
            self.prefix = parsed.path.rstrip("/")
        else:
            sys.exit(f"train_ddp.py: checkpoint URI {uri!r}: use s3:// or file://")

    def key(self, *parts):
        return "/".join(p for p in (self.prefix,) + parts if p)

    def put(self, name, data):
        if self.scheme == "s3":
            self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data)
        else:
            path = self.key(name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    def get(self, name):
        if self.scheme == "s3":
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read()
        with open(self.key(name), "rb") as f:
            return f.read()

    def exists(self, name):
        if self.scheme == "s3":
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.key(name))
                return True
            except self.client.exceptions.ClientError:
                return False
        return os.path.exists(self.key(name))

    def steps(self):
        """Step numbers of the `step-N/` directories under the prefix."""
        names = []
        if self.scheme == "s3":
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key("") + "/", Delimiter="/"
            )
            for page in pages:
                names += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])]
        elif os.path.isdir(self.prefix):
            names = os.listdir(self.prefix)
        return sorted(int(n[5:]) for n in names if n.startswith("step-") and n[5:].isdigit())

    def latest_complete(self):
        for step in reversed(self.steps()):
            if self.exists(f"step-{step}/{MARKER}"):
                return step
        return None


def open_resume(uri):
    """(store, directory name) of a checkpoint URI such as s3://bucket/run/step-40."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    return Store(parent), name


def phase(name, at=None):
    """One line the benchmarks read: this rank reached `name` at `at` (now by default)."""
    print(f"phase {name} {time.time() if at is None else at:.3f}", flush=True)


def arguments(description):
    """The flags every trainer of these examples takes (schedule and checkpoints)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=60, help="last step")
    parser.add_argument("--step-time", type=float, default=0.2, help="minimum seconds per step")
    parser.add_argument("--ckpt-every", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--checkpoint-uri", default=os.environ.get("HOLDFAST_CHECKPOINT_URI", ""))
    return parser


def main():
    phase("start", STARTED)
    phase("imports", IMPORTED)
    parser = arguments(__doc__)
    parser.add_argument("--resume-latest", action="store_true", help="resume from the newest complete checkpoint")
    parser.add_argument("--ft-heartbeats", action="store_true", help="heartbeats to ft_launcher's rank monitor")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    phase("rendezvous")
    monitor = None
    if args.ft_heartbeats:
        from nvidia_resiliency_ext import fault_tolerance

        monitor = fault_tolerance.RankMonitorClient()
        monitor.init_workload_monitoring()
    rank, world = dist.get_rank(), dist.get_world_size()
    generation = int(os.environ.get("HOLDFAST_GENERATION", "0"))
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    store = Store(args.checkpoint_uri) if args.checkpoint_uri else None

    step = 0
    resume = os.environ.get("HOLDFAST_RESUME_FROM", "")
    if not resume and args.resume_latest and store is not None:
        latest = store.latest_complete()
        if latest is not None:
            resume = f"{args.checkpoint_uri.rstrip('/')}/step-{latest}"
    if resume:
        source, name = open_resume(resume)
        state = torch.load(io.BytesIO(source.get(f"{name}/model.pt")), weights_only=True)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        print(f"rank {rank}/{world} generation {generation}: resumed from {resume} at step {step}", flush=True)
    else:
        print(f"rank {rank}/{world} generation {generation}: fresh start", flush=True)
    phase("state")

    while step < args.steps:
        started = time.monotonic()
        step += 1
        # Synthetic data that depends only on the step and rank.
        g = torch.Generator().manual_seed(step * 1000 + rank)
        x = torch.randn(64, 32, generator=g)
        y = x.sum(dim=1, keepdim=True)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.4f}", flush=True)
        if rank == 0 and store is not None and step % args.ckpt_every == 0:
            buffer = io.BytesIO()
            torch.save(
                {"model": model.module.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, buffer
            )
            model_bytes = buffer.getvalue()
            store.put(f"step-{step}/model.pt", model_bytes)
            # The marker is written last: only then does the checkpoint count.
            store.put(f"step-{step}/{MARKER}", checkpoint.marker(step, generation, {"model.pt": model_bytes}))
        if monitor is not None:
            monitor.send_heartbeat()
        time.sleep(max(0.0, args.step_time - (time.monotonic() - started)))
    print(f"rank {rank}: done at step {step}", flush=True)
    if monitor is not None:
        monitor.shutdown_workload_monitoring()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
