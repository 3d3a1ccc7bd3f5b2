#!/usr/bin/env bash
# Measures the control plane's own recovery (results are in BENCHMARKS.md):
#  1. failover time: the leading coordinator SIGKILLed → the standby serving the operator API,
#     two coordinators on a real etcd, lease TTL 2 s (RUNS runs, default 7);
#  2. restart-to-reconciled: one coordinator with AGENTS connected agents (default 100)
#     SIGKILLed and restarted on its redb state file → every agent connected and ready again
#     (with the default agent reconnect backoff cap of 2 s, and with 200 ms).
# Usage: scripts/bench-control-plane.sh   (needs etcd + protoc: scripts/setup/20-etcd.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup/20-etcd.sh
runs=${RUNS:-7}
agents=${AGENTS:-100}
echo "== failover (leader SIGKILLed → standby serving), $runs runs"
HOLDFAST_BENCH_RUNS=$runs cargo test -q -p holdfast --features etcd --test ha_etcd bench_failover_time \
  -- --ignored --nocapture 2>&1 | grep -E '^(run |failover_s)'
for backoff in 2000 200; do
  echo "== restart-to-reconciled, $agents agents, agent reconnect backoff cap $backoff ms"
  HOLDFAST_BENCH_RUNS=5 HOLDFAST_BENCH_AGENTS=$agents HOLDFAST_BENCH_AGENT_BACKOFF_MS=$backoff \
    cargo test -q -p holdfast --test bench_restart -- --ignored --nocapture 2>&1 \
    | grep -E '^(run |restart_to_reconciled_s)'
done
