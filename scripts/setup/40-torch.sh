# Sourced by scripts/test.sh (and scripts/bench-e2e.sh): a Python virtualenv under $HOLDFAST_CACHE
# with PyTorch from PyPI (CPU/gloo is enough for the end-to-end tier; about 3 minutes the first
# time) and boto3 for the training script's S3 checkpoints. Reused when present; exports
# HOLDFAST_TORCH_PYTHON and HOLDFAST_TORCHRUN for the tests.
#
# The PyPI wheel pulls CUDA libraries (about 5.5 GB installed), so the install keeps no download
# cache (--no-cache-dir: the wheels are not kept a second time) and says up front when the disk
# cannot hold it, instead of failing half-way with "No space left on device".
HOLDFAST_VENV="${HOLDFAST_VENV:-$HOLDFAST_CACHE/venv-torch}"
if ! "$HOLDFAST_VENV/bin/python" -c 'import torch, numpy, boto3' >/dev/null 2>&1; then
  holdfast_torch_need_kb=$((8 * 1024 * 1024))
  mkdir -p "$HOLDFAST_CACHE"
  holdfast_torch_free_kb="$(df -Pk "$HOLDFAST_CACHE" | awk 'NR==2 {print $4}')"
  if [ "${holdfast_torch_free_kb:-0}" -lt "$holdfast_torch_need_kb" ]; then
    echo "error: installing PyTorch needs about 8 GB free under $HOLDFAST_CACHE;" \
      "$((holdfast_torch_free_kb / 1024)) MB are free (df -h $HOLDFAST_CACHE)" >&2
    return 1 2>/dev/null || exit 1
  fi
  echo "installing PyTorch and boto3 into $HOLDFAST_VENV (a few minutes on first use)"
  rm -rf "$HOLDFAST_VENV"
  python3 -m venv "$HOLDFAST_VENV"
  mkdir -p "$HOLDFAST_CACHE/tmp"
  TMPDIR="$HOLDFAST_CACHE/tmp" "$HOLDFAST_VENV/bin/pip" install -q --no-cache-dir \
    --disable-pip-version-check torch numpy boto3
  rm -rf "$HOLDFAST_CACHE/tmp"
fi
export HOLDFAST_VENV
export HOLDFAST_TORCH_PYTHON="$HOLDFAST_VENV/bin/python"
export HOLDFAST_TORCHRUN="$HOLDFAST_VENV/bin/torchrun"
