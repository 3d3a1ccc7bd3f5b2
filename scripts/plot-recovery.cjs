// Draws BENCHMARKS.md's recovery table (issue 13: fault × mode, holdfast's modes and the
// launchers without it) as a PNG bar chart: per fault, one bar per mode at the median seconds
// from the fault to the first step past the resume point, a whisker from the fastest to the
// slowest run, and beside it the same to "back at the fault's step" (lost steps redone). Reads
// the first table under "## In-process restart" whose header has a "min–max" column (columns
// found by name). A mode that never recovered gets a cross instead of a bar.
// Usage: scripts/plot-recovery.sh [BENCHMARKS.md] [docs/bench-recovery.png]
'use strict';
const fs = require('fs');
const { readTable, num, niceStep, renderPng, run } = require('./plot-lib.cjs');

const [source = 'BENCHMARKS.md', out = 'docs/bench-recovery.png'] = process.argv.slice(2);
const COLOURS = ['#2e9e5b', '#2f6fd1', '#d35400', '#8e44ad', '#7f8c8d', '#c0392b'];

// {fault, mode, median, min, max, back} per row (null where a run never recovered).
function recoveryRows(text) {
  const { rows, col } = readTable(text, source, '## In-process restart', 'min–max');
  const [fault, mode, median, spread, back] = [col('fault'), col('mode'), col('first step past the resume point'), col('min–max'), col("back at the fault's step")];
  return rows.map((c) => {
    const [min, max] = c[spread].split(/[–-]/).map(num);
    return { fault: c[fault], mode: c[mode], median: num(c[median]), min: min ?? null, max: max ?? null, back: num(c[back]) };
  });
}

// One panel of grouped bars: groups = faults, bars = modes, value `key` (with whiskers when `spread`).
function panel(rows, faults, modes, key, spread, title, x0, width, height) {
  const vals = rows.flatMap((r) => [r[key], spread ? r.max : null]).filter((v) => v !== null);
  const top = Math.max(...vals, 1) * 1.08, step = niceStep(top), maxY = step * Math.ceil(top / step);
  const L = 50, R = 10, T = 34, B = 34;
  const y = (v) => T + (1 - v / maxY) * (height - T - B);
  const groupW = (width - L - R) / faults.length, barW = Math.min(36, (groupW * 0.8) / modes.length);
  let s = `<text x="${x0 + L}" y="18" class="t">${title}</text>`;
  for (let v = 0; v <= maxY + step / 2; v += step) {
    s += `<line x1="${x0 + L}" x2="${x0 + width - R}" y1="${y(v)}" y2="${y(v)}" class="g"/><text x="${x0 + L - 6}" y="${y(v) + 4}" text-anchor="end">${step < 1 ? v.toFixed(1) : Math.round(v)}</text>`;
  }
  s += `<text x="${x0 + 12}" y="${T + (height - T - B) / 2}" transform="rotate(-90 ${x0 + 12} ${T + (height - T - B) / 2})" text-anchor="middle">seconds</text>`;
  faults.forEach((f, g) => {
    const gx = x0 + L + g * groupW + (groupW - barW * modes.length) / 2;
    s += `<text x="${x0 + L + (g + 0.5) * groupW}" y="${height - B + 18}" text-anchor="middle">${f}</text>`;
    modes.forEach((m, k) => {
      const r = rows.find((row) => row.fault === f && row.mode === m);
      if (!r) return;
      const bx = gx + k * barW, v = r[key];
      if (v === null) {
        s += `<text x="${bx + barW / 2}" y="${y(0) - 6}" text-anchor="middle" fill="#c0392b" font-size="16">×</text>`;
        return;
      }
      s += `<rect x="${bx + 2}" y="${y(v)}" width="${barW - 4}" height="${y(0) - y(v)}" fill="${COLOURS[k % COLOURS.length]}"><title>${f} ${m}: ${v} s</title></rect>`;
      if (spread && r.min !== null) {
        const cx = bx + barW / 2;
        s += `<line x1="${cx}" x2="${cx}" y1="${y(r.min)}" y2="${y(r.max)}" stroke="#333"/><line x1="${cx - 4}" x2="${cx + 4}" y1="${y(r.max)}" y2="${y(r.max)}" stroke="#333"/><line x1="${cx - 4}" x2="${cx + 4}" y1="${y(r.min)}" y2="${y(r.min)}" stroke="#333"/>`;
      }
      const above = spread && r.max !== null ? Math.max(v, r.max) : v;
      s += `<text x="${bx + barW / 2}" y="${y(above) - 4}" text-anchor="middle" font-size="10">${v < 10 ? v.toFixed(1) : Math.round(v)}</text>`;
    });
  });
  return s;
}

async function main() {
  const rows = recoveryRows(fs.readFileSync(source, 'utf8'));
  if (!rows.length) throw new Error(`${source}: the recovery table has no rows`);
  const faults = [...new Set(rows.map((r) => r.fault))], modes = [...new Set(rows.map((r) => r.mode))];
  const w = 460, h = 320, legend = 26;
  let body = modes.map((m, k) => `<rect x="${50 + k * 150}" y="${h + 8}" width="12" height="12" fill="${COLOURS[k % COLOURS.length]}"/><text x="${66 + k * 150}" y="${h + 18}">${m}</text>`).join('');
  body += `<text x="${50 + modes.length * 150}" y="${h + 18}" fill="#c0392b">× never recovered</text>`;
  body += panel(rows, faults, modes, 'median', true, 'Fault → first step past the resume point (median, min–max)', 0, w, h);
  body += panel(rows, faults, modes, 'back', false, "Fault → back at the fault's step (lost steps redone)", w, w, h);
  await renderPng(body, 2 * w, h + legend, out);
  console.log(`${out}: ${rows.length} rows (${rows.map((r) => `${r.fault} ${r.mode}`).join('; ')})`);
}

run(main);
