// holdfast dashboard, part 2 of 4: the fleet at scale. Every node as one small cell of a heatmap
// drawn on a single canvas, grouped by job (free workers and spares in their own groups), the
// counts by state, a search, and a virtualised node table that keeps only the visible rows in
// the DOM and reads their details one ListNodes page at a time.
//
// The map needs every node's state, so it reads the fleet in pages of brief nodes (no health
// checks, GPUs or check reports), less often as the fleet grows, and patches cells from the
// node events in between. The table's rows are drawn from that map at once, and the page under
// the viewport is then read in full (generation, step, heartbeat) with the same filter.
'use strict';

const STATE_COLOURS = {
  ready: '#2e9e5b', allocated: '#2f6fd1', fenced: '#d0453a', retired: '#8e2b24', cordoned: '#6b7480',
  offline: '#4a525c', joining: '#c9a227', bootstrapping: '#c9a227', checking: '#c9a227', repaired: '#c9a227',
};
const STATE_ORDER = ['ready', 'allocated', 'joining', 'bootstrapping', 'checking', 'offline', 'fenced', 'cordoned', 'retired'];
const HEALTH_NAMES = ['unspecified', 'healthy', 'degraded', 'unhealthy', 'unknown', 'n/a'];
const ROLE_SPARE = 2;
const FLEET_PAGE = 5000; // brief nodes per ListNodes call while reading the whole fleet
const ROW_H = 22; // px, as .vrow in index.html
const OVERSCAN = 8; // rows drawn above and below the viewport
const FREE = 'free workers', SPARES = 'spares';

const fleet = {
  nodes: [], // brief nodes, in node-id order
  byId: new Map(),
  counts: {},
  readAt: 0, // when the last full read finished (ms)
  readTook: 0, // how long it took (ms)
  filtered: [], // the nodes the search and state filter keep, in node-id order
  query: '',
  state: '',
  details: new Map(), // node id -> full node from the table's latest page
  selected: null, // node id
  selectedNode: null, // its full record
  layout: [], // heatmap groups as drawn: {key, label, y, cols, pitch, nodes}
  drawPending: false,
  changePending: false,
  pageTimer: null,
  rowsHtml: '',
};

const healthName = (n) => (n.health ? HEALTH_NAMES[n.health.state] || '' : '');
const groupOf = (n) => (n.job_id ? n.job_id : n.role === ROLE_SPARE ? SPARES : FREE);

// Whether `n` passes the search (id, host or job contains it; as the coordinator's `query`)
// and the state filter.
function kept(n) {
  if (fleet.state && n.state !== fleet.state) return false;
  const q = fleet.query;
  return !q || n.node_id.toLowerCase().includes(q) || n.hostname.toLowerCase().includes(q) || n.job_id.toLowerCase().includes(q);
}

// Reads the whole fleet, brief, page by page. Small fleets every refresh; a large one no more
// often than every 2 s and never busier than a fifth of the time (node events fill the gaps).
async function readFleet(force) {
  const now = Date.now();
  const every = fleet.nodes.length < 500 ? 0 : Math.max(2000, 5 * fleet.readTook);
  if (!force && now - fleet.readAt < every) return;
  const started = performance.now();
  const nodes = [];
  let token = '', counts = {};
  do {
    const page = await listNodes({ brief: true, page_size: FLEET_PAGE, page_token: token });
    nodes.push(...page.nodes);
    counts = countsOf(page);
    token = page.next_page_token;
  } while (token);
  fleet.nodes = nodes;
  fleet.byId = new Map(nodes.map((n) => [n.node_id, n]));
  fleet.counts = counts;
  fleet.readAt = Date.now();
  fleet.readTook = performance.now() - started;
  fleetChanged();
}

// A node event's node: its cell and row change before the next full read.
function patchNode(node) {
  if (!node || !node.node_id) return;
  const old = fleet.byId.get(node.node_id);
  if (old) {
    if (old.state !== node.state) {
      fleet.counts[old.state] = Math.max(0, (fleet.counts[old.state] || 1) - 1);
      fleet.counts[node.state] = (fleet.counts[node.state] || 0) + 1;
    }
    Object.assign(old, node);
  } else {
    fleet.nodes.push(node);
    fleet.nodes.sort((a, b) => (a.node_id < b.node_id ? -1 : a.node_id > b.node_id ? 1 : 0));
    fleet.byId.set(node.node_id, node);
    fleet.counts[node.state] = (fleet.counts[node.state] || 0) + 1;
  }
  fleetChanged();
}

// Redraws counts, map and rows once per frame however many nodes changed in it.
function fleetChanged() {
  if (fleet.changePending) return;
  fleet.changePending = true;
  requestAnimationFrame(() => {
    fleet.changePending = false;
    fleet.filtered = fleet.nodes.filter(kept);
    renderCounts();
    drawHeatmap();
    renderRows(true);
  });
}

// ----------------------------------------------------------------------------------- counts

function renderCounts() {
  const states = [...STATE_ORDER.filter((s) => fleet.counts[s]), ...Object.keys(fleet.counts).filter((s) => !STATE_ORDER.includes(s) && fleet.counts[s])];
  const total = Object.values(fleet.counts).reduce((a, b) => a + b, 0);
  $('counts').innerHTML = `<button data-state="" class="${fleet.state ? '' : 'on'}">all ${total.toLocaleString()}</button>` +
    states.map((s) => `<button data-state="${esc(s)}" data-count="${fleet.counts[s]}" class="${fleet.state === s ? 'on' : ''}"><i style="background:${STATE_COLOURS[s] || '#999'}"></i>${esc(s)} ${fleet.counts[s].toLocaleString()}</button>`).join('');
  const select = $('state-filter');
  const want = ['', ...states];
  if ([...select.options].map((o) => o.value).join() !== want.join()) {
    select.innerHTML = want.map((s) => `<option value="${esc(s)}">${s ? esc(s) : 'every state'}</option>`).join('');
  }
  select.value = fleet.state;
}

function setFilter(query, stateName) {
  fleet.query = query.trim().toLowerCase();
  fleet.state = stateName;
  fleet.filtered = fleet.nodes.filter(kept);
  renderCounts();
  scheduleDraw();
  $('node-scroll').scrollTop = 0;
  renderRows(true);
}

// ---------------------------------------------------------------------------------- heatmap

function scheduleDraw() {
  if (fleet.drawPending) return;
  fleet.drawPending = true;
  requestAnimationFrame(() => { fleet.drawPending = false; drawHeatmap(); });
}

// Job groups first (by job id), then free workers, then spares.
function groups() {
  const map = new Map();
  for (const n of fleet.nodes) {
    const key = groupOf(n);
    if (!map.has(key)) map.set(key, []);
    map.get(key).push(n);
  }
  const rank = (k) => (k === FREE ? 1 : k === SPARES ? 2 : 0);
  return [...map.entries()].sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
}

function drawHeatmap() {
  const canvas = $('heatmap');
  const width = canvas.clientWidth || 1000;
  const total = fleet.nodes.length;
  const pitch = total <= 500 ? 16 : total <= 2500 ? 10 : total <= 6000 ? 8 : 6;
  const cell = pitch > 8 ? pitch - 2 : pitch - 1;
  const label = 18, groupGap = 6;
  const cols = Math.max(1, Math.floor(width / pitch));
  const layout = [];
  let y = 0;
  for (const [key, nodes] of groups()) {
    layout.push({ key, y: y + label, cols, pitch, nodes });
    y += label + Math.ceil(nodes.length / cols) * pitch + groupGap;
  }
  const height = Math.max(40, y);
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.height = `${height}px`;
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = '12px system-ui, sans-serif';
  ctx.textBaseline = 'bottom';
  const searching = fleet.query || fleet.state;
  let cells = 0;
  for (const g of layout) {
    const bad = g.nodes.filter((n) => n.state === 'fenced' || n.state === 'offline' || !n.connected).length;
    ctx.fillStyle = '#8b96a3';
    const title = g.key === FREE || g.key === SPARES ? g.key : `job ${g.key}`;
    ctx.fillText(`${title} · ${g.nodes.length} nodes${bad ? ` · ${bad} down` : ''}`, 0, g.y - 3);
    g.nodes.forEach((n, k) => {
      const x = (k % g.cols) * g.pitch, top = g.y + Math.floor(k / g.cols) * g.pitch;
      ctx.globalAlpha = searching && !kept(n) ? 0.15 : n.connected ? 1 : 0.45;
      ctx.fillStyle = STATE_COLOURS[n.state] || '#999';
      ctx.fillRect(x, top, cell, cell);
      const h = n.health ? n.health.state : 0;
      if ((h === 2 || h === 3) && n.state !== 'fenced') {
        ctx.fillStyle = h === 3 ? '#ff5252' : '#ffa726';
        ctx.fillRect(x, top + cell - Math.max(2, cell / 3), cell, Math.max(2, cell / 3));
      }
      cells++;
    });
  }
  ctx.globalAlpha = 1;
  const sel = fleet.selected && locate(fleet.selected, layout);
  if (sel) {
    ctx.strokeStyle = '#ffffff';
    ctx.lineWidth = 2;
    ctx.strokeRect(sel.x - 1, sel.y - 1, cell + 2, cell + 2);
  }
  fleet.layout = layout;
  canvas.dataset.cells = cells;
  canvas.dataset.pitch = pitch;
  $('groups').innerHTML = layout.map((g) => `<span data-group="${esc(g.key)}" data-count="${g.nodes.length}">${esc(g.key)}: ${g.nodes.length}</span>`).join('');
}

function locate(id, layout) {
  for (const g of layout) {
    const k = g.nodes.findIndex((n) => n.node_id === id);
    if (k >= 0) return { x: (k % g.cols) * g.pitch, y: g.y + Math.floor(k / g.cols) * g.pitch };
  }
  return null;
}

// The node under a point of the canvas (CSS pixels), if any.
function nodeAt(x, y) {
  for (const g of fleet.layout) {
    const row = Math.floor((y - g.y) / g.pitch), col = Math.floor(x / g.pitch);
    if (row < 0 || col >= g.cols) continue;
    const n = g.nodes[row * g.cols + col];
    if (n && y < g.y + (row + 1) * g.pitch) return n;
  }
  return null;
}

// -------------------------------------------------------------------------- virtualised table

// Draws the rows in view (plus a few): the row elements are reused from a fixed pool, so the
// DOM holds the same few dozen rows whatever the fleet's size.
function renderRows(refetch) {
  const scroll = $('node-scroll');
  const rows = fleet.filtered;
  $('node-spacer').style.height = `${rows.length * ROW_H}px`;
  const first = Math.max(0, Math.floor(scroll.scrollTop / ROW_H) - OVERSCAN);
  const last = Math.min(rows.length, Math.ceil((scroll.scrollTop + scroll.clientHeight) / ROW_H) + OVERSCAN);
  const box = $('nodes');
  box.style.transform = `translateY(${first * ROW_H}px)`;
  const html = [];
  for (let k = first; k < last; k++) html.push(rowHtml(rows[k]));
  const joined = html.join('');
  // Rows left alone when nothing in them changed (a click in progress keeps its target).
  if (joined !== fleet.rowsHtml) { box.innerHTML = joined; fleet.rowsHtml = joined; }
  const count = $('node-count');
  count.dataset.total = rows.length;
  count.dataset.first = first;
  count.dataset.last = last;
  count.textContent = `· ${rows.length.toLocaleString()} of ${fleet.nodes.length.toLocaleString()}`;
  if (refetch) schedulePage(first, last);
}

function rowHtml(n) {
  const d = fleet.details.get(n.node_id);
  const lag = d && d.last_heartbeat_unix_ms ? `${((Date.now() - d.last_heartbeat_unix_ms) / 1000).toFixed(1)} s` : '';
  const cls = ['vrow', 'node', n.connected ? '' : 'off', fleet.selected === n.node_id ? 'sel' : ''].join(' ');
  const health = healthName(n);
  return `<div class="${cls}" data-node="${esc(n.node_id)}" data-state="${esc(n.state)}"><span><i class="dot s-${esc(n.state)}"></i>${esc(n.node_id)}</span>` +
    `<span>${esc(n.hostname)}</span><span>${esc(n.state)}${n.connected || n.state === 'offline' ? '' : ' · offline'}</span>` +
    `<span class="${health === 'unhealthy' || health === 'degraded' ? 'bad' : ''}">${esc(health)}</span><span>${esc(n.job_id)}</span>` +
    `<span>${d ? d.generation : ''}</span><span>${d ? d.last_step : ''}</span><span>${lag}</span></div>`;
}

// Reads the page under the viewport in full once scrolling pauses: the filter's ListNodes page
// starting after the row above the first one drawn.
function schedulePage(first, last) {
  clearTimeout(fleet.pageTimer);
  fleet.pageTimer = setTimeout(async () => {
    const rows = fleet.filtered;
    if (first >= last) return;
    try {
      const page = await listNodes({
        query: fleet.query, state: fleet.state, page_size: last - first,
        page_token: first > 0 && rows[first - 1] ? rows[first - 1].node_id : '',
      });
      fleet.details = new Map(page.nodes.map((n) => [n.node_id, n]));
      renderRows(false);
    } catch (err) {
      $('conn').textContent = `cannot read nodes: ${err.message}`;
    }
  }, 120);
}

// ------------------------------------------------------------------------------- node detail

async function readSelected() {
  if (!fleet.selected) return;
  const id = fleet.selected;
  // The node's own page of one: the first node after the one before it in the fleet's order;
  // a search for its id if the fleet changed under it.
  const k = fleet.nodes.findIndex((n) => n.node_id === id);
  let page = await listNodes({ page_size: 1, page_token: k > 0 ? fleet.nodes[k - 1].node_id : '' });
  if (!page.nodes.length || page.nodes[0].node_id !== id) page = await listNodes({ query: id, page_size: 1000 });
  fleet.selectedNode = page.nodes.find((n) => n.node_id === id) || null;
  renderNodeDetail();
}

function renderNodeDetail() {
  const n = fleet.selectedNode;
  if (!n || n.node_id !== fleet.selected) { $('node-detail').textContent = 'Select a node (on the map or in the table) to see its health checks.'; return; }
  const checks = (n.health ? n.health.checks : []).map((c) => {
    const bad = c.state === 3 || c.state === 2;
    return `<div class="${bad ? 'bad' : ''}" data-check="${esc(c.check)}"><b>${esc(c.check)}</b>: ${esc(HEALTH_NAMES[c.state] || '?')}${c.reason ? ' — ' + esc(c.reason) : ''}</div>`;
  }).join('');
  const lag = n.last_heartbeat_unix_ms ? ((Date.now() - n.last_heartbeat_unix_ms) / 1000).toFixed(1) + ' s ago' : 'never';
  $('node-detail').innerHTML = `<div data-selected="${esc(n.node_id)}"><b>${esc(n.node_id)}</b> (${esc(n.hostname)}, ${esc(n.address)}) — ${esc(n.state)}${n.job_id ? ' in ' + esc(n.job_id) : ''}, heartbeat ${lag}, generation ${n.generation}, step ${n.last_step}</div>
    ${n.fence_reason ? `<div class="bad" id="fence-reason">fenced: ${esc(n.fence_reason)}</div>` : ''}
    ${checks || '<div>no health checks reported</div>'}`;
}

function select(id) {
  fleet.selected = id;
  renderRows(false);
  scheduleDraw();
  readSelected().catch((err) => { $('node-detail').textContent = `cannot read ${id}: ${err.message}`; });
}

// Scrolls the table to `id` (selected on the map), clearing a filter that hides it.
function reveal(id) {
  let k = fleet.filtered.findIndex((n) => n.node_id === id);
  if (k < 0) { $('search').value = ''; setFilter('', ''); k = fleet.filtered.findIndex((n) => n.node_id === id); }
  const scroll = $('node-scroll');
  if (k >= 0 && (k * ROW_H < scroll.scrollTop || (k + 1) * ROW_H > scroll.scrollTop + scroll.clientHeight)) {
    scroll.scrollTop = Math.max(0, k * ROW_H - scroll.clientHeight / 2);
  }
}

function initFleet() {
  let typing = null;
  $('search').addEventListener('input', (ev) => {
    clearTimeout(typing);
    typing = setTimeout(() => setFilter(ev.target.value, fleet.state), 150);
  });
  $('state-filter').addEventListener('change', (ev) => setFilter($('search').value, ev.target.value));
  $('counts').addEventListener('click', (ev) => {
    const b = ev.target.closest('button');
    if (b) setFilter($('search').value, b.dataset.state);
  });
  let ticking = false;
  $('node-scroll').addEventListener('scroll', () => {
    if (ticking) return;
    ticking = true;
    requestAnimationFrame(() => { ticking = false; renderRows(true); });
  }, { passive: true });
  $('nodes').addEventListener('click', (ev) => {
    const row = ev.target.closest('.node');
    if (row) select(row.dataset.node);
  });
  const canvas = $('heatmap');
  const at = (ev) => { const r = canvas.getBoundingClientRect(); return nodeAt(ev.clientX - r.left, ev.clientY - r.top); };
  canvas.addEventListener('mousemove', (ev) => {
    const n = at(ev);
    canvas.title = n ? `${n.node_id} (${n.hostname}) · ${n.state}${n.connected ? '' : ', offline'}${n.job_id ? ' · ' + n.job_id : ''}${healthName(n) ? ' · ' + healthName(n) : ''}` : '';
  });
  canvas.addEventListener('click', (ev) => {
    const n = at(ev);
    if (n) { reveal(n.node_id); select(n.node_id); }
  });
  window.addEventListener('resize', scheduleDraw);
}
