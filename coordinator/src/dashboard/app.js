// holdfast dashboard: reads the OperatorService over gRPC-web (same origin) and draws nodes, the
// running job, recovery percentiles, incidents with their phases, and the live event stream.
// Self-contained on purpose: a small protobuf decoder for the few holdfast.v1 messages shown
// here, no libraries, nothing fetched from elsewhere.
'use strict';

// ---------------------------------------------------------------------------------------------
// Protobuf wire format (decode only; every request sent here is empty)
// ---------------------------------------------------------------------------------------------

// Field tables: number -> [name, type, nested message, repeated]. Types: s string, u unsigned
// varint, i signed 64-bit varint, b bool, m message, e enum. Unknown fields are skipped, so a
// newer coordinator with more fields still works.
const SCHEMA = {
  HealthCheck: { 1: ['check', 's'], 2: ['state', 'e'], 3: ['reason', 's'], 4: ['action', 'e'], 5: ['observed_unix_ms', 'i'] },
  HealthSummary: { 1: ['state', 'e'], 2: ['checks', 'm', 'HealthCheck', true] },
  Node: {
    1: ['node_id', 's'], 2: ['hostname', 's'], 3: ['role', 'e'], 4: ['state', 's'], 5: ['connected', 'b'],
    6: ['address', 's'], 7: ['health', 'm', 'HealthSummary'], 8: ['job_id', 's'], 9: ['generation', 'u'],
    10: ['worker_pid', 'u'], 11: ['last_step', 'u'], 12: ['fence_reason', 's'], 13: ['last_heartbeat_unix_ms', 'i'],
    14: ['clock_offset_ms', 'i'], 16: ['agent_version', 's'],
  },
  JobSpec: { 1: ['job_id', 's'], 3: ['nodes', 'u'], 4: ['checkpoint_uri', 's'], 9: ['total_steps', 'u'] },
  Job: {
    1: ['job_id', 's'], 2: ['spec', 'm', 'JobSpec'], 3: ['state', 's'], 4: ['phase', 's'], 5: ['generation', 'u'],
    6: ['step', 'u'], 7: ['nodes', 's', null, true], 8: ['message', 's'], 9: ['restarts', 'u'],
    10: ['last_checkpoint_step', 'u'], 11: ['submitted_unix_ms', 'i'], 12: ['finished_unix_ms', 'i'],
    13: ['state_enum', 'e'],
  },
  Incident: {
    1: ['id', 'u'], 2: ['job_id', 's'], 3: ['node_id', 's'], 4: ['cause', 's'], 5: ['detail', 's'],
    6: ['fault_unix_ms', 'i'], 7: ['detected_unix_ms', 'i'], 8: ['fenced_unix_ms', 'i'], 9: ['replaced_unix_ms', 'i'],
    10: ['relaunched_unix_ms', 'i'], 11: ['resumed_unix_ms', 'i'], 12: ['action', 's'], 13: ['replacement_node_id', 's'],
    14: ['from_generation', 'u'], 15: ['to_generation', 'u'], 16: ['resumed_from_step', 'u'], 17: ['open', 'b'],
    18: ['fault_step', 'u'], 40: ['ranks', 'm', 'RankEvidence', true],
  },
  RankEvidence: { 1: ['rank', 'u'], 2: ['node_id', 's'], 3: ['evidence', 's'], 4: ['stacks', 's'] },
  Event: {
    1: ['at_unix_ms', 'i'], 2: ['kind', 's'], 3: ['job_id', 's'], 4: ['node_id', 's'], 5: ['message', 's'],
    6: ['job', 'm', 'Job'], 7: ['incident', 'm', 'Incident'], 8: ['node', 'm', 'Node'], 9: ['kind_enum', 'e'],
  },
  ListNodesResponse: { 1: ['nodes', 'm', 'Node', true] },
  ListJobsResponse: { 1: ['jobs', 'm', 'Job', true] },
  ListIncidentsResponse: { 1: ['incidents', 'm', 'Incident', true] },
};

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

const utf8 = new TextDecoder();

function readVarint(buf, pos) {
  let value = 0n, shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    value |= BigInt(b & 0x7f) << shift;
    if (b < 0x80) return [value, pos];
    shift += 7n;
  }
}

function defaults(type) {
  const out = {};
  for (const [name, kind, , repeated] of Object.values(SCHEMA[type])) {
    out[name] = repeated ? [] : kind === 's' ? '' : kind === 'b' ? false : kind === 'm' ? null : 0;
  }
  return out;
}

function decode(type, buf) {
  const fields = SCHEMA[type];
  const out = defaults(type);
  let pos = 0;
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const num = Number(key >> 3n), wire = Number(key & 7n);
    let raw;
    if (wire === 0) [raw, pos] = readVarint(buf, pos);
    else if (wire === 1) { raw = null; pos += 8; }
    else if (wire === 5) { raw = null; pos += 4; }
    else if (wire === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      raw = buf.subarray(pos, pos + Number(len));
      pos += Number(len);
    } else throw new Error(`unsupported wire type ${wire}`);
    const field = fields[num];
    if (!field || raw === null) continue;
    const [name, kind, nested, repeated] = field;
    let value;
    switch (kind) {
      case 's': value = utf8.decode(raw); break;
      case 'm': value = decode(nested, raw); break;
      case 'b': value = raw !== 0n; break;
      case 'i': value = Number(BigInt.asIntN(64, raw)); break;
      default: value = Number(raw);
    }
    if (repeated) out[name].push(value); else out[name] = value;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// gRPC-web transport
// ---------------------------------------------------------------------------------------------

const SERVICE = '/holdfast.v1.OperatorService/';
const EMPTY_REQUEST = new Uint8Array([0, 0, 0, 0, 0]); // one data frame holding an empty message

// UNAUTHENTICATED (16): the coordinator has operator tokens and this tab has none (or a wrong one).
function authHint(status) {
  return status === '16' ? ' (open the dashboard as /?token=<token>)' : '';
}

function grpcError(headers) {
  const status = headers.get('grpc-status');
  if (status && status !== '0') return new Error(`grpc-status ${status}: ${decodeURIComponent(headers.get('grpc-message') || '')}${authHint(status)}`);
  return null;
}

// Splits gRPC-web frames off the front of `buf`; returns [messages, trailers text, rest].
function takeFrames(buf) {
  const messages = [];
  let trailers = null, pos = 0;
  while (buf.length - pos >= 5) {
    const flag = buf[pos];
    const len = ((buf[pos + 1] << 24) | (buf[pos + 2] << 16) | (buf[pos + 3] << 8) | buf[pos + 4]) >>> 0;
    if (buf.length - pos - 5 < len) break;
    const body = buf.subarray(pos + 5, pos + 5 + len);
    if (flag & 0x80) trailers = utf8.decode(body); else messages.push(body);
    pos += 5 + len;
  }
  return [messages, trailers, buf.subarray(pos)];
}

function trailerError(text) {
  if (!text) return null;
  const m = /grpc-status:\s*(\d+)/i.exec(text);
  if (m && m[1] !== '0') {
    const msg = /grpc-message:\s*(.*)/i.exec(text);
    return new Error(`grpc-status ${m[1]}: ${msg ? decodeURIComponent(msg[1].trim()) : ''}${authHint(m[1])}`);
  }
  return null;
}

// Operator API token, for a coordinator with operator_tokens_file: opened once as `?token=…`,
// kept for this tab in sessionStorage and taken out of the address bar so it is not left in the
// browser's history or shared with a copied link.
const TOKEN = (() => {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    try { sessionStorage.setItem('holdfast-token', fromUrl); } catch (_) { /* storage disabled */ }
    url.searchParams.delete('token');
    window.history.replaceState(null, '', url.pathname + url.search + url.hash);
    return fromUrl;
  }
  try { return sessionStorage.getItem('holdfast-token') || ''; } catch (_) { return ''; }
})();

function post(method, signal) {
  const headers = { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', accept: 'application/grpc-web+proto' };
  if (TOKEN) headers.authorization = `Bearer ${TOKEN}`;
  return fetch(SERVICE + method, {
    method: 'POST',
    headers,
    body: EMPTY_REQUEST,
    signal,
  });
}

async function unary(method, responseType) {
  const res = await post(method);
  if (!res.ok) throw new Error(`${method}: HTTP ${res.status}`);
  const headerErr = grpcError(res.headers);
  if (headerErr) throw headerErr;
  const [messages, trailers] = takeFrames(new Uint8Array(await res.arrayBuffer()));
  const err = trailerError(trailers);
  if (err) throw err;
  return decode(responseType, messages[0] || new Uint8Array());
}

// Server stream: calls onMessage for each decoded message until the stream ends.
async function serverStream(method, responseType, onMessage) {
  const res = await post(method);
  if (!res.ok) throw new Error(`${method}: HTTP ${res.status}`);
  const headerErr = grpcError(res.headers);
  if (headerErr) throw headerErr;
  const reader = res.body.getReader();
  let pending = new Uint8Array();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const joined = new Uint8Array(pending.length + value.length);
    joined.set(pending);
    joined.set(value, pending.length);
    const [messages, trailers, rest] = takeFrames(joined);
    pending = rest;
    for (const m of messages) onMessage(decode(responseType, m));
    const err = trailerError(trailers);
    if (err) throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// State and rendering
// ---------------------------------------------------------------------------------------------

const HEALTH = ['unspecified', 'healthy', 'degraded', 'unhealthy', 'unknown', 'n/a'];
const PHASES = [
  ['detect', '#e0b341'], ['fence', '#d0453a'], ['replace', '#9b59b6'], ['bootstrap', '#2f6fd1'], ['resume', '#2e9e5b'],
];
const PUBLISHED_P90_256 = { detect: 89, replace: 903, resume: 1398, total: 2390 };

const state = { nodes: [], jobs: [], incidents: [], selected: null, rate: null, lastProgress: null };
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const clock = (ms) => new Date(ms).toISOString().slice(11, 23);
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

function renderNodes() {
  $('nodes').innerHTML = state.nodes.map((n) => {
    const cls = ['node', `s-${n.state}`, n.connected ? '' : 'off', state.selected === n.node_id ? 'sel' : ''].join(' ');
    // An offline node's health is the last one it reported.
    const health = n.health ? (n.connected ? '' : 'last: ') + (HEALTH[n.health.state] || '') : '';
    return `<div class="${cls}" data-node="${esc(n.node_id)}" data-state="${esc(n.state)}" title="${esc(n.node_id)}">
      <div class="id">${esc(n.node_id)}</div><div class="st">${esc(n.state)}${n.connected ? '' : ' · offline'}</div>
      <div class="st">${esc(health)}${n.job_id ? ' · ' + esc(n.job_id) : ''}</div></div>`;
  }).join('');
  renderNodeDetail();
}

function renderNodeDetail() {
  const n = state.nodes.find((x) => x.node_id === state.selected);
  if (!n) { $('node-detail').textContent = 'Select a node to see its health checks.'; return; }
  const checks = (n.health ? n.health.checks : []).map((c) => {
    const bad = c.state === 3 || c.state === 2;
    return `<div class="${bad ? 'bad' : ''}" data-check="${esc(c.check)}"><b>${esc(c.check)}</b>: ${esc(HEALTH[c.state] || '?')}${c.reason ? ' — ' + esc(c.reason) : ''}</div>`;
  }).join('');
  const lag = n.last_heartbeat_unix_ms ? ((Date.now() - n.last_heartbeat_unix_ms) / 1000).toFixed(1) + ' s ago' : 'never';
  $('node-detail').innerHTML = `<div><b>${esc(n.node_id)}</b> (${esc(n.hostname)}, ${esc(n.address)}) — ${esc(n.state)}, heartbeat ${lag}, generation ${n.generation}, step ${n.last_step}</div>
    ${n.fence_reason ? `<div class="bad" id="fence-reason">fenced: ${esc(n.fence_reason)}</div>` : ''}
    ${checks || '<div>no health checks reported</div>'}`;
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
  const rate = state.rate !== null ? state.rate.toFixed(1) : '–';
  $('job-body').innerHTML = `<dl data-job="${esc(j.job_id)}">
    <dt>job</dt><dd>${esc(j.job_id)}</dd>
    <dt>state</dt><dd id="job-state">${esc(j.state)}${j.phase ? ' · ' + esc(j.phase) : ''}</dd>
    <dt>generation</dt><dd id="job-generation">${j.generation}</dd>
    <dt>step</dt><dd id="job-step">${j.step}${total}</dd>
    <dt>steps/s</dt><dd id="job-rate">${rate}</dd>
    <dt>last checkpoint</dt><dd>${j.last_checkpoint_step ? 'step ' + j.last_checkpoint_step : '–'}</dd>
    <dt>restarts</dt><dd>${j.restarts}</dd>
    <dt>ETTR</dt><dd id="job-ettr">${(100 * ettr(j)).toFixed(1)} %</dd>
    <dt>nodes</dt><dd>${esc(j.nodes.join(', '))}</dd>
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
  const list = [...state.incidents].sort((a, b) => b.id - a.id);
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

function addEvent(e) {
  if (eventKind(e) === EventKind.PROGRESS) {
    // steps/s from successive progress events of the current generation
    const j = e.job;
    if (j) {
      const prev = state.lastProgress;
      if (prev && prev.generation === j.generation && e.at_unix_ms > prev.at && j.step > prev.step) {
        const r = ((j.step - prev.step) * 1000) / (e.at_unix_ms - prev.at);
        state.rate = state.rate === null ? r : 0.7 * state.rate + 0.3 * r;
      }
      state.lastProgress = { generation: j.generation, step: j.step, at: e.at_unix_ms };
    }
    return;
  }
  const box = $('events');
  const div = document.createElement('div');
  div.dataset.kind = e.kind;
  div.innerHTML = `<span class="k">${clock(e.at_unix_ms || Date.now())} ${esc(e.kind)}</span> ${esc(e.message)}`;
  box.prepend(div);
  while (box.children.length > 300) box.lastChild.remove();
}

async function refresh() {
  try {
    const [n, j, i] = await Promise.all([
      unary('ListNodes', 'ListNodesResponse'), unary('ListJobs', 'ListJobsResponse'), unary('ListIncidents', 'ListIncidentsResponse'),
    ]);
    state.nodes = n.nodes.sort((a, b) => a.node_id.localeCompare(b.node_id));
    state.jobs = j.jobs;
    state.incidents = i.incidents;
    $('conn').textContent = `connected · ${location.host} · updated ${clock(Date.now())}`;
    renderNodes(); renderJob(); renderRecovery(); renderIncidents();
  } catch (err) {
    $('conn').textContent = `cannot reach the coordinator: ${err.message}`;
  }
}

async function watch() {
  for (;;) {
    try {
      await serverStream('WatchEvents', 'Event', (e) => {
        addEvent(e);
        if (eventKind(e) !== EventKind.PROGRESS) refresh();
      });
    } catch (err) {
      addEvent({ kind: 'log', kind_enum: EventKind.LOG, message: `event stream: ${err.message}; reconnecting`, at_unix_ms: Date.now() });
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

$('nodes').addEventListener('click', (ev) => {
  const card = ev.target.closest('.node');
  if (!card) return;
  state.selected = card.dataset.node;
  renderNodes();
});

refresh();
setInterval(refresh, 1000);
watch();
