#!/usr/bin/env bash
# Measures holdfast's downtime per failure with the demo (real processes on loopback, N runs per
# fault) and feeds the median into the what-if model of the published worked example
# (10 M GPU-hours, 256 × 8-GPU instances, 0.05 %/h). Usage: scripts/bench-whatif.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
cargo build -q -p holdfast
bin=target/debug/holdfast
for fault in kill-agent kill-worker; do
  totals=()
  for _ in $(seq "$runs"); do
    total=$("$bin" demo --json --fault "$fault" 2>/dev/null | tail -n 1 |
      python3 -c 'import json,sys; i=json.load(sys.stdin)["incidents"][0]; print(i["resume_s"])')
    totals+=("$total")
  done
  median=$(printf '%s\n' "${totals[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}')
  echo "fault $fault: fault → resumed over $runs runs: ${totals[*]} s; median $median s"
  minutes=$(python3 -c "print($median/60)")
  "$bin" what-if --instances 256 --gpus-per-instance 8 --gpu-hours 10000000 --failure-rate 0.05 \
    --downtime-min "$minutes" --json | tail -n 1
done
