#!/usr/bin/env bash
# Cost of checking replacements: runs `holdfast demo --spares 2 --json` RUNS times (default 5)
# with --fault kill-agent (the first spare passes its replacement check) and with
# --fault bad-spare (the first spare fails it and is fenced, the second takes over), and prints
# the median of each recovery phase in seconds from the fault.
#   scripts/bench-lifecycle.sh [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build -q -p holdfast
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for fault in kill-agent bad-spare; do
  for i in $(seq "$runs"); do
    printf '%s ' "$fault" >>"$out"
    target/debug/holdfast demo --spares 2 --fault "$fault" --json 2>/dev/null | tail -n 1 >>"$out"
    echo "$fault run $i/$runs done" >&2
  done
done
python3 - "$out" "$runs" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    fault, _, body = line.partition(" ")
    if body.strip():
        rows.setdefault(fault, []).append(json.loads(body))
print("| fault | runs ok | detect_s | fence_s | replace_s | relaunch_s | resume_s | rejected candidates |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for fault, rs in rows.items():
    ok = [r for r in rs if r["job_state"] == "succeeded" and r["incidents"]]
    inc = [r["incidents"][0] for r in ok]
    med = lambda k: statistics.median(i[k] for i in inc)
    rej = statistics.median(len(i.get("rejected_candidates", [])) for i in inc)
    print(f"| {fault} | {len(ok)}/{len(rs)} | {med('detect_s'):.3f} | {med('fence_s'):.3f} | "
          f"{med('replace_s'):.3f} | {med('relaunch_s'):.3f} | {med('resume_s'):.3f} | {rej:.0f} |")
PY
