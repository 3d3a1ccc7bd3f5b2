# Sourced by scripts/test.sh: etcd for the high-availability tests (`--features etcd`), and
# protoc + the well-known protos that the etcd-client crate's build script needs.
if ! command -v etcd >/dev/null 2>&1 || ! command -v protoc >/dev/null 2>&1 \
  || [ ! -e /usr/include/google/protobuf/timestamp.proto ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler libprotobuf-dev >/dev/null
fi
HOLDFAST_ETCD="$(command -v etcd)"
export HOLDFAST_ETCD
