// What the plot scripts share (scripts/plot-*.cjs): reading a Markdown table of BENCHMARKS.md by
// its column names, round axis steps, and rendering an SVG to PNG in headless Chromium (the
// browser the dashboard tests use; nothing else installed).
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

// The first table under the heading that starts with `heading` whose header row has a column
// starting with `marker`: {rows (arrays of trimmed cells), col(name) (the index of the column
// whose name starts with `name`; an error naming the columns there are when none does)}.
function readTable(text, source, heading, marker) {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.startsWith(heading));
  if (start < 0) throw new Error(`${source}: no "${heading}" section`);
  const head = lines.findIndex((l, k) => k > start && l.startsWith('|') && l.includes(marker));
  if (head < 0) throw new Error(`${source}: no table with a "${marker}" column under "${heading}"`);
  const cells = (l) => l.split('|').slice(1, -1).map((c) => c.trim());
  const names = cells(lines[head]);
  const col = (want) => {
    const k = names.findIndex((n) => n.startsWith(want));
    if (k < 0) throw new Error(`${source}: the table has no "${want}" column (has: ${names.join(', ')})`);
    return k;
  };
  const rows = [];
  for (let k = head + 2; k < lines.length && lines[k].startsWith('|'); k++) rows.push(cells(lines[k]));
  return { rows, col };
}

// A number in a cell ("1,024", "**2.03**"), or null.
function num(s) {
  const v = parseFloat(String(s).replace(/[,*]/g, ''));
  return Number.isFinite(v) ? v : null;
}

// A round step (1, 2 or 5 times a power of ten) giving about four ticks up to `max`.
function niceStep(max) {
  const raw = max / 4, p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
}

// `body` (SVG elements) on a white `width` × `height` canvas, written to `out` as a PNG.
async function renderPng(body, width, height, out) {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">
<style>text{font:12px sans-serif;fill:#333}.t{font-weight:600;font-size:14px}.g{stroke:#e3e3e3}</style>
<rect width="100%" height="100%" fill="#fff"/>${body}</svg>`;
  const browser = await chromium.launch({
    executablePath: process.env.HOLDFAST_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'],
  });
  try {
    const page = await browser.newPage({ viewport: { width, height }, deviceScaleFactor: 1.5 });
    await page.setContent(`<!doctype html><body style="margin:0">${svg}</body>`);
    fs.mkdirSync(path.dirname(out), { recursive: true });
    await page.screenshot({ path: out, clip: { x: 0, y: 0, width, height } });
  } finally {
    await browser.close();
  }
}

// Runs `main`, printing a failure and exiting 1.
function run(main) {
  main().catch((e) => { console.error(String((e && e.stack) || e)); process.exit(1); });
}

module.exports = { readTable, num, niceStep, renderPng, run };
