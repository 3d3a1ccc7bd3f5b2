# Sourced by scripts/test.sh: headless Chromium (Debian's package) and playwright-core (npm, into
# the test cache) for the dashboard test. The browser is never downloaded by Playwright: the test
# launches /usr/bin/chromium. Exports HOLDFAST_CHROMIUM and HOLDFAST_NODE_MODULES.
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
HOLDFAST_BROWSER_DIR="${HOLDFAST_CACHE:-$PWD/target/test-cache}/browser"
if [ ! -d "$HOLDFAST_BROWSER_DIR/node_modules/playwright-core" ]; then
  mkdir -p "$HOLDFAST_BROWSER_DIR"
  (cd "$HOLDFAST_BROWSER_DIR" && npm install --no-audit --no-fund --silent playwright-core@1.65.1 >/dev/null)
fi
export HOLDFAST_CHROMIUM="$(command -v chromium)"
export HOLDFAST_NODE_MODULES="$HOLDFAST_BROWSER_DIR/node_modules"
