# Sourced by scripts/test.sh (after 40-torch.sh): a real S3-compatible server for the end-to-end
# tier, moto's server, installed into the same virtualenv. The tests start it themselves inside a
# network namespace (`moto_server -H ADDR -p PORT`); this exports where it is.
if [ ! -x "$HOLDFAST_VENV/bin/moto_server" ]; then
  echo "installing moto[server] into $HOLDFAST_VENV"
  "$HOLDFAST_VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]'
fi
export HOLDFAST_S3_SERVER="$HOLDFAST_VENV/bin/moto_server"
