# Sourced by scripts/test.sh: python3 for the demo's training script (standard library only).
if ! command -v python3 >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3
fi
