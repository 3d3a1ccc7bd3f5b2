// What the dashboard's browser tests share: Debian's Chromium started headless (the path from
// HOLDFAST_CHROMIUM), a page that collects console errors, and the tests' line protocol (one
// JSON object per line out, lines in from the Rust test on stdin).
'use strict';
const { chromium } = require('playwright-core');
const readline = require('readline');

/** Headless Chromium, with nothing started beside the page. */
function launch() {
  return chromium.launch({
    executablePath: process.env.HOLDFAST_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}

/** A new page of `browser` and the console errors it logs from then on. */
async function watchedPage(browser, options) {
  const page = await browser.newPage(options);
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  return { page, consoleErrors };
}

/** Prints one protocol line. */
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

let lines = null;
/** The next line the test writes on stdin. */
function nextLine() {
  lines = lines || readline.createInterface({ input: process.stdin });
  return new Promise((resolve) => lines.once('line', resolve));
}

module.exports = { launch, watchedPage, say, nextLine };
