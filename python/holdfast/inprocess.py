"""In-process restart for data-parallel jobs under holdfast's native launcher.

A job opts in by running its training loop through `holdfast.run` and being launched with
`holdfast launch --nproc-per-node N --in-process -- python train.py ...`:

    import holdfast

    state = {"model": model, "optimizer": optimizer}   # objects with state_dict()/load_state_dict()

    def load(ctx):                # no rank holds live state: a fresh start or a full relaunch
        if ctx.resume_from:
            ...                   # load the checkpoint into model and optimizer
            return step_of_that_checkpoint
        return 0

    def train(ctx):               # (re-)entered after every re-form
        ddp = DistributedDataParallel(model)
        for step in range(ctx.step + 1, total + 1):
            optimizer.zero_grad()
            loss_fn(ddp(batch(step, ctx.rank))).backward()
            optimizer.step()
            ctx.step = step       # right after optimizer.step(): this step is done

    holdfast.run(train, state=state, load=load)

What happens on a fault:

1. The surviving ranks are never killed. A survivor learns of the fault from its broken
   collective, or from the agent: gloo fails at once when a peer's connection drops (a killed
   worker or host, a host fenced for a fatal XID, a hung rank the coordinator stopped). A peer
   that goes silent with its connections open (a host cut off from the network) would hold the
   collective until the group's timeout; instead, while `train` runs a thread watches the
   re-form file (see 2), and when it names a generation newer than the group's it shuts down
   the group's connections (the sockets `init_process_group` opened; listening ones are left
   alone), so the blocked collective fails within a poll (20 ms) of the agent's notice. gloo
   has no abort, and a Python signal handler would not run while the main thread waits in a
   C++ collective; a thread that holds no lock the collective needs can. The group's timeout
   (`HOLDFAST_PG_TIMEOUT`, seconds, default 30) stays as the backstop for a group nobody
   re-forms, long enough that a slow step (a large checkpoint written by one rank while the
   others wait in the next collective) does not break the group by mistake. `train` raises;
   `run` catches it, abandons the group (`destroy_process_group`; an NCCL group is aborted
   first, from the watch thread on the agent's notice and again before the destroy, with
   `torch.distributed`'s `_abort_process_group`) and drops the model wrapper that belonged to
   it.
2. The agent tells the survivors the new generation through the re-form file it names in
   `HOLDFAST_REFORM_FILE` (JSON: generation, master_addr, master_port, nnodes, node_rank,
   nproc_per_node, rdzv_id, resume_from, resume_step; written atomically). `run` waits for a
   generation newer than its own (`HOLDFAST_REFORM_TIMEOUT`, seconds, default 60), sets the
   torchrun variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...) and the HOLDFAST_ ones
   (HOLDFAST_GENERATION, ...) to the new generation's, and joins its store with
   `init_process_group`.
3. Only the failed ranks were launched anew. Every rank says which step its state is at (-1:
   none); the lowest rank holding the newest step broadcasts `state` and the step to the ranks
   behind it, so the replacement takes the state from a surviving replica instead of a
   checkpoint, and no completed step is lost or applied twice. When no rank holds state (a fresh
   start, a full relaunch), every rank calls `load`.
4. `train` is called again with `ctx.step` the last completed step.

If anything in 1-3 fails or times out the process exits with status 75: the agent reports it
and the coordinator falls back to relaunching every rank from the latest checkpoint, as for a
job that did not opt in. Gradients are cleared (`zero_grad(set_to_none=True)` on each state
object that has it) before `train` is re-entered, since the failed step's backward may have
left partial sums in them.

Outside holdfast (no HOLDFAST_REFORM_FILE) a failure is raised as usual.
"""
import datetime
import gc
import json
import os
import socket
import sys
import threading
import time

# The exit status of a process whose in-process re-form failed (EX_TEMPFAIL): the coordinator
# relaunches every rank.
REFORM_FAILED = 75

# How often the re-form file is read while waiting for the agent's notice, in seconds.
_POLL_S = 0.02


class Context:
    """What `train` and `load` see: the rank's place in the current generation and its step."""

    def __init__(self):
        self.step = 0
        self.has_state = False
        self.reforms = 0
        self.restored_from = "none"
        self.started_generation = _int_env("HOLDFAST_GENERATION", 0)

    # The rank's place in the current generation, from the environment the agent set (a re-form
    # updates it).
    rank = property(lambda self: _int_env("RANK", 0))
    world_size = property(lambda self: _int_env("WORLD_SIZE", 1))
    local_rank = property(lambda self: _int_env("LOCAL_RANK", 0))
    generation = property(lambda self: _int_env("HOLDFAST_GENERATION", 0))

    @property
    def resume_from(self):
        """The checkpoint the coordinator resolved for this generation ('' for none)."""
        return os.environ.get("HOLDFAST_RESUME_FROM", "")


def run(train, state, load=None, backend="gloo"):
    """Runs `train(ctx)` in the process group, re-forming it in place after a fault (see the
    module's docs); returns what `train` returns. `state` maps names to objects with
    `state_dict()` and `load_state_dict()` (model, optimizer, scheduler, ...)."""
    import torch.distributed as dist

    ctx = Context()
    reform_file = os.environ.get("HOLDFAST_REFORM_FILE", "")
    sockets = _init_group(dist, backend)
    while True:
        _sync_state(dist, ctx, state, load)
        # What lives now (torch, the model) is left out of later collections: the one that
        # frees the broken group's wrapper after a fault then takes milliseconds, not a second.
        gc.freeze()
        watch = _ReformWatch(reform_file, ctx.generation, sockets, _nccl_abort(dist))
        try:
            result = train(ctx)
        except Exception as e:  # noqa: BLE001 - decided below
            told = watch.stop()
            if not reform_file or not (told or _is_group_failure(e)):
                raise
            _log(f"process group broke at step {ctx.step}: {_first_line(e)}")
        else:
            watch.stop()
            dist.destroy_process_group()
            return result
        # The failed group, the wrapper made for it and the traceback's frames go now.
        _abandon(dist)
        for obj in state.values():
            if hasattr(obj, "zero_grad"):
                obj.zero_grad(set_to_none=True)
        try:
            sockets = _join_next_generation(dist, ctx, reform_file, backend)
        except Exception as e:  # noqa: BLE001 - any failure here falls back to a relaunch
            _log(f"in-process re-form failed: {_first_line(e)}; exiting for a full relaunch")
            sys.stdout.flush()
            os._exit(REFORM_FAILED)
        ctx.reforms += 1


def _init_group(dist, backend):
    """Joins the generation's group; returns the sockets it opened (fd: link)."""
    seconds = float(os.environ.get("HOLDFAST_PG_TIMEOUT", "30"))
    if _int_env("RANK", 0) != 0:
        # Rank 0 hosts the generation's store. A client that finds it not listening yet backs
        # off for about a second before it tries again; waiting for the port here costs 10 ms.
        _wait_for_store(os.environ.get("MASTER_ADDR", ""), _int_env("MASTER_PORT", 0), seconds)
    before = _sockets()
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    return {fd: link for fd, link in _sockets().items() if before.get(fd) != link}


def _sockets():
    """The process's open sockets: fd -> 'socket:[inode]'."""
    found = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:"):
            found[int(name)] = link
    return found


class _ReformWatch:
    """While `train` runs: waits for the agent's notice of a generation newer than `generation`
    in `reform_file`, and then breaks the group: an NCCL group is aborted (`abort`, which makes
    its blocked collectives return with an error), and the group's connections (`sockets`) are
    shut down, so that a gloo collective blocked on a peer that will never answer fails now
    rather than at the group's timeout. The socket's own fd is shut down, not closed: gloo still
    owns it."""

    def __init__(self, reform_file, generation, sockets, abort=None):
        self._file = reform_file
        self._generation = generation
        self._sockets = sockets
        self._abort = abort
        self._stop = threading.Event()
        self._told = False
        self._thread = None
        if reform_file and (sockets or abort):
            self._thread = threading.Thread(target=self._run, name="holdfast-reform", daemon=True)
            self._thread.start()

    def stop(self):
        """Ends the watch (before the group's sockets are closed, so that no fd number it
        holds is reused); `True` when the notice came and the connections were shut down."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self._told

    def _run(self):
        while not self._stop.wait(_POLL_S):
            if _told_generation(self._file) > self._generation:
                break
        else:
            return
        _log(f"told of a generation after {self._generation}: leaving the group's collectives")
        self._told = True
        if self._abort is not None:
            self._abort()
        for fd, link in self._sockets.items():
            _shut_down(fd, link)


def _shut_down(fd, link):
    """Shuts down the connected socket at `fd` if it is still the one seen as `link`."""
    try:
        if os.readlink(f"/proc/self/fd/{fd}") != link:
            return
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        # A listener's accept loop would end the process on an error: only connections.
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _told_generation(reform_file):
    """The generation the agent last wrote to the re-form file (0: none yet)."""
    told = _read_json(reform_file)
    try:
        return int(told.get("generation", 0)) if isinstance(told, dict) else 0
    except (TypeError, ValueError):
        return 0


def _wait_for_store(host, port, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)


def _sync_state(dist, ctx, state, load):
    """Brings every rank to the newest step any rank holds, from a peer; `load` when none does."""
    mine = ctx.step if ctx.has_state else -1
    steps = [None] * dist.get_world_size()
    dist.all_gather_object(steps, mine)
    newest = max(steps)
    if newest < 0:
        ctx.step = int(load(ctx)) if load is not None else 0
        ctx.has_state = True
        ctx.restored_from = "checkpoint" if ctx.resume_from else "fresh"
        return
    source = steps.index(newest)
    if all(s == newest for s in steps):
        return
    payload = [None]
    if dist.get_rank() == source:
        payload = [{"step": newest, "state": {k: v.state_dict() for k, v in state.items()}}]
    started = time.time()
    dist.broadcast_object_list(payload, src=source)
    if steps[dist.get_rank()] != newest:
        received = payload[0]
        for name, obj in state.items():
            obj.load_state_dict(received["state"][name])
        ctx.step = int(received["step"])
        ctx.has_state = True
        ctx.restored_from = f"rank {source}"
        _log(
            f"rank {dist.get_rank()}: state at step {ctx.step} received from rank {source} "
            f"in {time.time() - started:.3f} s"
        )


def _join_next_generation(dist, ctx, reform_file, backend):
    """Waits for the agent's word of a newer generation, takes its variables and joins it;
    returns the new group's sockets."""
    limit = float(os.environ.get("HOLDFAST_REFORM_TIMEOUT", "60"))
    deadline = time.monotonic() + limit
    current = ctx.generation
    while _told_generation(reform_file) <= current:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no generation after {current} in {reform_file} within {limit:.0f} s")
        time.sleep(_POLL_S)
    told = _read_json(reform_file)
    nproc = max(1, int(told["nproc_per_node"]))
    node_rank = int(told["node_rank"])
    rank = node_rank * nproc + ctx.local_rank
    world = int(told["nnodes"]) * nproc
    generation = int(told["generation"])
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "GROUP_RANK": str(node_rank),
            "GROUP_WORLD_SIZE": str(told["nnodes"]),
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": str(world),
            "MASTER_ADDR": str(told["master_addr"]),
            "MASTER_PORT": str(told["master_port"]),
            "TORCHELASTIC_RUN_ID": str(told["rdzv_id"]),
            "HOLDFAST_GENERATION": str(generation),
            "HOLDFAST_NODE_RANK": str(node_rank),
            "HOLDFAST_NNODES": str(told["nnodes"]),
            "HOLDFAST_RESUME_FROM": str(told.get("resume_from", "")),
            "HOLDFAST_RESUME_STEP": str(told.get("resume_step", 0)),
        }
    )
    _log(f"re-forming as rank {rank}/{world} of generation {generation} at step {ctx.step}")
    return _init_group(dist, backend)


def _abandon(dist):
    abort = _nccl_abort(dist)
    if abort is not None:
        # A broken NCCL communicator can hang a destroy; abort frees it without waiting.
        abort()
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - the group is broken; it only has to go
        _log(f"destroying the broken group: {_first_line(e)}")
    gc.collect()


def _nccl_abort(dist):
    """For an NCCL group, a function that aborts it (every communicator of the default group);
    None for gloo, which has no abort (its connections are shut down instead)."""
    try:
        if not dist.is_initialized() or dist.get_backend() != "nccl":
            return None
    except Exception:  # noqa: BLE001 - no group, nothing to abort
        return None
    c10d = getattr(dist, "distributed_c10d", None)
    abort = getattr(c10d, "_abort_process_group", None)
    if abort is None:
        _log("this torch cannot abort an NCCL group; the group's timeout decides")
        return None

    def run():
        try:
            abort()
        except Exception as e:  # noqa: BLE001 - already aborted or destroyed
            _log(f"aborting the NCCL group: {_first_line(e)}")

    return run


# What a broken gloo/NCCL group raises (torch.distributed.DistError and its subclasses, or a
# RuntimeError from the backend with one of these in its message).
_GROUP_FAILURES = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "gloo",
    "nccl",
    "processgroup",
    "socket",
)


def _is_group_failure(e):
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(e, dist_error):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(s in text for s in _GROUP_FAILURES)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _int_env(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _log(message):
    print(f"holdfast {time.time():.3f}: {message}", flush=True)
