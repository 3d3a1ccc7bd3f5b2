#!/usr/bin/env bash
# Fence → replacement-ready time through each replacement provider: a one-node training job on
# the lab each provider's end-to-end test builds (cli/tests/e2e_slurm.rs, e2e_ec2.rs,
# provider.rs), its host killed mid-training (agent and worker at once).
#
#   scripts/bench-providers.sh --provider spares|static|slurm|ec2 [--runs N] [--json]
#
#   spares  the warm spare pool, no provider (the fence is holdfast's own)
#   static  the shipped static-host-list scripts (lifecycle-scripts/providers/static)
#   slurm   the shipped slurm scripts against slurmctld + slurmd on network-namespace hosts
#   ec2     the shipped ec2 scripts against moto's EC2 API server
#
# Prints one JSON line per run: {"provider", "run", "fenced_in_provider", "replacement_ready_s",
# "detect_s", "resumed_s", "resumed", "replacement", "resumed_from_step"}; without --json, a
# median and spread follow on stderr. fenced_in_provider: Slurm shows the node drained with
# holdfast's reason, EC2 shows exactly that instance terminated (or stopped) and one launched,
# static records it in hosts.fenced; spares: the node is fenced in holdfast. replacement_ready_s
# is the incident's fenced → replaced (replacement registered, checked, and given the rank);
# resumed_s is fenced → the first step of the new generation past its checkpoint.
# The runs are the ignored tests of cli/tests/bench_providers.rs (one per provider; --exact,
# since the exec providers read their settings from the test process's environment).
# Installs what it needs on first use (scripts/setup/*.sh into $HOLDFAST_CACHE). Needs root
# for slurm and ec2.
set -euo pipefail
cd "$(dirname "$0")/.."

provider=
runs=3
json=0
while [ $# -gt 0 ]; do
  case "$1" in
    --provider) provider="${2:?--provider needs a value}"; shift 2 ;;
    --provider=*) provider="${1#--provider=}"; shift ;;
    --runs) runs="${2:?--runs needs a value}"; shift 2 ;;
    --runs=*) runs="${1#--runs=}"; shift ;;
    --json) json=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "bench-providers.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$provider" in
  spares|static|slurm|ec2) ;;
  *) echo "bench-providers.sh: --provider ${provider:-(none)}: use spares, static, slurm or ec2" >&2; exit 2 ;;
esac
case "$runs" in
  ''|*[!0-9]*|0) echo "bench-providers.sh: --runs $runs: a positive number" >&2; exit 2 ;;
esac

export HOLDFAST_CACHE="${HOLDFAST_CACHE:-$PWD/target/test-cache}"
export HOLDFAST_TEST_STRICT=1
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
mkdir -p "$HOLDFAST_CACHE"
{
  # The training job runs examples' trainer with Python; the labs need their servers.
  # shellcheck disable=SC1091
  source scripts/setup/00-python.sh
  case "$provider" in
    # shellcheck disable=SC1091
    slurm) source scripts/setup/43-slurm.sh ;;
    # shellcheck disable=SC1091
    ec2) source scripts/setup/42-ec2.sh ;;
  esac
  cargo build -q -p holdfast --bins --test bench_providers
} >&2

out=$(HOLDFAST_BENCH_RUNS="$runs" cargo test -q -p holdfast --test bench_providers -- \
  --ignored --exact "bench_replacement_$provider" --nocapture --test-threads=1 2>/dev/null \
  | grep '^{"' || true)
if [ -z "$out" ]; then
  echo "bench-providers.sh: no run finished (rerun: cargo test -p holdfast --test bench_providers -- --ignored --exact bench_replacement_$provider --nocapture)" >&2
  exit 1
fi
printf '%s\n' "$out"
if [ "$json" = 0 ]; then
  printf '%s\n' "$out" | python3 -c '
import json, statistics, sys
runs = [json.loads(l) for l in sys.stdin]
ready = sorted(r["replacement_ready_s"] for r in runs if r["replacement_ready_s"] is not None)
ok = sum(1 for r in runs if r["resumed"] and r["fenced_in_provider"])
name = runs[0]["provider"]
if ready:
    print(f"{name}: {len(runs)} runs, {ok} fenced in the provider and resumed; "
          f"replacement ready median {statistics.median(ready):.2f} s "
          f"(min {ready[0]:.2f}, max {ready[-1]:.2f})", file=sys.stderr)
'
fi
