# Sourced by scripts/test.sh: a real S3-compatible server for the end-to-end tier, s3s-fs (objects
# are files under a root directory; it checks SigV4 signatures). Built once into $HOLDFAST_CACHE
# (about 2 minutes on 2 idle cores; 0.14.1 is the newest that builds with this toolchain). The
# tests start it themselves inside a network namespace; this exports where it is.
HOLDFAST_S3S_ROOT="$HOLDFAST_CACHE/s3s-fs"
if [ ! -x "$HOLDFAST_S3S_ROOT/bin/s3s-fs" ]; then
  echo "building s3s-fs into $HOLDFAST_S3S_ROOT (first use only)"
  cargo install -q s3s-fs@0.14.1 --features binary --locked --root "$HOLDFAST_S3S_ROOT"
fi
export HOLDFAST_S3_SERVER="$HOLDFAST_S3S_ROOT/bin/s3s-fs"
