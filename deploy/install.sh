#!/usr/bin/env bash
# Installs holdfast on this host: the binary, the lifecycle scripts, the configs (an existing
# config is never overwritten: the new example goes beside it as *.toml.new) and the systemd
# units; then enables and starts the chosen service.
#
# Usage: deploy/install.sh [--role agent|coordinator|both] [--binary PATH] [--no-start]
#   --role      which service to enable and start (default: agent)
#   --binary    the holdfast binary (default: target/release/holdfast, else target/debug/holdfast)
#   --no-start  install files only
# DESTDIR=/staging/root installs under that root and never calls systemctl (packaging, tests).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
role=agent
binary=""
start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --role) role="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$role" in agent|coordinator|both) ;; *) echo "install.sh: --role must be agent, coordinator or both" >&2; exit 2 ;; esac
if [ -z "$binary" ]; then
  for candidate in "$repo/target/release/holdfast" "$repo/target/debug/holdfast"; do
    if [ -x "$candidate" ]; then binary="$candidate"; break; fi
  done
fi
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
  echo "install.sh: no holdfast binary found; build it (cargo build --release) or pass --binary" >&2
  exit 1
fi

root="${DESTDIR:-}"
bin_dir="$root/usr/local/bin"
script_dir="$root/usr/local/lib/holdfast/lifecycle-scripts"
conf_dir="$root/etc/holdfast"
unit_dir="$root/etc/systemd/system"

install -D -m 0755 "$binary" "$bin_dir/holdfast"
echo "installed $bin_dir/holdfast"

# Lifecycle scripts: replaced as a whole, so a removed script does not linger. Site hooks in
# on-create.d/ and on-fence.d/ are kept.
mkdir -p "$script_dir"
find "$script_dir" -mindepth 1 -maxdepth 1 ! -name 'on-create.d' ! -name 'on-fence.d' -exec rm -rf {} +
(cd "$repo/lifecycle-scripts" && tar -cf - .) | (cd "$script_dir" && tar -xf -)
echo "installed lifecycle scripts in $script_dir"

install -d -m 0755 "$conf_dir"
for name in agent coordinator; do
  if [ -e "$conf_dir/$name.toml" ]; then
    install -m 0644 "$here/$name.toml" "$conf_dir/$name.toml.new"
    echo "kept $conf_dir/$name.toml; the shipped example is $conf_dir/$name.toml.new"
  else
    install -m 0644 "$here/$name.toml" "$conf_dir/$name.toml"
    echo "installed $conf_dir/$name.toml (edit it: coordinator address, advertise address)"
  fi
done

for unit in holdfast-agent.service holdfast-coordinator.service; do
  install -D -m 0644 "$here/$unit" "$unit_dir/$unit"
done
echo "installed systemd units in $unit_dir"

if [ -n "$root" ] || [ "$start" -eq 0 ] || ! command -v systemctl >/dev/null 2>&1; then
  echo "not starting anything (DESTDIR set, --no-start, or no systemctl)"
  exit 0
fi
systemctl daemon-reload
case "$role" in
  agent) systemctl enable --now holdfast-agent.service ;;
  coordinator) systemctl enable --now holdfast-coordinator.service ;;
  both) systemctl enable --now holdfast-coordinator.service holdfast-agent.service ;;
esac
systemctl --no-pager status "holdfast-$([ "$role" = both ] && echo agent || echo "$role").service" | head -5 || true
