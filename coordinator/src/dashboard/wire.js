// holdfast dashboard, part 1 of 4: the protobuf wire format and the gRPC-web transport to the
// OperatorService (same origin), and small DOM helpers. Self-contained on purpose: a small
// protobuf codec for the few holdfast.v1 messages the page reads, no libraries, nothing fetched
// from elsewhere. Loaded before fleet.js, rate.js and app.js, which share its globals.
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
  ListNodesResponse: { 1: ['nodes', 'm', 'Node', true], 2: ['next_page_token', 's'], 3: ['total', 'u'], 4: ['counts', 'm', 'CountEntry', true] },
  CountEntry: { 1: ['key', 's'], 2: ['value', 'u'] },
  ListJobsResponse: { 1: ['jobs', 'm', 'Job', true] },
  ListIncidentsResponse: { 1: ['incidents', 'm', 'Incident', true] },
};
const utf8 = new TextDecoder();

// A varint as a Number while it fits in 53 bits (every count, step and unix-ms stamp), as a
// BigInt beyond (a negative int64): thousands of nodes decode without BigInt arithmetic.
function readVarint(buf, pos) {
  let value = 0, mul = 1;
  const start = pos;
  for (let k = 0; k < 7; k++) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    value += (b & 0x7f) * mul;
    if (b < 0x80) return [value, pos];
    mul *= 128;
  }
  return readBigVarint(buf, start);
}

function readBigVarint(buf, pos) {
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
    const num = Math.floor(Number(key) / 8), wire = Number(key) % 8;
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
      case 'b': value = Number(raw) !== 0; break;
      case 'i': value = typeof raw === 'bigint' ? Number(BigInt.asIntN(64, raw)) : raw; break;
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

// Request fields, for the few requests that carry any: ListNodesRequest's by number.
const LIST_NODES = { state: 1, job_id: 2, health: 3, page_size: 4, page_token: 5, query: 6, brief: 7 };

// `fields` ({name: value}) as one gRPC-web data frame of a message numbered by `numbers`:
// strings length-delimited, numbers and booleans as varints; empty values left out, as proto3 does.
function encodeRequest(numbers, fields) {
  const bytes = [];
  const varint = (v) => { do { let b = v % 128; v = Math.floor(v / 128); if (v > 0) b |= 0x80; bytes.push(b); } while (v > 0); };
  for (const [name, value] of Object.entries(fields || {})) {
    const num = numbers[name];
    if (num === undefined || value === '' || value === 0 || value === false || value === null || value === undefined) continue;
    if (typeof value === 'string') {
      const raw = new TextEncoder().encode(value);
      varint(num * 8 + 2); varint(raw.length); bytes.push(...raw);
    } else {
      varint(num * 8); varint(value === true ? 1 : value);
    }
  }
  const n = bytes.length;
  return new Uint8Array([0, (n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255, ...bytes]);
}
const EMPTY_REQUEST = encodeRequest({}, {}); // one data frame holding an empty message

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

function post(method, body) {
  const headers = { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', accept: 'application/grpc-web+proto' };
  if (TOKEN) headers.authorization = `Bearer ${TOKEN}`;
  return fetch(SERVICE + method, {
    method: 'POST',
    headers,
    body: body || EMPTY_REQUEST,
  });
}

async function unary(method, responseType, body) {
  const res = await post(method, body);
  if (!res.ok) throw new Error(`${method}: HTTP ${res.status}`);
  const headerErr = grpcError(res.headers);
  if (headerErr) throw headerErr;
  const [messages, trailers] = takeFrames(new Uint8Array(await res.arrayBuffer()));
  const err = trailerError(trailers);
  if (err) throw err;
  return decode(responseType, messages[0] || new Uint8Array());
}

// A ListNodesResponse's counts by state as an object.
const countsOf = (page) => Object.fromEntries(page.counts.map((c) => [c.key, c.value]));

// One page of ListNodes under `filter` ({state, job_id, query, brief, page_size, page_token}).
const listNodes = (filter) => unary('ListNodes', 'ListNodesResponse', encodeRequest(LIST_NODES, filter));

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


const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const clock = (ms) => new Date(ms).toISOString().slice(11, 23);
