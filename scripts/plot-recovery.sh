#!/usr/bin/env bash
# Draws BENCHMARKS.md's recovery table (fault × mode, issue 13) as docs/bench-recovery.png with
# scripts/plot-recovery.cjs, in the headless Chromium of scripts/setup/70-browser.sh
# (HOLDFAST_CACHE as for the tests). Run it after the table changes.
# Usage: scripts/plot-recovery.sh [BENCHMARKS.md] [docs/bench-recovery.png]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=setup/70-browser.sh
source scripts/setup/70-browser.sh
NODE_PATH="$HOLDFAST_NODE_MODULES" node scripts/plot-recovery.cjs "$@"
