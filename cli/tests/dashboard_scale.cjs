// Drives the dashboard at scale in headless Chromium for cli/tests/dashboard_scale.rs.
// Protocol on stdio (one JSON object per line): once the heatmap shows DASHBOARD_NODES cells
// and every job of DASHBOARD_JOBS (comma-separated) has a steps/s, it searches, scrolls the node
// table to its end and prints {"stage":"ready",…}; then reads "fault <node>" on stdin (the test
// has silenced that node), waits for the incident's mark on the throughput chart, saves the
// screenshot and prints {"stage":"done",…}. Any failure prints {"stage":"error",…}.
'use strict';
const { launch, watchedPage, say, nextLine } = require('./browser.cjs');

const url = process.env.DASHBOARD_URL;
const screenshot = process.env.DASHBOARD_SCREENSHOT;
const expected = Number(process.env.DASHBOARD_NODES);
const jobs = (process.env.DASHBOARD_JOBS || '').split(',').filter(Boolean);

async function main() {
  const browser = await launch();
  try {
    const { page, consoleErrors } = await watchedPage(browser, { viewport: { width: 1400, height: 1200 } });
    await page.goto(url);

    // The heatmap: one cell per node, in groups.
    await page.waitForFunction((n) => Number(document.querySelector('#heatmap').dataset.cells) === n, expected, { timeout: 30000 });
    // Both jobs step on the chart.
    await page.waitForFunction((js) => js.every((j) => {
      const s = document.querySelector(`#rate-legend span[data-job="${j}"]`);
      return s && Number(s.dataset.rate) > 0 && Number(document.querySelector(`#rate-chart polyline[data-job="${j}"]`).dataset.points) >= 3;
    }), jobs, { timeout: 30000 });
    const cells = Number(await page.getAttribute('#heatmap', 'data-cells'));
    const groups = await page.$$eval('#groups [data-group]', (els) => Object.fromEntries(els.map((e) => [e.dataset.group, Number(e.dataset.count)])));
    const counts = await page.$$eval('#counts button[data-count]', (els) => Object.fromEntries(els.map((e) => [e.dataset.state, Number(e.dataset.count)])));
    const rates = await page.$$eval('#rate-legend span[data-job]', (els) => Object.fromEntries(els.map((e) => [e.dataset.job, Number(e.dataset.rate)])));

    // The search narrows the table.
    const total = () => page.$eval('#node-count', (e) => Number(e.dataset.total));
    const search = {};
    for (const q of ['node-01', jobs[jobs.length - 1]]) {
      await page.fill('#search', q);
      // Every row shown matches, and fewer than all.
      await page.waitForFunction(([text, n]) => {
        const rows = [...document.querySelectorAll('#nodes .node')];
        return rows.length > 0 && rows.every((r) => r.textContent.includes(text)) && Number(document.querySelector('#node-count').dataset.total) < n;
      }, [q, expected], { timeout: 5000 });
      search[q] = await total();
    }
    await page.fill('#search', '');
    await page.waitForFunction((n) => Number(document.querySelector('#node-count').dataset.total) === n, expected, { timeout: 5000 });

    // The table, scrolled through to the end: the DOM keeps a window of rows.
    let maxRows = 0;
    const scrollHeight = await page.$eval('#node-scroll', (e) => e.scrollHeight);
    for (let top = 0; top <= scrollHeight; top += 2000) {
      await page.$eval('#node-scroll', (e, t) => { e.scrollTop = t; }, top);
      await page.waitForTimeout(20);
      maxRows = Math.max(maxRows, await page.$$eval('#nodes .node', (els) => els.length));
    }
    await page.$eval('#node-scroll', (e) => { e.scrollTop = e.scrollHeight; });
    const lastId = await page.evaluate(() => fleet.filtered[fleet.filtered.length - 1].node_id);
    await page.waitForFunction((id) => {
      const row = document.querySelector(`#nodes .node[data-node="${id}"]`);
      return row && row.children[6].textContent !== '';
    }, lastId, { timeout: 10000 });
    const lastShown = await page.$eval('#nodes .node:last-child', (e) => e.dataset.node);
    const lastStep = await page.$eval(`#nodes .node[data-node="${lastId}"]`, (e) => e.children[6].textContent);
    maxRows = Math.max(maxRows, await page.$$eval('#nodes .node', (els) => els.length));
    const domElements = await page.evaluate(() => document.getElementsByTagName('*').length);
    say({
      stage: 'ready', cells, groups, counts, rates, search, domElements,
      table: { total: await total(), maxRows, lastShown, lastStep },
    });

    const line = (await nextLine()).trim().split(/\s+/);
    if (line[0] !== 'fault') throw new Error(`expected "fault <node>" on stdin, got ${line}`);
    const victim = line[1];
    await page.waitForSelector('#rate-chart .incident-mark', { timeout: 20000 });
    const mark = await page.$eval('#rate-chart .incident-mark', (g) => ({ job: g.dataset.job, title: g.querySelector('title').textContent }));
    // The silenced node on the map, selected: its state and fence reason in the detail.
    await page.fill('#search', victim);
    await page.waitForSelector(`#nodes .node[data-node="${victim}"]`, { timeout: 5000 });
    await page.click(`#nodes .node[data-node="${victim}"]`);
    await page.waitForSelector(`#node-detail [data-selected="${victim}"]`, { timeout: 5000 });
    await page.fill('#search', '');
    await page.waitForFunction((n) => Number(document.querySelector('#node-count').dataset.total) === n, expected, { timeout: 5000 });
    // The rows in view read in full again (their step column filled) before the picture.
    await page.waitForFunction(() => {
      const row = document.querySelector('#nodes .node');
      return row && row.children[6].textContent !== '';
    }, null, { timeout: 5000 });
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
    say({ stage: 'done', mark, consoleErrors });
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (err) => {
  say({ stage: 'error', message: String(err && err.stack || err) });
  process.exit(1);
});
