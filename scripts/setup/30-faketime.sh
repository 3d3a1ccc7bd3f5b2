# Sourced by scripts/test.sh: libfaketime (Debian `faketime`), to run one agent process with a
# shifted wall clock — an agent whose clock is off — without touching the host's clock
# (cli/tests/clock_skew.rs). Exports where the preload library is.
if ! command -v faketime >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi
HOLDFAST_LIBFAKETIME="$(dpkg -L libfaketime 2>/dev/null | grep -m1 '/libfaketime\.so\.1$' || true)"
export HOLDFAST_LIBFAKETIME
