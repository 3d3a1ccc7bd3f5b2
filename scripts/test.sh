#!/usr/bin/env bash
# Runs every test tier of holdfast on a fresh machine: installs what the tests need (each
# scripts/setup/*.sh is idempotent and fast when already done), then runs the workspace tests
# (unit + integration + end-to-end). Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

export HOLDFAST_TEST_STRICT=1          # tests that need an external tool fail instead of skipping
export HOLDFAST_CACHE="${HOLDFAST_CACHE:-$PWD/target/test-cache}"
mkdir -p "$HOLDFAST_CACHE"
# A whole-workspace debug build with full debug info and incremental state takes tens of GB; the
# tests need neither, so keep the build small unless the caller asked otherwise.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"

for setup in scripts/setup/*.sh; do
  [ -e "$setup" ] || continue
  echo "== setup: $setup"
  # shellcheck disable=SC1090
  source "$setup"
done

echo "== lint: cargo fmt --check, cargo clippy -D warnings"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo build"
cargo build --workspace --all-targets
echo "== cargo test"
cargo test --workspace "$@" -- --test-threads="${HOLDFAST_TEST_THREADS:-2}"
echo "== cargo test --features etcd (high availability against a real etcd)"
cargo test -p holdfast --features etcd --test ha_etcd -- --test-threads=1
