#!/usr/bin/env bash
# Side by side: the end-to-end training job (examples/train_ddp.py through torchrun, gloo on CPU,
# checkpoints in a real S3 server) on network-namespace hosts, with one fault, under holdfast or
# (--baseline) under plain `torchrun --max-restarts=3` with c10d rendezvous and no holdfast.
#
#   scripts/bench-e2e.sh [--fault host-kill|host-partition|worker-kill|worker-hang|xid]
#                        [--mode torchrun|native|native-warm|inprocess] [--baseline] [--json]
#                        [--bound-s N]
#                        [--steps N]
#
# --mode says how holdfast starts the ranks: torchrun on every host (default), its native
# launcher (`python train_ddp.py` per rank with torchrun's variables), or the native launcher
# with warm standby interpreters (torch imported ahead of a relaunch), or that with in-process
# restart (examples/train_inprocess.py through holdfast.run: survivors re-form the group in place,
# a replaced rank takes the state from a survivor).
# --mode memtier: examples/train_memtier.py with the memory state tier (state on this host and a
# peer every step; a relaunch resumes from it when newer than S3); the JSON adds "state_tier".
# Prints one JSON line: {"mode", "launcher", "fault", "detect_s", "first_step_after_fault_s",
# "lost_steps", "recovered", "phases"} (phases: where the time from the fault to the first step
# went; lost_steps: the job's step at the fault minus the step it resumed from).
# A run that has not recovered within the bound (default 600 s) reports recovered: false.
# Installs what it needs on first use (PyTorch and moto into $HOLDFAST_CACHE). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

fault=host-kill
flags=()
bound=600
while [ $# -gt 0 ]; do
  case "$1" in
    --fault) fault="${2:?--fault needs a value}"; shift 2 ;;
    --fault=*) fault="${1#--fault=}"; shift ;;
    --baseline) flags+=(--baseline); shift ;;
    --mode) flags+=(--mode "${2:?--mode needs a value}"); shift 2 ;;
    --mode=*) flags+=(--mode "${1#--mode=}"); shift ;;
    --json) flags+=(--json); shift ;;
    --bound-s) bound="${2:?--bound-s needs a value}"; shift 2 ;;
    --steps) flags+=(--steps "${2:?--steps needs a value}"); shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench-e2e.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$fault" in
  host-kill|host-partition|worker-kill|worker-hang|xid) ;;
  *) echo "bench-e2e.sh: --fault $fault: use host-kill, host-partition, worker-kill, worker-hang or xid" >&2; exit 2 ;;
esac

export HOLDFAST_CACHE="${HOLDFAST_CACHE:-$PWD/target/test-cache}"
mkdir -p "$HOLDFAST_CACHE"
{
  # shellcheck disable=SC1091
  source scripts/setup/40-torch.sh
  # shellcheck disable=SC1091
  source scripts/setup/41-s3.sh
  # The runner lives in the test kit; it starts the holdfast binary built beside it.
  cargo build -q -p holdfast -p holdfast-testkit --bins
} >&2
exec target/debug/holdfast-e2e --fault "$fault" --bound-s "$bound" "${flags[@]}"
