# Sourced by scripts/test.sh: a real EC2 API server for the ec2 provider's tests, moto's server
# (`moto_server`, started by the tests on loopback), and the aws CLI the shipped scripts call,
# both from PyPI in one virtualenv under $HOLDFAST_CACHE (about a minute the first time).
# Exports HOLDFAST_MOTO_SERVER and HOLDFAST_AWS_BIN (the directory holding `aws`).
HOLDFAST_EC2_VENV="$HOLDFAST_CACHE/venv-ec2"
if [ ! -x "$HOLDFAST_EC2_VENV/bin/moto_server" ] || [ ! -x "$HOLDFAST_EC2_VENV/bin/aws" ]; then
  echo "installing moto's server and the aws CLI into $HOLDFAST_EC2_VENV (first use only)"
  rm -rf "$HOLDFAST_EC2_VENV"
  python3 -m venv "$HOLDFAST_EC2_VENV"
  "$HOLDFAST_EC2_VENV/bin/pip" install -q --no-cache-dir --disable-pip-version-check \
    'moto[server,ec2]>=5.1,<6' 'awscli>=1.40,<2'
fi
export HOLDFAST_MOTO_SERVER="$HOLDFAST_EC2_VENV/bin/moto_server"
export HOLDFAST_AWS_BIN="$HOLDFAST_EC2_VENV/bin"
