#!/usr/bin/env bash
# Runs torchrun under holdfast on one host: `torchrun_host.sh TORCHRUN [torchrun args…]`.
#
# torchrun picks the c10d rendezvous store's host by comparing hostnames, which every host of a
# container or network-namespace cluster may share. holdfast gives the rendezvous endpoint to
# node rank 0, so that host, and only that one, is told to host the store.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: torchrun_host.sh TORCHRUN [torchrun args…]" >&2
  exit 2
fi
torchrun="$1"
shift
if [ "${HOLDFAST_NODE_RANK:-}" = "0" ]; then
  is_host=true
else
  is_host=false
fi
exec "$torchrun" --rdzv-conf "is_host=$is_host" "$@"
