// holdfast dashboard, part 4 of 4: reads the OperatorService over gRPC-web (wire.js) and draws
// the running job, recovery percentiles, incidents with their phases and the live event stream;
// keeps the fleet (fleet.js) and the throughput chart (rate.js) fed, and starts everything.
'use strict';

// The holdfast.v1 enums this page decides on: each value's name by its number (0 is UNSPECIFIED).
// The names are what the older string fields (`Job.state`, `Event.kind`) carry.
const JOB_STATES = ['', 'pending', 'launching', 'running', 'recovering', 'succeeded', 'failed', 'stopped'];
const EVENT_KINDS = ['', 'node_state', 'job_state', 'incident', 'progress', 'log', 'alert'];
const constants = (names) => Object.fromEntries(names.map((n, k) => [n.toUpperCase(), k]).filter(([, k]) => k > 0));
const JobState = constants(JOB_STATES);
const EventKind = constants(EVENT_KINDS);
const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED]);

// The typed field when it is set and known to this page, else the string field mapped through the
// same names: a coordinator from before the typed fields still works. 0 when neither is known.
function typed(names, value, legacy) {
  if (value > 0 && value < names.length) return value;
  const k = names.indexOf(legacy);
  return k > 0 ? k : 0;
}
const jobState = (j) => typed(JOB_STATES, j.state_enum, j.state);
const eventKind = (e) => typed(EVENT_KINDS, e.kind_enum, e.kind);


// ---------------------------------------------------------------------------------------------
// State and rendering
// ---------------------------------------------------------------------------------------------

const PHASES = [
  ['detect', '#e0b341'], ['fence', '#d0453a'], ['replace', '#9b59b6'], ['bootstrap', '#2f6fd1'], ['resume', '#2e9e5b'],
];
const PUBLISHED_P90_256 = { detect: 89, replace: 903, resume: 1398, total: 2390 };

const state = { jobs: [], incidents: [] };
const fmt = (s) => (s === null || s === undefined ? '–' : s.toFixed(2));

// Same split as the coordinator's report module: an unstamped phase takes no time.
function phases(i) {
  if (i.open || !i.resumed_unix_ms) return null;
  const fenced = i.fenced_unix_ms || i.detected_unix_ms;
  const replaced = i.replaced_unix_ms || fenced;
  const relaunched = i.relaunched_unix_ms || replaced;
  const gap = (a, b) => Math.max(0, b - a) / 1000;
  return {
    detect: gap(i.fault_unix_ms, i.detected_unix_ms), fence: gap(i.detected_unix_ms, fenced),
    replace: gap(fenced, replaced), bootstrap: gap(replaced, relaunched), resume: gap(relaunched, i.resumed_unix_ms),
    total: gap(i.fault_unix_ms, i.resumed_unix_ms),
  };
}

// Phase durations so far of an open incident (for the chart while it recovers).
function partialPhases(i) {
  const done = phases(i);
  if (done) return done;
  const stamps = [i.fault_unix_ms, i.detected_unix_ms, i.fenced_unix_ms, i.replaced_unix_ms, i.relaunched_unix_ms];
  const out = {};
  let prev = stamps[0];
  PHASES.forEach(([name], k) => {
    const t = stamps[k + 1];
    out[name] = t ? Math.max(0, t - prev) / 1000 : null;
    if (t) prev = t;
  });
  return out;
}

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length))) - 1];
}

function currentJob() {
  const live = state.jobs.filter((j) => !TERMINAL.has(jobState(j)));
  const pool = live.length ? live : state.jobs;
  return pool.reduce((a, b) => (!a || b.submitted_unix_ms > a.submitted_unix_ms ? b : a), null);
}

// ETTR as the coordinator's report module computes it: productive time over wall time, where
// downtime and the redone steps' share of the running time are lost.
function ettr(job) {
  const end = job.finished_unix_ms || Date.now();
  const wall = Math.max(0, end - job.submitted_unix_ms) / 1000;
  const mine = state.incidents.filter((i) => i.job_id === job.job_id);
  let down = 0, lostSteps = 0;
  for (const i of mine) {
    const until = i.resumed_unix_ms || end;
    down += Math.max(0, until - Math.max(i.fault_unix_ms, job.submitted_unix_ms)) / 1000;
    if (i.resumed_unix_ms) lostSteps += Math.max(0, i.fault_step - i.resumed_from_step);
  }
  down = Math.min(down, wall);
  const running = wall - down, executed = job.step + lostSteps;
  const lost = executed > 0 ? (running * lostSteps) / executed : 0;
  return wall > 0 ? Math.max(0, running - lost) / wall : 0;
}

function renderJob() {
  const j = currentJob();
  if (!j) { $('job-body').textContent = 'no job submitted'; return; }
  const total = j.spec && j.spec.total_steps ? ` / ${j.spec.total_steps}` : '';
  const r = rateNow(j.job_id);
  const rate = r !== null ? r.toFixed(1) : '–';
  $('job-body').innerHTML = `<dl data-job="${esc(j.job_id)}">
    <dt>job</dt><dd>${esc(j.job_id)}</dd>
    <dt>state</dt><dd id="job-state">${esc(j.state)}${j.phase ? ' · ' + esc(j.phase) : ''}</dd>
    <dt>generation</dt><dd id="job-generation">${j.generation}</dd>
    <dt>step</dt><dd id="job-step">${j.step}${total}</dd>
    <dt>steps/s</dt><dd id="job-rate">${rate}</dd>
    <dt>last checkpoint</dt><dd>${j.last_checkpoint_step ? 'step ' + j.last_checkpoint_step : '–'}</dd>
    <dt>restarts</dt><dd>${j.restarts}</dd>
    <dt>ETTR</dt><dd id="job-ettr">${(100 * ettr(j)).toFixed(1)} %</dd>
    <dt>nodes</dt><dd>${j.nodes.length > 12 ? `${j.nodes.length} (${esc(j.nodes.slice(0, 6).join(', '))}, …)` : esc(j.nodes.join(', '))}</dd>
    <dt>message</dt><dd>${esc(j.message || '')}</dd></dl>`;
}

function renderRecovery() {
  const done = state.incidents.map(phases).filter(Boolean);
  const col = (f) => done.map(f);
  const cols = {
    detect: col((p) => p.detect), replace: col((p) => p.fence + p.replace),
    resume: col((p) => p.bootstrap + p.resume), total: col((p) => p.total),
  };
  const row = (label, p) => {
    const v = (k) => percentile(cols[k], p);
    const total = v('total');
    return `<tr data-row="p${p}"><td>${label}</td><td>${fmt(v('detect'))}</td><td>${fmt(v('replace'))}</td><td>${fmt(v('resume'))}</td><td>${fmt(total)}</td><td>${total === null ? '–' : (total / 60).toFixed(2)}</td></tr>`;
  };
  const pub = PUBLISHED_P90_256;
  $('recovery').innerHTML = `<tr><th>recovery</th><th>detect (s)</th><th>replace (s)</th><th>resume (s)</th><th>total (s)</th><th>total (min)</th></tr>
    ${row(`holdfast P50 (${done.length} incidents)`, 50)}${row(`holdfast P90 (${done.length} incidents)`, 90)}
    <tr><td>published managed P90 (256 instances)</td><td>${pub.detect}</td><td>${pub.replace}</td><td>${pub.resume}</td><td>${pub.total}</td><td>${(pub.total / 60).toFixed(1)}</td></tr>`;
}

function renderIncidents() {
  $('legend').innerHTML = PHASES.map(([n, c]) => `<span><i style="background:${c}"></i>${n}</span>`).join('');
  const list = [...state.incidents].sort((a, b) => b.id - a.id).slice(0, INCIDENTS_SHOWN);
  $('incidents').innerHTML = `<tr><th>#</th><th class="l">cause</th><th class="l">node</th><th class="l">action</th><th class="l">state</th>
      ${PHASES.map(([n]) => `<th>${n} (s)</th>`).join('')}<th>total (s)</th><th class="l">detail</th></tr>` +
    list.map((i) => {
      const p = partialPhases(i);
      const st = i.open ? 'recovering' : i.resumed_unix_ms ? 'resumed' : 'abandoned';
      return `<tr data-incident="${i.id}" data-open="${i.open}"><td>${i.id}</td><td class="l">${esc(i.cause)}</td><td class="l">${esc(i.node_id)}</td>
        <td class="l">${esc(i.action)}${i.replacement_node_id ? ' → ' + esc(i.replacement_node_id) : ''}</td><td class="l">${st}</td>
        ${PHASES.map(([n]) => `<td data-phase="${n}">${fmt(p[n])}</td>`).join('')}<td>${fmt(p.total)}</td>
        <td class="l wrap">${esc(i.detail)}${i.resumed_from_step ? ` · from step ${i.resumed_from_step}` : ''}${rankStacks(i)}</td></tr>`;
    }).join('');
  renderChart(list);
}

// A stall's ranks: each one's evidence, and its Python stacks in a <pre> under it.
function rankStacks(i) {
  if (!i.ranks || !i.ranks.length) return '';
  return `<details class="ranks"><summary>ranks and stacks</summary>` + i.ranks.map((r) =>
    `<div data-rank="${r.rank}">rank ${r.rank} on ${esc(r.node_id)}: ${esc(r.evidence)}<pre>${esc(r.stacks || '(no stacks yet)')}</pre></div>`,
  ).join('') + `</details>`;
}

// One stacked horizontal bar per incident: detect | fence | replace | bootstrap | resume.
function renderChart(list) {
  const svg = $('chart');
  const rows = list.slice(0, 12);
  const width = svg.clientWidth || 800, label = 60, barH = 16, gap = 6;
  const height = Math.max(40, rows.length * (barH + gap) + 24);
  svg.setAttribute('height', height);
  const totals = rows.map((i) => PHASES.reduce((s, [n]) => s + (partialPhases(i)[n] || 0), 0));
  const max = Math.max(0.001, ...totals);
  const scale = (width - label - 70) / max;
  let out = '';
  rows.forEach((i, k) => {
    const y = k * (barH + gap) + 4;
    const p = partialPhases(i);
    let x = label;
    out += `<text x="0" y="${y + 12}">#${i.id}</text>`;
    for (const [n, c] of PHASES) {
      const w = (p[n] || 0) * scale;
      if (w > 0) out += `<rect x="${x}" y="${y}" width="${Math.max(1, w)}" height="${barH}" fill="${c}"><title>${n}: ${fmt(p[n])} s</title></rect>`;
      x += w;
    }
    out += `<text x="${x + 6}" y="${y + 12}">${totals[k].toFixed(2)} s${i.open ? ' …' : ''}</text>`;
  });
  if (!rows.length) out = '<text x="0" y="20">no incidents recorded</text>';
  else out += `<text x="${label}" y="${height - 4}">seconds from the fault</text>`;
  svg.innerHTML = out;
}

// Incidents in the table and the bar chart: the latest ones (the rest stay in ListIncidents).
const INCIDENTS_SHOWN = 50;

function addEvent(e) {
  if (eventKind(e) === EventKind.PROGRESS) {
    recordProgress(e);
    return;
  }
  if (eventKind(e) === EventKind.NODE_STATE && e.node) patchNode(e.node);
  const box = $('events');
  const div = document.createElement('div');
  div.dataset.kind = e.kind;
  div.innerHTML = `<span class="k">${clock(e.at_unix_ms || Date.now())} ${esc(e.kind)}</span> ${esc(e.message)}`;
  box.prepend(div);
  while (box.children.length > 300) box.lastChild.remove();
}

// One refresh at a time; events ask for one soon (at most every 300 ms), a timer every second.
let refreshing = null, refreshAgain = false, soonTimer = null;

async function refresh() {
  if (refreshing) { refreshAgain = true; return refreshing; }
  refreshing = (async () => {
    try {
      const [j, i] = await Promise.all([
        unary('ListJobs', 'ListJobsResponse'), unary('ListIncidents', 'ListIncidentsResponse'), readFleet(false),
      ]);
      state.jobs = j.jobs;
      state.incidents = i.incidents;
      recordStalls(state.jobs, Date.now());
      await readSelected();
      $('conn').textContent = `connected · ${location.host} · ${fleet.nodes.length.toLocaleString()} nodes · updated ${clock(Date.now())}`;
      renderJob(); renderRecovery(); renderIncidents(); renderRateChart(state.incidents);
    } catch (err) {
      $('conn').textContent = `cannot reach the coordinator: ${err.message}`;
    }
  })();
  await refreshing;
  refreshing = null;
  if (refreshAgain) { refreshAgain = false; soon(); }
}

function soon() {
  if (soonTimer) return;
  soonTimer = setTimeout(() => { soonTimer = null; refresh(); }, 300);
}

async function watch() {
  for (;;) {
    try {
      await serverStream('WatchEvents', 'Event', (e) => {
        addEvent(e);
        if (eventKind(e) !== EventKind.PROGRESS) soon();
      });
    } catch (err) {
      addEvent({ kind: 'log', kind_enum: EventKind.LOG, message: `event stream: ${err.message}; reconnecting`, at_unix_ms: Date.now() });
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

initFleet();
refresh();
setInterval(refresh, 1000);
// The chart moves with the clock between refreshes.
setInterval(() => renderRateChart(state.incidents), 1000);
watch();
