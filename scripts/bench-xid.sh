#!/usr/bin/env bash
# Injected fatal XID → detection at the coordinator: runs `holdfast demo --fault xid --json`
# RUNS times (default 20) and prints the median and P90 of every phase (detect_s is the one
# this measures; target ≤ 1 s).
#   scripts/bench-xid.sh [--runs N] [--debug]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=20
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
exec scripts/bench-demo.sh --fault xid --runs "$runs" "${args[@]}"
