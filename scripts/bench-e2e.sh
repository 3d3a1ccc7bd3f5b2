#!/usr/bin/env bash
# Side by side: the end-to-end training job (examples/train_ddp.py through torchrun, gloo on CPU,
# checkpoints in a real S3 server) on network-namespace hosts, with one fault, under holdfast or
# without it: --baseline (or --baseline torchrun) under plain `torchrun --max-restarts=3` with
# c10d rendezvous; --baseline ft-launcher under NVIDIA's `ft_launcher` (nvidia-resiliency-ext)
# with the same restarts, its rank monitors fed by the trainer's heartbeats (train_ddp.py
# --ft-heartbeats) and a third launcher on the spare host as a hot spare.
#
#   scripts/bench-e2e.sh [--fault host-kill|host-partition|worker-kill|worker-hang|xid]
#                        [--mode torchrun|native|native-warm|inprocess]
#                        [--baseline [torchrun|ft-launcher]] [--json] [--bound-s N] [--steps N]
#
# --mode says how holdfast starts the ranks: torchrun on every host (default), its native
# launcher (`python train_ddp.py` per rank with torchrun's variables), or the native launcher
# with warm standby interpreters (torch imported ahead of a relaunch), or that with in-process
# restart (examples/train_inprocess.py through holdfast.run: survivors re-form the group in place,
# a replaced rank takes the state from a survivor).
# --mode memtier: examples/train_memtier.py with the memory state tier (state on this host and a
# peer every step; a relaunch resumes from it when newer than S3); the JSON adds "state_tier".
# Prints one JSON line: {"mode", "launcher", "fault", "detect_s", "first_step_after_fault_s",
# "lost_steps", "recovered", "phases"} (mode: "holdfast", or a baseline's "baseline" or
# "ft-launcher", which have no launcher and coarser phases — detect, restart, imports,
# rendezvous, state, first_step; phases: where the time from the fault to the first step went;
# lost_steps: the job's step at the fault minus the step it resumed from).
# A run that has not recovered within the bound (default 600 s) reports recovered: false.
# Installs what it needs on first use (PyTorch and moto into $HOLDFAST_CACHE; for --baseline
# ft-launcher, nvidia-resiliency-ext beside them, for the benchmark only). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

fault=host-kill
flags=()
baseline=
bound=600
while [ $# -gt 0 ]; do
  case "$1" in
    --fault) fault="${2:?--fault needs a value}"; shift 2 ;;
    --fault=*) fault="${1#--fault=}"; shift ;;
    --baseline=*) baseline="${1#--baseline=}"; shift ;;
    --baseline)
      case "${2:-}" in
        torchrun|ft-launcher) baseline="$2"; shift 2 ;;
        *) baseline=torchrun; shift ;;
      esac ;;
    --mode) flags+=(--mode "${2:?--mode needs a value}"); shift 2 ;;
    --mode=*) flags+=(--mode "${1#--mode=}"); shift ;;
    --json) flags+=(--json); shift ;;
    --bound-s) bound="${2:?--bound-s needs a value}"; shift 2 ;;
    --steps) flags+=(--steps "${2:?--steps needs a value}"); shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "bench-e2e.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$fault" in
  host-kill|host-partition|worker-kill|worker-hang|xid) ;;
  *) echo "bench-e2e.sh: --fault $fault: use host-kill, host-partition, worker-kill, worker-hang or xid" >&2; exit 2 ;;
esac
case "$baseline" in
  '') ;;
  torchrun|ft-launcher) flags+=(--baseline "$baseline") ;;
  *) echo "bench-e2e.sh: --baseline $baseline: use torchrun or ft-launcher" >&2; exit 2 ;;
esac

export HOLDFAST_CACHE="${HOLDFAST_CACHE:-$PWD/target/test-cache}"
# The newest nvidia-resiliency-ext the package index offers for this Python (3.11).
ft_version=0.4.1
mkdir -p "$HOLDFAST_CACHE"
{
  # shellcheck disable=SC1091
  source scripts/setup/40-torch.sh
  # shellcheck disable=SC1091
  source scripts/setup/41-s3.sh
  if [ "$baseline" = ft-launcher ]; then
    # Its own directory on top of the torch virtualenv, for the benchmark only: its NVML
    # dependency would make every torch import of the shared virtualenv warn. --no-deps keeps
    # pip from touching torch; the others are the package's requirements (nvidia-ml-py
    # provides the pynvml module; the deprecated pynvml wrapper is left out).
    HOLDFAST_FT_LAUNCHER="$HOLDFAST_CACHE/ft-launcher-$ft_version"
    if ! PYTHONPATH="$HOLDFAST_FT_LAUNCHER" "$HOLDFAST_VENV/bin/python" -c \
      'import nvidia_resiliency_ext.fault_tolerance' >/dev/null 2>&1; then
      echo "installing nvidia-resiliency-ext $ft_version into $HOLDFAST_FT_LAUNCHER (first use only)"
      rm -rf "$HOLDFAST_FT_LAUNCHER"
      "$HOLDFAST_VENV/bin/pip" install -q --no-cache-dir --disable-pip-version-check --no-deps \
        --target "$HOLDFAST_FT_LAUNCHER" "nvidia-resiliency-ext==$ft_version" defusedxml \
        nvidia-ml-py packaging psutil pyyaml
    fi
    export HOLDFAST_FT_LAUNCHER
  fi
  # The runner lives in the test kit; it starts the holdfast binary built beside it.
  cargo build -q -p holdfast -p holdfast-testkit --bins
} >&2
exec target/debug/holdfast-e2e --fault "$fault" --bound-s "$bound" "${flags[@]}"
