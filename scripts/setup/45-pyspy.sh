# Sourced by scripts/test.sh: py-spy from PyPI in a small virtualenv under $HOLDFAST_CACHE, so
# agents in the tests can dump a stalled worker's Python stacks into its incident. Reused when
# present; puts the venv's bin on PATH (the agent finds py-spy there) and exports
# HOLDFAST_PY_SPY for tests that want to name it.
HOLDFAST_PYSPY_VENV="${HOLDFAST_PYSPY_VENV:-$HOLDFAST_CACHE/venv-pyspy}"
if ! "$HOLDFAST_PYSPY_VENV/bin/py-spy" --version >/dev/null 2>&1; then
  echo "installing py-spy into $HOLDFAST_PYSPY_VENV"
  python3 -m venv "$HOLDFAST_PYSPY_VENV"
  "$HOLDFAST_PYSPY_VENV/bin/pip" install -q --no-cache-dir --disable-pip-version-check py-spy
fi
export HOLDFAST_PY_SPY="$HOLDFAST_PYSPY_VENV/bin/py-spy"
export PATH="$HOLDFAST_PYSPY_VENV/bin:$PATH"
