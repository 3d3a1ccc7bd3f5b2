// Draws BENCHMARKS.md's swarm table as a PNG: coordinator CPU (cores) and RSS (MB) against
// agents, and detection P99 (s) against agents. Reads the first table under the "## Scale"
// heading whose header has "coord CPU cores" (columns found by name, so a re-run that rewrites
// the rows needs nothing here), draws an SVG and renders it in headless Chromium (the browser
// the dashboard tests use; nothing else installed).
// Usage: scripts/plot-swarm.sh [BENCHMARKS.md] [docs/bench-swarm.png]
'use strict';
const fs = require('fs');
const { readTable, num, niceStep, renderPng, run } = require('./plot-lib.cjs');

const [source = 'BENCHMARKS.md', out = 'docs/bench-swarm.png'] = process.argv.slice(2);

// The rows of the swarm table: {label, agents, cpu, rss, detect} (null where a cell has none).
function swarmRows(text) {
  const { rows, col } = readTable(text, source, '## Scale', 'coord CPU cores');
  const [agents, cpu, rss, detect] = [col('agents'), col('coord CPU cores'), col('coord RSS MB'), col('detect P50 / P99')];
  return rows
    .map((c) => ({ label: c[agents], agents: num(c[agents]), cpu: num(c[cpu]), rss: num(c[rss]), detect: num((c[detect] || '').split('/')[1]) }))
    .filter((r) => r.agents !== null);
}

// One panel: a scatter with a line through the mean at each swarm size, on a linear x axis.
function panel(rows, key, title, unit, x0, width, height, colour, extra) {
  const pts = rows.filter((r) => r[key] !== null);
  const maxX = Math.max(...rows.map((r) => r.agents)) * 1.05;
  const step = niceStep(Math.max(...pts.map((r) => r[key]), extra ? extra.value : 0) * 1.1 || 1);
  const maxY = step * Math.ceil((Math.max(...pts.map((r) => r[key]), extra ? extra.value : 0) * 1.1 || 1) / step);
  const L = 56, R = 14, T = 34, B = 40;
  const x = (v) => x0 + L + (v / maxX) * (width - L - R);
  const y = (v) => T + (1 - v / maxY) * (height - T - B);
  let s = `<text x="${x0 + L}" y="18" class="t">${title}</text>`;
  for (let v = 0; v <= maxY + step / 2; v += step) {
    s += `<line x1="${x0 + L}" x2="${x0 + width - R}" y1="${y(v)}" y2="${y(v)}" class="g"/><text x="${x0 + L - 6}" y="${y(v) + 4}" text-anchor="end">${step < 1 ? v.toFixed(2) : Math.round(v)}</text>`;
  }
  for (let k = 0; k <= 5; k++) {
    const v = (maxX / 1.05) * (k / 5);
    s += `<text x="${x(v)}" y="${height - B + 16}" text-anchor="middle">${Math.round(v).toLocaleString('en')}</text>`;
  }
  s += `<text x="${x0 + L + (width - L - R) / 2}" y="${height - 6}" text-anchor="middle">agents</text>`;
  s += `<text x="${x0 + 12}" y="${T + (height - T - B) / 2}" transform="rotate(-90 ${x0 + 12} ${T + (height - T - B) / 2})" text-anchor="middle">${unit}</text>`;
  if (extra) {
    s += `<line x1="${x0 + L}" x2="${x0 + width - R}" y1="${y(extra.value)}" y2="${y(extra.value)}" stroke="#c0392b" stroke-dasharray="5 4"/><text x="${x0 + width - R}" y="${y(extra.value) - 5}" text-anchor="end" fill="#c0392b">${extra.label}</text>`;
  }
  const sizes = [...new Set(pts.map((r) => r.agents))].sort((a, b) => a - b);
  const mean = (a) => pts.filter((r) => r.agents === a).reduce((t, r, _, all) => t + r[key] / all.length, 0);
  s += `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${sizes.map((a) => `${x(a)},${y(mean(a))}`).join(' ')}"/>`;
  for (const r of pts) s += `<circle cx="${x(r.agents)}" cy="${y(r[key])}" r="4.5" fill="${colour}"><title>${r.label}: ${r[key]}</title></circle>`;
  const missing = rows.filter((r) => r[key] === null);
  for (const r of missing) s += `<text x="${x(r.agents)}" y="${y(0) - 8}" text-anchor="end" fill="#c0392b">${r.label}: never registered ×</text>`;
  return s;
}

async function main() {
  const rows = swarmRows(fs.readFileSync(source, 'utf8'));
  if (!rows.length) throw new Error(`${source}: the swarm table has no rows`);
  const w = 420, h = 300;
  const body = panel(rows, 'cpu', 'Coordinator CPU', 'cores', 0, w, h, '#2f6fd1') +
    panel(rows, 'rss', 'Coordinator RSS', 'MB', w, w, h, '#2e9e5b', { value: 300, label: 'target 300 MB' }) +
    panel(rows, 'detect', 'Detection P99', 's', 2 * w, w, h, '#d35400', { value: 2.3, label: 'target: timeout 2 s + 0.3 s' });
  await renderPng(body, 3 * w, h, out);
  console.log(`${out}: ${rows.length} rows (${rows.map((r) => r.label).join('; ')})`);
}

run(main);
