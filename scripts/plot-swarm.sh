#!/usr/bin/env bash
# Draws BENCHMARKS.md's swarm table (coordinator CPU and RSS, detection P99, against agents) as
# docs/bench-swarm.png with scripts/plot-swarm.cjs, in the headless Chromium of
# scripts/setup/70-browser.sh (HOLDFAST_CACHE as for the tests). Run it after the table changes.
# Usage: scripts/plot-swarm.sh [BENCHMARKS.md] [docs/bench-swarm.png]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=setup/70-browser.sh
source scripts/setup/70-browser.sh
NODE_PATH="$HOLDFAST_NODE_MODULES" node scripts/plot-swarm.cjs "$@"
