"""The memory state tier: each rank's state in host memory and on a peer host, every few steps.

holdfast's durable tier is the job's checkpoint store (S3, files): written every N steps, it
costs up to N steps of work on a fault. This tier keeps the newest state in host memory instead,
so losing one host loses no state: every `every` steps each rank writes its state (bytes) to
its host's memory tier and sends a copy to the rank `nproc_per_node` ranks on (the same local
rank on the next host), which keeps it in its own. The agent tells the coordinator what its host
holds; on a relaunch the coordinator takes the newest step at which every rank's state is held
by a live host, when that is newer than the newest durable checkpoint, and launches with
`HOLDFAST_RESUME_FROM=memory://<job>/step-N` (the incident says `state tier: memory`). Each rank
then takes its state from its own host's copy or, a replaced rank, from the peer host's over the
new process group.

    from holdfast import memtier

    tier = memtier.MemoryTier(every=1, keep=2)   # after init_process_group
    restored = tier.restore()                    # None: not resuming from memory (or it failed)
    if restored is not None:
        step, data = restored                    # this rank's bytes from `save`
        ...                                      # load them
    elif tier.durable_from:                      # the durable checkpoint to use instead
        ...
    for step in ...:
        ...                                      # one training step
        tier.save(step, lambda: serialize())     # every rank, every step: saves when due
    tier.close()                                 # at the end: the job's copies are removed

Layout under `HOLDFAST_MEMORY_DIR` (the agent's `memory_tier_dir`/<job>, tmpfs by default):
`rank-R/step-N/state.bin` and `MANIFEST.json` (`{"step", "world", "rank", "size", "sha256"}`),
written to a temporary directory renamed into place, so a copy counts only when complete. The
last `keep` steps are kept per rank. The directory and its parent are made private to the user
(0700); one that is a symbolic link or another user's is refused (nothing is kept). Standard library only, but `save` and `restore` exchange
copies through `torch.distributed` (imported when used), which must be initialised.

Every failure is handled: a rank whose copy is missing or corrupt everywhere makes every rank
return None from `restore` (all ranks agree), with the reason in `tier.fallback_reason` and
printed; the job then resumes from `tier.durable_from` (HOLDFAST_DURABLE_FROM, the checkpoint the
coordinator would have used; empty: a fresh start). Each rank also leaves the reason in
`FALLBACK.json` (`{"generation": G, "reason": "…"}`, G its HOLDFAST_GENERATION) in the job's
directory: the agent sends it with the generation's progress, and the incident then says the
state came from the durable tier, and why the memory copy was not used. A later generation's
successful restore and `close` remove it. A failed save is printed and skipped: the tier then
holds an older step, and the coordinator sees that.
"""
import hashlib
import json
import os
import re
import shutil
import stat
import sys

from .inprocess import _int_env

MANIFEST = "MANIFEST.json"
FALLBACK = "FALLBACK.json"
STATE = "state.bin"
SCHEME = "memory://"
_STEP = re.compile(r"^step-(\d+)$")
_RANK = re.compile(r"^rank-(\d+)$")


def _say(message):
    print(f"holdfast.memtier: {message}", file=sys.stderr, flush=True)


class MemoryTier:
    """One rank's view of the job's memory tier. `every`: steps between saves; `keep`: steps kept
    per rank (at least 1); `directory`: default HOLDFAST_MEMORY_DIR (unset: the tier is off and
    `save`/`restore` do nothing)."""

    def __init__(self, every=1, keep=2, directory=None):
        if every < 1 or keep < 1:
            raise ValueError("memtier: every and keep must be at least 1")
        self.every = every
        self.keep = keep
        self.directory = directory if directory is not None else os.environ.get("HOLDFAST_MEMORY_DIR", "")
        if self.directory and not os.path.isabs(self.directory):
            raise ValueError(f"memtier: directory {self.directory!r} must be an absolute path")
        self.rank = _int_env("RANK", 0)
        self.world = _int_env("WORLD_SIZE", 1)
        local = max(1, _int_env("LOCAL_WORLD_SIZE", _int_env("HOLDFAST_NPROC_PER_NODE", 1)))
        # The same local rank on the next host keeps this rank's copy; this rank keeps the copy
        # of the one on the previous host. One host: no peer.
        self.peer = (self.rank + local) % self.world
        self.source = (self.rank - local) % self.world
        self.durable_from = os.environ.get("HOLDFAST_DURABLE_FROM", "")
        self.durable_step = _int_env("HOLDFAST_DURABLE_STEP", 0)
        self.generation = _int_env("HOLDFAST_GENERATION", 0)
        self.fallback_reason = ""

    @property
    def enabled(self):
        return bool(self.directory)

    def _prepare(self):
        """Creates the tier's directories private to this user (state is the model's), and
        refuses (OSError) a directory that is a symbolic link or another user's."""
        parent = os.path.dirname(self.directory.rstrip("/"))
        os.makedirs(os.path.dirname(parent), exist_ok=True)
        for path in (parent, self.directory):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise OSError(f"{path} is not a directory of this user (a link, a file, or another user's)")

    # ----- saving ---------------------------------------------------------------------------

    def save(self, step, serialize):
        """Every rank calls this after each step: every `every` steps it keeps this rank's state
        (`serialize()`, bytes) here and on the peer host, and the peer's copy here. Returns
        whether the step was kept on this host."""
        if not self.enabled or step % self.every != 0:
            return False
        data = bytes(serialize())
        # The exchange is collective: every rank takes part even if its own write fails.
        received = self._exchange(data) if self.peer != self.rank else None
        try:
            self._prepare()
            self._write(self.rank, step, data)
            if received is not None:
                self._write(self.source, step, received)
            self._prune()
            return True
        except OSError as e:
            _say(f"step {step} not kept: {e}")
            return False

    def _exchange(self, data):
        """Sends `data` to the peer and returns the source's, over the default process group."""
        import torch
        import torch.distributed as dist

        size_out = torch.tensor([len(data)], dtype=torch.int64)
        size_in = torch.zeros(1, dtype=torch.int64)
        for request in (dist.isend(size_out, self.peer), dist.irecv(size_in, self.source)):
            request.wait()
        out = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
        buffer = torch.empty(int(size_in.item()), dtype=torch.uint8)
        for request in (dist.isend(out, self.peer), dist.irecv(buffer, self.source)):
            request.wait()
        return buffer.numpy().tobytes()

    def _write(self, rank, step, data):
        """Keeps `data` as rank `rank`'s state at `step`, atomically (a directory renamed)."""
        rank_dir = os.path.join(self.directory, f"rank-{rank}")
        os.makedirs(rank_dir, exist_ok=True)
        final = os.path.join(rank_dir, f"step-{step}")
        staging = os.path.join(rank_dir, f".step-{step}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        with open(os.path.join(staging, STATE), "wb") as f:
            f.write(data)
        manifest = {
            "step": step,
            "world": self.world,
            "rank": rank,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        with open(os.path.join(staging, MANIFEST), "w") as f:
            json.dump(manifest, f)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)

    def _prune(self):
        """Keeps the newest `keep` steps of every rank this host holds."""
        for rank_dir in self._rank_dirs().values():
            steps = sorted(self._steps(rank_dir))
            for step in steps[: max(0, len(steps) - self.keep)]:
                shutil.rmtree(os.path.join(rank_dir, f"step-{step}"), ignore_errors=True)

    def _rank_dirs(self):
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return {}
        found = {}
        for name in names:
            match = _RANK.match(name)
            path = os.path.join(self.directory, name)
            if match and os.path.isdir(path) and not os.path.islink(path):
                found[int(match.group(1))] = path
        return found

    @staticmethod
    def _steps(rank_dir):
        try:
            return [int(m.group(1)) for m in map(_STEP.match, os.listdir(rank_dir)) if m]
        except OSError:
            return []

    # ----- restoring ------------------------------------------------------------------------

    def resume_step(self):
        """The memory-tier step this generation resumes from (HOLDFAST_RESUME_FROM is
        `memory://<job>/step-N`), or None."""
        resume = os.environ.get("HOLDFAST_RESUME_FROM", "")
        if not resume.startswith(SCHEME):
            return None
        match = _STEP.match(resume.rstrip("/").rsplit("/", 1)[-1])
        return int(match.group(1)) if match else None

    def read(self, rank, step):
        """Rank `rank`'s state at `step` on this host, verified against its manifest (size and
        SHA-256), or raises ValueError/OSError saying why not."""
        place = os.path.join(self.directory, f"rank-{rank}", f"step-{step}")
        with open(os.path.join(place, MANIFEST)) as f:
            manifest = json.load(f)
        if (manifest.get("step"), manifest.get("rank"), manifest.get("world")) != (step, rank, self.world):
            raise ValueError(f"{place}: manifest is for another step, rank or world: {manifest}")
        with open(os.path.join(place, STATE), "rb") as f:
            data = f.read()
        if len(data) != manifest.get("size"):
            raise ValueError(f"{place}: {len(data)} bytes, the manifest says {manifest.get('size')}")
        if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
            raise ValueError(f"{place}: SHA-256 does not match the manifest")
        return data

    def restore(self):
        """When this generation resumes from the memory tier: (step, this rank's bytes), taken
        from this host or sent by the lowest rank whose host holds a verified copy. None when it
        does not resume from memory, or when some rank's state cannot be had (every rank then
        returns None: `fallback_reason` says why, and `durable_from` is what to load instead)."""
        step = self.resume_step()
        if step is None:
            return None
        if not self.enabled:
            return self._fall_back(f"step {step}: HOLDFAST_MEMORY_DIR is not set on this host")
        import torch.distributed as dist

        held = {}  # rank -> sha256 of a verified copy on this host
        problems = []
        for rank in self._rank_dirs():
            try:
                held[rank] = hashlib.sha256(self.read(rank, step)).hexdigest()
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as e:
                problems.append(str(e))
        everyone = [None] * self.world
        dist.all_gather_object(everyone, held)
        data = self._read_or_none(self.rank, step) if self.rank in held else None
        reason = ""
        for needy in range(self.world):
            if needy in everyone[needy]:
                continue  # its own host holds it
            holders = [r for r in range(self.world) if needy in everyone[r]]
            if not holders:
                reason = f"step {step}: no host holds a valid copy of rank {needy}'s state"
                break
            sender = holders[0]
            if self.rank == sender:
                # A copy gone bad since it was checked goes out empty: the digest then fails.
                self._send(self._read_or_none(needy, step) or b"", needy)
            elif self.rank == needy:
                data = self._receive(sender)
                if hashlib.sha256(data).hexdigest() != everyone[sender][needy]:
                    problems.append(f"step {step}: rank {needy}'s copy from rank {sender} arrived damaged")
                    data = None
        ok = [None] * self.world
        dist.all_gather_object(ok, data is not None and not reason)
        if not all(ok):
            for problem in problems:
                _say(problem)
            failed = [r for r, good in enumerate(ok) if not good]
            return self._fall_back(reason or f"step {step}: ranks {failed} could not get their state")
        self._remove_fallback()  # an earlier generation's, now stale
        return step, data

    def _read_or_none(self, rank, step):
        try:
            return self.read(rank, step)
        except (OSError, ValueError) as e:
            _say(str(e))
            return None

    def _send(self, data, to):
        import torch
        import torch.distributed as dist

        dist.send(torch.tensor([len(data)], dtype=torch.int64), to)
        if data:
            dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8), to)

    def _receive(self, sender):
        import torch
        import torch.distributed as dist

        size = torch.zeros(1, dtype=torch.int64)
        dist.recv(size, sender)
        buffer = torch.empty(int(size.item()), dtype=torch.uint8)
        if buffer.numel():
            dist.recv(buffer, sender)
        return buffer.numpy().tobytes()

    def _fall_back(self, reason):
        where = self.durable_from or "a fresh start"
        self.fallback_reason = reason
        _say(f"memory tier not used ({reason}); resuming from {where}")
        if self.enabled:
            # For the agent to tell the coordinator, whose incident would otherwise say the
            # memory tier was used. Every rank writes the same, each renamed into place whole.
            marker = {"generation": self.generation, "reason": reason}
            staging = os.path.join(self.directory, f".{FALLBACK}.{os.getpid()}")
            try:
                self._prepare()
                with open(staging, "w") as f:
                    json.dump(marker, f)
                os.rename(staging, os.path.join(self.directory, FALLBACK))
            except OSError as e:
                _say(f"the fallback is not told to the coordinator: {e}")
                try:
                    os.remove(staging)
                except OSError:
                    pass
        return None

    def _remove_fallback(self):
        try:
            os.remove(os.path.join(self.directory, FALLBACK))
        except OSError:
            pass  # none, or another local rank removed it

    # ----- the end --------------------------------------------------------------------------

    def close(self):
        """The job is done: removes this host's copies of this rank and of its source."""
        if not self.enabled:
            return
        for rank in {self.rank, self.source}:
            shutil.rmtree(os.path.join(self.directory, f"rank-{rank}"), ignore_errors=True)
        self._remove_fallback()
        try:
            os.rmdir(self.directory)
        except OSError:
            pass  # another local rank's copies are still there, or it is gone already
