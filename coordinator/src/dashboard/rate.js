// holdfast dashboard, part 3 of 4: steps/s over time, one line per job, with the jobs'
// incidents marked where they were detected. The history is the page's own, from the live
// progress events (the coordinator publishes a job's progress at most every 250 ms): bounded to
// the last RATE_WINDOW_MS and RATE_POINTS samples per job, RATE_JOBS jobs.
'use strict';

const RATE_WINDOW_MS = 10 * 60 * 1000;
const RATE_POINTS = 1200;
const RATE_JOBS = 8;
const JOB_COLOURS = ['#4fc3f7', '#ffb74d', '#81c784', '#ba68c8', '#f06292', '#e0e0e0', '#aed581', '#ff8a65'];

// job id -> {points: [{t, rate}], last: {generation, step, t}, ema, colour, seen}
const rates = new Map();

function rateOf(jobId) {
  let r = rates.get(jobId);
  if (!r) {
    const used = new Set([...rates.values()].map((x) => x.colour));
    r = { points: [], last: null, recent: [], ema: null, colour: JOB_COLOURS.find((c) => !used.has(c)) || '#e0e0e0', seen: Date.now() };
    if (rates.size >= RATE_JOBS) {
      // Forget the job heard from longest ago.
      const [oldest] = [...rates.entries()].sort(([, a], [, b]) => a.seen - b.seen)[0];
      rates.delete(oldest);
    }
    rates.set(jobId, r);
  }
  return r;
}

function pushRate(r, t, rate) {
  r.points.push({ t, rate });
  const horizon = t - RATE_WINDOW_MS;
  let drop = 0;
  while (drop < r.points.length && (r.points[drop].t < horizon || r.points.length - drop > RATE_POINTS)) drop++;
  if (drop) r.points.splice(0, drop);
}

// Steps/s is measured over at least this long: progress events come every 250 ms at most, in
// bursts when the coordinator is busy, and successive pairs would make a sawtooth.
const RATE_SPAN_MS = 2000;

// A progress event (its job view): steps/s over the last RATE_SPAN_MS of the same generation.
// A new generation starts its count again, with a zero between (the restart's stall).
function recordProgress(e) {
  const j = e.job;
  if (!j || !j.job_id) return;
  const t = e.at_unix_ms || Date.now();
  const r = rateOf(j.job_id);
  r.seen = t;
  if (r.last && r.last.generation !== j.generation) {
    pushRate(r, t, 0);
    r.recent = [];
  }
  r.last = { generation: j.generation, step: j.step, t };
  r.recent = (r.recent || []).filter((o) => t - o.t <= 3 * RATE_SPAN_MS);
  r.recent.push({ step: j.step, t });
  // The newest observation at least RATE_SPAN_MS older than this one, else the oldest kept.
  const base = [...r.recent].reverse().find((o) => t - o.t >= RATE_SPAN_MS) || r.recent[0];
  if (base.t < t && j.step >= base.step && t - base.t >= RATE_SPAN_MS / 2) {
    const rate = ((j.step - base.step) * 1000) / (t - base.t);
    r.ema = r.ema === null ? rate : 0.7 * r.ema + 0.3 * rate;
    pushRate(r, t, rate);
  }
}

// A job seen recovering or launching in a listing makes no steps now.
function recordStalls(jobs, now) {
  for (const j of jobs) {
    const s = jobState(j);
    if ((s === JobState.RECOVERING || s === JobState.LAUNCHING) && rates.has(j.job_id)) {
      const r = rates.get(j.job_id);
      const lastT = r.points.length ? r.points[r.points.length - 1].t : 0;
      if (now - lastT >= 500) pushRate(r, now, 0);
    }
  }
}

const rateNow = (jobId) => (rates.has(jobId) ? rates.get(jobId).ema : null);

function renderRateChart(incidents) {
  const svg = $('rate-chart');
  const width = svg.clientWidth || 1000, height = 200;
  const left = 44, right = 10, top = 10, bottom = 22;
  const series = [...rates.entries()].filter(([, r]) => r.points.length);
  const now = Date.now();
  const first = Math.min(now - 30000, ...series.map(([, r]) => r.points[0].t));
  const t0 = Math.max(first, now - RATE_WINDOW_MS), t1 = now;
  const max = Math.max(1, ...series.flatMap(([, r]) => r.points.map((p) => p.rate))) * 1.15;
  const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  let out = '';
  // Axes: steps/s ticks, then seconds ago.
  for (let k = 0; k <= 4; k++) {
    const v = (max / 1.15) * (k / 4);
    out += `<line x1="${left}" x2="${width - right}" y1="${y(v)}" y2="${y(v)}" stroke="#2a3440"/><text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(v < 10 ? 1 : 0)}</text>`;
  }
  const span = (t1 - t0) / 1000;
  for (let k = 0; k <= 5; k++) {
    const t = t0 + ((t1 - t0) * k) / 5;
    out += `<text x="${x(t)}" y="${height - 6}" text-anchor="middle">${k === 5 ? 'now' : `-${Math.round(span - (span * k) / 5)} s`}</text>`;
  }
  const shown = new Set(series.map(([id]) => id));
  for (const i of incidents) {
    const at = i.detected_unix_ms || i.fault_unix_ms;
    if (!shown.has(i.job_id) || at < t0 || at > t1) continue;
    const colour = rates.get(i.job_id).colour;
    out += `<g class="incident-mark" data-incident="${i.id}" data-job="${esc(i.job_id)}"><line x1="${x(at)}" x2="${x(at)}" y1="${top}" y2="${height - bottom}" stroke="#ff5252" stroke-dasharray="4 3"/>` +
      `<path d="M${x(at) - 5},${top} L${x(at) + 5},${top} L${x(at)},${top + 8} Z" fill="${colour}" stroke="#ff5252"/>` +
      `<title>incident #${i.id}: ${esc(i.cause)} on ${esc(i.node_id)} (${esc(i.job_id)}) at ${clock(at)}</title></g>`;
  }
  for (const [id, r] of series) {
    const pts = r.points.filter((p) => p.t >= t0).map((p) => `${x(p.t).toFixed(1)},${y(p.rate).toFixed(1)}`).join(' ');
    out += `<polyline data-job="${esc(id)}" data-points="${r.points.length}" fill="none" stroke="${r.colour}" stroke-width="1.5" points="${pts}"/>`;
  }
  if (!series.length) out += `<text x="${left + 10}" y="${height / 2}">no progress reported yet</text>`;
  svg.setAttribute('height', height);
  svg.innerHTML = out;
  $('rate-legend').innerHTML = series.map(([id, r]) =>
    `<span data-job="${esc(id)}" data-rate="${r.ema === null ? '' : r.ema.toFixed(2)}"><i style="background:${r.colour}"></i>${esc(id)} ${r.ema === null ? '–' : r.ema.toFixed(1)} steps/s</span>`,
  ).join('') + '<span><i style="background:#ff5252"></i>incident detected</span>';
}
