#!/usr/bin/env bash
# How many agents one coordinator carries (results in BENCHMARKS.md): `holdfast bench swarm` at
# several swarm sizes, each run against a fresh coordinator started here on loopback (its own
# process, so its CPU and memory are its own), then a table with the median of each column.
# Settings (environment):
#   SIZES="100 1000 2000 5000"  agents per run, spares included
#   RUNS=1                      runs per size
#   DURATION=20                 seconds of steady heartbeats per run (CPU is measured over them)
#   JOBS=2 NODES=8 SILENCE=4    jobs of NODES nodes; agents silenced after the steady phase
#                               (one rank of each job first, then free nodes)
#   PROFILE=release|debug       build of holdfast to run (release by default)
#   KEEP=1                      keep the work directory (coordinator logs, every report)
#   TLS=1                       mutual TLS: the coordinator bootstraps its PKI (--pki-dir) and
#                               every simulated agent gets a client certificate from it
# Usage: scripts/bench-swarm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${SIZES:-"100 1000 2000 5000"}
runs=${RUNS:-1}
duration=${DURATION:-20}
jobs=${JOBS:-2}
nodes=${NODES:-8}
silence=${SILENCE:-4}
profile=${PROFILE:-release}
tls=${TLS:-0}
if [ "$profile" = release ]; then
  cargo build -q --release -p holdfast --bin holdfast
  exe=target/release/holdfast
else
  cargo build -q -p holdfast --bin holdfast
  exe=target/debug/holdfast
fi
# One descriptor per agent connection on each side.
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-bench-swarm.XXXXXX")
coordinator_pid=
cleanup() {
  if [ -n "$coordinator_pid" ]; then
    kill "$coordinator_pid" 2>/dev/null || true
    wait "$coordinator_pid" 2>/dev/null || true
  fi
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
results=$work/results.jsonl
: >"$results"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $profile build, TLS=$tls" >&2
for n in $sizes; do
  for run in $(seq "$runs"); do
    rm -f "$work/addr"
    pki="$work/pki-$n-$run"
    coordinator_flags=()
    if [ "$tls" = 1 ]; then coordinator_flags=(--pki-dir "$pki"); fi
    "$exe" coordinator --listen 127.0.0.1:0 --ephemeral --addr-file "$work/addr" \
      "${coordinator_flags[@]}" >"$work/coordinator-$n-$run.log" 2>&1 &
    coordinator_pid=$!
    # Bounded wait for the address line (written once the coordinator listens).
    for _ in $(seq 200); do
      if [ -f "$work/addr" ] && [ "$(wc -l <"$work/addr")" -ge 1 ]; then break; fi
      if ! kill -0 "$coordinator_pid" 2>/dev/null; then break; fi
      sleep 0.1
    done
    if ! [ -f "$work/addr" ] || [ "$(wc -l <"$work/addr")" -lt 1 ]; then
      echo "the coordinator did not start; its log:" >&2
      cat "$work/coordinator-$n-$run.log" >&2
      exit 1
    fi
    addr=$(head -n1 "$work/addr")
    bench_flags=()
    if [ "$tls" = 1 ]; then
      addr="https://$addr"
      bench_flags=(--pki-dir "$pki" --ca-cert "$pki/ca.pem" --token "$(cat "$pki/admin.token")")
    fi
    echo "== $n agents, run $run (coordinator pid $coordinator_pid on $addr)" >&2
    rc=0
    "$exe" bench swarm --coordinator "$addr" --coordinator-pid "$coordinator_pid" \
      --agents "$n" --jobs "$jobs" --nodes-per-job "$nodes" --silence "$silence" \
      --duration "$duration" "${bench_flags[@]}" --json >"$work/report-$n-$run.txt" || rc=$?
    sed '$d' "$work/report-$n-$run.txt" >&2
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 1 ]; then
      tail -n1 "$work/report-$n-$run.txt" >>"$results"
    else
      echo "bench swarm failed (exit $rc) at $n agents" >&2
    fi
    kill "$coordinator_pid" 2>/dev/null || true
    wait "$coordinator_pid" 2>/dev/null || true
    coordinator_pid=
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["agents"], []).append(r)
def med(rs, key, scale=1.0, fmt="{:.3f}"):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return fmt.format(statistics.median(vals) * scale) if vals else "—"
cols = ["agents", "runs", "coord CPU cores", "coord RSS MB", "CPU per 1k agents",
        "hb lag P50 / P99 ms", "ping P99 ms", "ListNodes P99 ms", "detect P50 / P99 s", "job start s",
        "relaunch s", "false timeouts", "gen CPU cores", "gen behind"]
print("| " + " | ".join(cols) + " |")
print("|" + " --- |" * len(cols))
for n in sorted(rows):
    rs = rows[n]
    per_k = [r["coordinator_cpu_cores"] / r["agents"] * 1000 for r in rs
             if r.get("coordinator_cpu_cores") is not None]
    print("| " + " | ".join([
        str(n), str(len(rs)),
        med(rs, "coordinator_cpu_cores", fmt="{:.2f}"),
        med(rs, "coordinator_rss_mb", fmt="{:.0f}"),
        "{:.3f}".format(statistics.median(per_k)) if per_k else "—",
        med(rs, "heartbeat_lag_p50_s", 1000, "{:.0f}") + " / " + med(rs, "heartbeat_lag_p99_s", 1000, "{:.0f}"),
        med(rs, "ping_delay_p99_s", 1000, "{:.0f}"),
        med(rs, "list_nodes_p99_s", 1000, "{:.0f}"),
        med(rs, "detect_p50_s", fmt="{:.2f}") + " / " + med(rs, "detect_p99_s", fmt="{:.2f}"),
        med(rs, "job_start_s"),
        med(rs, "relaunch_s"),
        str(max(r["false_timeouts"] for r in rs)),
        med(rs, "generator_cpu_cores", fmt="{:.2f}"),
        "yes" if any(r["generator_behind"] for r in rs) else "no",
    ]) + " |")
PY
