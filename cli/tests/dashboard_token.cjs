// Opens the dashboard of a coordinator that has operator tokens, for cli/tests/auth.rs: with
// `?token=` in DASHBOARD_URL the page must show the nodes (its gRPC-web calls carry the token),
// drop the token from the address bar, and still show them after a reload (kept for the tab).
// Prints one JSON line: {"ok":true,…} or {"ok":false,"error":…}.
'use strict';
const { launch } = require('./browser.cjs');

async function main() {
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const showsNode = () => page.waitForFunction(
      () => document.querySelector('#nodes .node[data-node="node-1"]') !== null, null, { timeout: 20000 });
    await page.goto(process.env.DASHBOARD_URL);
    await showsNode();
    const search = await page.evaluate(() => window.location.search);
    if (search.includes('token')) throw new Error(`token left in the address bar: ${search}`);
    await page.reload();
    await showsNode();
    process.stdout.write(JSON.stringify({ ok: true, search }) + '\n');
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e) }) + '\n');
  process.exit(1);
});
