// Drives the dashboard in headless Chromium for cli/tests/dashboard.rs.
// Protocol on stdio (one JSON object per line): prints {"stage":"ready",…} once the page shows
// the nodes and a running job, waits for a "fault" line on stdin (the test has killed a host),
// then waits for the incident to appear recovered with its phases, selects the fenced node and
// prints {"stage":"done",…}; then reads a node id on stdin, selects that node, expects a failing
// health check with its reason, saves a screenshot and prints {"stage":"health",…}. Any failure
// prints {"stage":"error",…}.
'use strict';
const { launch, watchedPage, say, nextLine } = require('./browser.cjs');

const url = process.env.DASHBOARD_URL;
const screenshot = process.env.DASHBOARD_SCREENSHOT;


async function main() {
  const browser = await launch();
  try {
    const { page, consoleErrors } = await watchedPage(browser, { viewport: { width: 1280, height: 1000 } });
    await page.goto(url);
    await page.waitForFunction(() => document.querySelectorAll('#nodes .node').length >= 3, null, { timeout: 20000 });
    await page.waitForFunction(() => {
      const s = document.querySelector('#job-state');
      const step = document.querySelector('#job-step');
      return s && s.textContent.startsWith('running') && step && parseInt(step.textContent, 10) >= 5;
    }, null, { timeout: 30000 });
    const nodes = await page.$$eval('#nodes .node', (els) => els.map((e) => ({ id: e.dataset.node, state: e.dataset.state })));
    const generation = await page.textContent('#job-generation');
    say({ stage: 'ready', nodes, generation: Number(generation) });

    if ((await nextLine()).trim() !== 'fault') throw new Error('expected "fault" on stdin');
    const victim = process.env.DASHBOARD_VICTIM;
    // The incident appears, then closes with every phase measured.
    await page.waitForSelector('#incidents tr[data-incident]', { timeout: 20000 });
    await page.waitForSelector('#incidents tr[data-incident][data-open="false"]', { timeout: 30000 });
    const incident = await page.$eval('#incidents tr[data-incident]', (tr) => {
      const phases = {};
      tr.querySelectorAll('td[data-phase]').forEach((td) => { phases[td.dataset.phase] = td.textContent; });
      return { id: tr.dataset.incident, text: tr.textContent, phases };
    });
    await page.waitForFunction(() => parseInt(document.querySelector('#job-generation').textContent, 10) >= 2, null, { timeout: 20000 });
    await page.waitForFunction(() => document.querySelector('#job-rate').textContent !== '–', null, { timeout: 20000 });
    // The fenced node, selected, shows why.
    await page.click(`#nodes .node[data-node="${victim}"]`);
    await page.waitForSelector('#fence-reason', { timeout: 10000 });
    const fenceReason = await page.textContent('#fence-reason');
    const victimState = await page.getAttribute(`#nodes .node[data-node="${victim}"]`, 'data-state');
    const recoveryP50 = await page.textContent('#recovery tr[data-row="p50"]');
    const chartBars = await page.$$eval('#chart rect', (r) => r.length);
    const events = await page.$$eval('#events div', (d) => d.map((x) => x.textContent));
    const step = await page.textContent('#job-step');
    const rate = await page.textContent('#job-rate');
    const ettr = parseFloat(await page.textContent('#job-ettr'));
    if (!(ettr > 0 && ettr < 100)) throw new Error(`ETTR shown as ${ettr}`);
    say({ stage: 'done', incident, fenceReason, victimState, recoveryP50, chartBars, events, step, rate, ettr, consoleErrors });

    // A node whose health check fails: selecting it shows the check's reason.
    const sick = (await nextLine()).trim();
    await page.waitForSelector(`#nodes .node[data-node="${sick}"]`, { timeout: 10000 });
    await page.click(`#nodes .node[data-node="${sick}"]`);
    await page.waitForSelector('#node-detail [data-check].bad', { timeout: 10000 });
    const check = await page.textContent('#node-detail [data-check].bad');
    const card = await page.textContent(`#nodes .node[data-node="${sick}"]`);
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
    say({ stage: 'health', check, card, consoleErrors });
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (err) => {
  say({ stage: 'error', message: String(err && err.stack || err) });
  process.exit(1);
});
