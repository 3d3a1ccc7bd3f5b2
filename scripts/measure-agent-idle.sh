#!/usr/bin/env bash
# Agent CPU% and RSS while idle with every health monitor on: a coordinator and two agents on
# loopback, one with the production defaults (NVML or not-applicable GPU checks, /dev/kmsg,
# host probe) and one with the fault-injection seam on as well (it polls its inject file every
# 20 ms). Usage: scripts/measure-agent-idle.sh [SECONDS] [HOLDFAST_BINARY]
set -euo pipefail
secs=${1:-600}
exe=${2:-target/debug/holdfast}
dir=$(mktemp -d /tmp/holdfast-idle.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
"$exe" coordinator --listen 127.0.0.1:0 --addr-file "$dir/addr" >"$dir/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$dir/addr" ] && break; sleep 0.1; done
addr="http://$(head -n1 "$dir/addr")"
"$exe" agent --coordinator "$addr" --node-id idle-default --state-dir "$dir/a" >"$dir/a.log" 2>&1 &
a=$!; pids+=($a)
"$exe" agent --coordinator "$addr" --node-id idle-inject --state-dir "$dir/b" --enable-fault-injection >"$dir/b.log" 2>&1 &
b=$!; pids+=($b)
sleep 5 # start-up (reading the kernel log from its start) is not idle time
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
a0=$(cpu $a); b0=$(cpu $b); amax=0; bmax=0; asum=0; bsum=0; n=0
end=$((SECONDS + secs))
while [ $SECONDS -lt $end ]; do
  ra=$(rss $a); rb=$(rss $b)
  amax=$((ra > amax ? ra : amax)); bmax=$((rb > bmax ? rb : bmax))
  asum=$((asum + ra)); bsum=$((bsum + rb)); n=$((n + 1))
  sleep 10
done
a1=$(cpu $a); b1=$(cpu $b)
for row in "default $a0 $a1 $asum $amax" "fault-injection $b0 $b1 $bsum $bmax"; do
  set -- $row
  awk -v name="$1" -v c0="$2" -v c1="$3" -v sum="$4" -v max="$5" -v n="$n" -v t="$ticks" -v s="$secs" \
    'BEGIN { printf "agent %-16s cpu %.3f%% over %d s  rss mean %.1f MiB max %.1f MiB\n", name, 100*(c1-c0)/t/s, s, sum/n/1024, max/1024 }'
done
