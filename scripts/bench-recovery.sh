#!/usr/bin/env bash
# The fault × mode recovery benchmark of BENCHMARKS.md (issue 13) in rounds: every round runs
# each fault with each mode once, one after another, through scripts/bench-e2e.sh, and appends
# its JSON line (with the round, the cell's name and the 1-minute load average at the run's
# start) to OUT. Then --table OUT prints the Markdown table: per cell the median, the fastest
# and slowest run, every run in order, lost steps, detection and phase medians, the load.
#
#   scripts/bench-recovery.sh [OUT.jsonl]      (default target/bench-recovery.jsonl)
#   scripts/bench-recovery.sh --table OUT.jsonl
#
# Settings (environment):
#   ROUNDS=5                               rounds (the issue asks ≥ 5 runs per cell)
#   FAULTS="worker-kill host-kill xid worker-hang"
#   MODES="inprocess native-warm ft-launcher torchrun"
#   STEPS=30 BOUND_S=200                   passed to bench-e2e.sh
#   NEVER_BOUND_S=60                       the bound for the cells a launcher cannot recover
#                                          (torchrun alone after a lost host or a hung rank)
# A fatal XID is run for holdfast's modes only: without holdfast nothing reads the GPU's error
# stream (bench-e2e.sh would report "not recovered" by construction).
# Needs root (network namespaces), as bench-e2e.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

summarise() {
  python3 - "$1" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
cells = {}
for r in runs:
    cells.setdefault((r["fault"], r["cell"]), []).append(r)
def fmt(v):
    return "—" if v is None else f"{v:.2f}"
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
names = {"inprocess": "holdfast inprocess", "native-warm": "holdfast native-warm",
         "ft-launcher": "ft_launcher", "torchrun": "torchrun alone"}
phases = ["detect", "stop", "restart", "spawn", "imports", "rendezvous", "state", "first_step"]
print("| fault | mode | runs | first step past the resume point, median (s) | min–max | each run (s; × = not recovered) "
      "| lost steps | back at the fault's step (s) | " + " | ".join(phases) + " | recovered | load |")
print("|" + " --- |" * (10 + len(phases)))
for (fault, cell), rs in cells.items():
    ok = [r for r in rs if r.get("recovered") and r.get("first_step_after_fault_s") is not None]
    firsts = [r["first_step_after_fault_s"] for r in ok]
    m = med(firsts)
    lost = [r.get("lost_steps") for r in rs]
    lost_m = med([l for l, r in zip(lost, rs) if r in ok])
    back = None if m is None else m + 0.25 * (lost_m or 0)
    each = " ".join(fmt(r["first_step_after_fault_s"]) if r in ok else "×" for r in rs)
    spread = f"{min(firsts):.2f}–{max(firsts):.2f}" if firsts else "—"
    ph = []
    for p in phases:
        # Detection is measured on every run, recovered or not.
        v = med([r.get("detect_s") for r in rs]) if p == "detect" else \
            med([(r.get("phases") or {}).get(p) for r in ok])
        ph.append(fmt(v))
    loads = [r["load"] for r in rs]
    print(f"| {fault} | {names.get(cell, cell)} | {len(rs)} | **{fmt(m)}** | {spread} | {each} | "
          f"{' '.join('—' if l is None else str(l) for l in lost)} | {fmt(back)} | {' | '.join(ph)} | "
          f"{len(ok)} of {len(rs)} | {min(loads):.1f}–{max(loads):.1f} |")
PY
}

if [ "${1:-}" = --table ]; then
  summarise "${2:?--table needs the JSON-lines file}"
  exit 0
fi
case "${1:-}" in -h|--help) sed -n '2,20p' "$0"; exit 0 ;; esac

out="${1:-target/bench-recovery.jsonl}"
mkdir -p "$(dirname "$out")"
rounds="${ROUNDS:-5}"
faults="${FAULTS:-worker-kill host-kill xid worker-hang}"
modes="${MODES:-inprocess native-warm ft-launcher torchrun}"
steps="${STEPS:-30}"
bound="${BOUND_S:-200}"
never_bound="${NEVER_BOUND_S:-60}"

for round in $(seq 1 "$rounds"); do
  for fault in $faults; do
    for mode in $modes; do
      args=(--fault "$fault" --json --steps "$steps")
      b="$bound"
      case "$mode" in
        ft-launcher|torchrun)
          [ "$fault" = xid ] && continue
          args+=(--baseline "$mode")
          if [ "$mode" = torchrun ] && { [ "$fault" = host-kill ] || [ "$fault" = worker-hang ]; }; then
            b="$never_bound"
          fi ;;
        *) args+=(--mode "$mode") ;;
      esac
      load=$(cut -d' ' -f1 /proc/loadavg)
      echo "round $round: $fault $mode (load $load)" >&2
      line=$(scripts/bench-e2e.sh "${args[@]}" --bound-s "$b" 2>>"$out.log" | tail -n 1) || true
      if [ -z "$line" ] || ! jq -e . >/dev/null 2>&1 <<<"$line"; then
        echo "  no result (see $out.log)" >&2
        line='{"recovered":false,"first_step_after_fault_s":null,"lost_steps":null}'
        line=$(jq -c --arg f "$fault" '. + {fault: $f}' <<<"$line")
      fi
      jq -c --arg cell "$mode" --argjson round "$round" --argjson load "$load" \
        '. + {cell: $cell, round: $round, load: $load}' <<<"$line" | tee -a "$out" >&2
    done
  done
done
summarise "$out"
