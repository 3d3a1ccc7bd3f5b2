# Sourced by scripts/test.sh (and scripts/bench-e2e.sh): a Python virtualenv under $HOLDFAST_CACHE
# with PyTorch from PyPI (CPU/gloo is enough for the end-to-end tier; about 3 minutes the first
# time) and boto3 for the training script's S3 checkpoints. Reused when present; exports
# HOLDFAST_TORCH_PYTHON and HOLDFAST_TORCHRUN for the tests.
HOLDFAST_VENV="${HOLDFAST_VENV:-$HOLDFAST_CACHE/venv-torch}"
if ! "$HOLDFAST_VENV/bin/python" -c 'import torch, numpy, boto3' >/dev/null 2>&1; then
  echo "installing PyTorch and boto3 into $HOLDFAST_VENV (a few minutes on first use)"
  python3 -m venv "$HOLDFAST_VENV"
  "$HOLDFAST_VENV/bin/pip" install -q --disable-pip-version-check torch numpy boto3
fi
export HOLDFAST_VENV
export HOLDFAST_TORCH_PYTHON="$HOLDFAST_VENV/bin/python"
export HOLDFAST_TORCHRUN="$HOLDFAST_VENV/bin/torchrun"
