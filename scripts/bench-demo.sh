#!/usr/bin/env bash
# Runs `holdfast demo --fault FAULT --json` RUNS times (default kill-agent, 7) and prints the
# median and P90 of each phase, in seconds from the injected fault.
#   scripts/bench-demo.sh [--fault kill-agent|kill-worker|hang|...] [--runs N] [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
fault=kill-agent runs=7 profile=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --fault) fault=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --release) profile=release; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$profile" = release ]; then cargo build -q --release -p holdfast; else cargo build -q -p holdfast; fi
bin=target/$profile/holdfast
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$runs"); do
  "$bin" demo --fault "$fault" --json 2>/dev/null | tail -n 1 >>"$out"
  echo "run $i/$runs done" >&2
done
python3 - "$out" "$fault" "$runs" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
fault, runs = sys.argv[2], sys.argv[3]
ok = [r for r in rows if r["job_state"] == "succeeded" and r["incidents"]]
def p90(xs):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
inc = [r["incidents"][0] for r in ok]
cols = {
    "detect_s": [i["detect_s"] for i in inc],
    "fence_s": [i["fence_s"] for i in inc],
    "replace_s": [i["replace_s"] for i in inc],
    "relaunch_s": [i["relaunch_s"] for i in inc],
    "control_plane_s (relaunch - detect)": [i["relaunch_s"] - i["detect_s"] for i in inc],
    "resume_s (end to end)": [i["resume_s"] for i in inc],
}
print(f"fault {fault}: {len(ok)}/{runs} runs succeeded")
print("| metric | median | P90 | min | max |")
print("| --- | --- | --- | --- | --- |")
for name, xs in cols.items():
    print(f"| {name} | {statistics.median(xs):.3f} | {p90(xs):.3f} | {min(xs):.3f} | {max(xs):.3f} |")
PY
