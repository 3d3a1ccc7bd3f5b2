#!/usr/bin/env bash
# Deep health check: `dcgmi diag -r LEVEL` when DCGM is installed (level 1 takes seconds, 2 about
# 2 minutes, 3 about 15). Contract (lifecycle-scripts/health/README.md): one line on stdout,
# exit 0 on pass or "not applicable", non-zero on failure.
# Settings (environment): HOLDFAST_DCGM_LEVEL (default 1), HOLDFAST_DCGM_TIMEOUT_S (default 1800).
set -euo pipefail
level=${HOLDFAST_DCGM_LEVEL:-1}
limit=${HOLDFAST_DCGM_TIMEOUT_S:-1800}
case "$level" in 1|2|3|4) ;; *) echo "fail: HOLDFAST_DCGM_LEVEL must be 1-4, not $level"; exit 2 ;; esac
if [ ! -e /dev/nvidiactl ]; then echo "not applicable: no GPU on this host"; exit 0; fi
if ! command -v dcgmi >/dev/null 2>&1; then echo "not applicable: DCGM (dcgmi) is not installed"; exit 0; fi
rc=0
out=$(timeout "$limit" dcgmi diag -r "$level" 2>&1) || rc=$?
if [ "$rc" -eq 124 ]; then echo "fail: dcgmi diag -r $level did not finish within ${limit} s"; exit 1; fi
# dcgmi prints a table; a failed test shows "Fail" in its row.
failed=$(printf '%s\n' "$out" | grep -m1 -E '\bFail' | tr -s ' |' ' ' | sed 's/^ //; s/ $//' || true)
if [ "$rc" -ne 0 ] || [ -n "$failed" ]; then
  echo "fail: dcgmi diag -r $level (exit $rc): ${failed:-$(printf '%s\n' "$out" | tail -n1)}"
  exit 1
fi
echo "pass: dcgmi diag -r $level"
