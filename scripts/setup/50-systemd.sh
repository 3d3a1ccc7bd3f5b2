# Sourced by scripts/test.sh: systemd-analyze, for `systemd-analyze verify` of deploy/*.service.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq systemd
fi
