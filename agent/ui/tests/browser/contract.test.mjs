// The recorder-backed views (timelines, events, network heatmap, sub-second heatmap and
// range profiles, incidents) against the recorder's HTTP contract (docs/incidents.md,
// CONTRACT between agent/recorder and agent/ui): the page is served by the real agent, and
// the browser answers /api/v1/recorder/* and /api/v1/incidents* with documents built here
// per the contract. This pins the UI's side of the contract; live.test.mjs covers the real
// recorder once it runs in the agent.
//   NS_AGENT=http://127.0.0.1:PORT node --test contract.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, watch, screenshot, pageReady } from './lib.mjs';

const AGENT = process.env.NS_AGENT;
assert.ok(AGENT, 'NS_AGENT must be set');
const ORIGIN = new URL(AGENT).origin;
const NOW = Math.floor(Date.now() / 1000);

const GROUPS = {
  cpu: [['user', 'system', 'iowait', 'irq', 'softirq', 'steal', 'idle'], 'ratio', 0.5],
  memory: [['used', 'available', 'cached', 'buffers', 'swap_used'], 'bytes', 8e9],
  psi: [['cpu_some', 'memory_some', 'memory_full', 'io_some', 'io_full'], 'ratio', 0.2],
  disk: [['read_bytes', 'write_bytes', 'io_time'], 'bytes_per_second', 5e7],
  network: [['receive_bytes', 'transmit_bytes', 'receive_drops', 'transmit_errors', 'tcp_retransmits'], 'bytes_per_second', 1e6],
  load: [['load1', 'load5', 'load15'], 'load', 4],
};
function timeline(group, from, to) {
  const [names, unit, scale] = GROUPS[group];
  const ts = [];
  for (let t = from; t <= to; t++) ts.push(t);
  return { group, step_seconds: 1, timestamps: ts, series: names.map((n, k) => ({ name: n, unit, values: ts.map((t, i) => (i % 17 === 5 ? null : (scale * (((i + k * 7) % 13) + 1)) / 14)) })) };
}
const EVENTS = { events: [
  { time: NOW - 200, kind: 'kernel_oom_kill', severity: 'error', body: 'Out of memory: Killed process 4242 (hog)', labels: { workload: 'hog' }, attributes: {} },
  { time: NOW - 100, kind: 'tcp_reset_received', severity: 'warn', body: 'reset from 10.0.0.2:443', labels: { workload: 'web' }, attributes: {} },
  { time: NOW - 50, kind: 'incident', severity: 'info', body: 'manual trigger', labels: {}, attributes: {} },
], dropped: 0 };
const NETWORK = {
  step_seconds: 10,
  timestamps: Array.from({ length: 30 }, (_, i) => NOW - 300 + i * 10),
  connect_buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, null],
  rtt_buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, null],
  rows: [{
    workload: 'web', peer: 'db.example:5432', peer_port: '5432', direction: 'outbound',
    connects: Array(30).fill(4), errors: { refused: Array(30).fill(0).map((_, i) => (i === 20 ? 3 : 0)), timeout: Array(30).fill(0) },
    retransmits: Array(30).fill(1), resets: Array(30).fill(0),
    connect_p50: Array(30).fill(0.0008), connect_p99: Array(30).fill(0.004), rtt_p50: Array(30).fill(0.0002), rtt_p99: Array(30).fill(0.0009),
    connect_hist: Array.from({ length: 30 }, (_, i) => [0, 2, 1, 1, i > 20 ? 2 : 0, 0, 0]),
    rtt_hist: Array.from({ length: 30 }, () => [1, 5, 3, 1, 0, 0]),
  }],
};
const SAMPLE_START = NOW - 120;
const SAMPLES = { hz: 19, start: SAMPLE_START, offsets_ms: Array.from({ length: 2280 }, (_, i) => Math.floor((i * 120000) / 2280)), count: 2280 };
const INCIDENT = { id: 'inc-1', node: 'test-node', time: NOW - 60, trigger: { kind: 'manual', name: 'ui', reason: 'slow checkout' }, window: { from: NOW - 660, to: NOW - 30 }, baseline: { from: NOW - 1300, to: NOW - 670 }, state: 'ready', bytes: 123456, file: 'incident-test-node-1.tar.gz', top_finding: 'web: connect errors refused 3 vs 0', error: null };
const DATA = {
  version: 1,
  manifest: { version: 1, id: 'inc-1', node: 'test-node', time: NOW - 60, trigger: INCIDENT.trigger, window: INCIDENT.window, baseline: INCIDENT.baseline },
  summary_md: '# Incident inc-1\n\n1. uptime: load 4.2 (baseline 1.1)\n',
  findings: [{ rank: 1, score: 5, kind: 'connect_errors', title: 'web → db.example:5432 refused connects', subject: { workload: 'web', peer: 'db.example:5432' }, incident_value: 3, baseline_value: 0, unit: 'per_second', evidence: ['events.ndjson: kind=tcp_connect_failed'] }],
  events: EVENTS.events,
  network: NETWORK,
  timelines: Object.fromEntries(Object.keys(GROUPS).map((g) => [g, timeline(g, NOW - 660, NOW - 30)])),
  baseline_timelines: Object.fromEntries(Object.keys(GROUPS).map((g) => [g, timeline(g, NOW - 1300, NOW - 670)])),
  profiles: { incident: 'web;main;handler 60\nweb;main;gc 40\n', baseline: 'web;main;handler 80\nweb;main;gc 20\n' },
  heatmap: SAMPLES,
};

let browser;
const seen = { profile: [], posts: 0 };
before(async () => {
  browser = await launch();
  const ctx = browser.context;
  await ctx.route('**/ui/env.json', async (route) => {
    const r = await route.fetch();
    const env = await r.json();
    await route.fulfill({ response: r, json: Object.assign(env, { recorder: true }) });
  });
  await ctx.route('**/api/v1/recorder/**', async (route) => {
    const u = new URL(route.request().url());
    const q = u.searchParams;
    const from = Number(q.get('from') || -900);
    const rel = (v) => (v < 0 ? NOW + v : v);
    switch (u.pathname) {
      case '/api/v1/recorder/timeline':
        return route.fulfill({ json: timeline(q.get('group'), Math.floor(rel(from)), NOW) });
      case '/api/v1/recorder/events':
        return route.fulfill({ json: EVENTS });
      case '/api/v1/recorder/network':
        return route.fulfill({ json: NETWORK });
      case '/api/v1/recorder/samples':
        return route.fulfill({ json: SAMPLES });
      case '/api/v1/recorder/profile':
        seen.profile.push({ from: Number(q.get('from')), to: Number(q.get('to')), format: q.get('format'), workload: q.get('workload') });
        return route.fulfill({ contentType: 'text/plain', body: 'burn;main;burn_hot_75 75\nburn;main;burn_cold_25 25\n' });
      default:
        return route.fulfill({ status: 404, json: { error: 'unknown ' + u.pathname } });
    }
  });
  await ctx.route('**/api/v1/incidents**', async (route) => {
    const u = new URL(route.request().url());
    if (route.request().method() === 'POST') {
      seen.posts++;
      const body = JSON.parse(route.request().postData() || '{}');
      assert.equal(body.before, '10m');
      if (seen.posts === 1) return route.fulfill({ status: 202, json: { id: 'inc-2', state: 'recording', ready_at: NOW + 30 } });
      return route.fulfill({ status: 429, headers: { 'retry-after': '120' }, json: { error: 'cooldown: 120 s left', retry_after_seconds: 120 } });
    }
    if (u.pathname === '/api/v1/incidents') return route.fulfill({ json: { incidents: [INCIDENT] } });
    if (u.pathname === '/api/v1/incidents/inc-1/files/data.json') return route.fulfill({ json: DATA });
    return route.fulfill({ status: 404, json: { error: 'unknown' } });
  });
});
after(async () => {
  await browser.close();
});

async function open(hash, name) {
  const page = await browser.context.newPage();
  const w = watch(page, ORIGIN);
  await page.goto(AGENT + '/ui/' + hash);
  await pageReady(page, name);
  return { page, w };
}

test('Node: six timelines with points, synced cursors, event markers and the events table', async () => {
  const { page, w } = await open('#/node?range=300', 'node');
  const charts = await page.$$eval('#node-timelines .chart-box', (els) => els.map((e) => ({ g: e.dataset.group, points: Number(e.dataset.points), markers: Number(e.dataset.markers) })));
  assert.deepEqual(charts.map((c) => c.g), ['cpu', 'memory', 'psi', 'disk', 'network', 'load']);
  for (const c of charts) {
    assert.ok(c.points >= 300, c.g + ' points ' + c.points);
    assert.equal(c.markers, 3, c.g + ' markers');
  }
  // Hovering one chart moves the cursor of the others (uPlot sync).
  const boxes = await page.$$('#node-timelines .u-over');
  const bb = await boxes[0].boundingBox();
  await page.mouse.move(bb.x + bb.width / 2, bb.y + bb.height / 2);
  const lefts = await page.$$eval('#node-timelines .u-cursor-x', (els) => els.map((e) => e.style.transform || e.style.left));
  assert.ok(lefts.length === 6 && new Set(lefts).size === 1 && lefts[0], 'synced cursors: ' + lefts);
  assert.match(await page.textContent('main'), /Out of memory: Killed process 4242/);
  // New data for the same series updates the charts in place (auto-refresh, range change).
  await page.evaluate(() => { document.querySelector('#node-timelines .u-over').dataset.keep = '1'; });
  await page.selectOption('main select', '900');
  await page.waitForFunction(() => Number(document.querySelector('#node-timelines .chart-box').dataset.points) >= 900);
  assert.equal(await page.getAttribute('#node-timelines .u-over', 'data-keep'), '1');
  assert.match(page.url(), /range=900/);
  await screenshot(page, 'ui-contract-node');
  assert.deepEqual(w.problems, []);
  await page.close();
});

test('Network: recorder rows with errors by reason and p50/p99; a row opens its latency heatmap', async () => {
  const { page, w } = await open('#/network', 'network');
  const row = await page.textContent('#network-table tbody tr');
  assert.match(row, /db\.example:5432/);
  assert.match(row, /refused 3/);
  await page.click('#network-table tbody tr');
  await page.waitForSelector('#network-heatmap[data-cells]');
  assert.ok(Number(await page.getAttribute('#network-heatmap', 'data-cells')) >= 30 * 3);
  await page.selectOption('main select >> nth=1', 'rtt');
  await page.waitForSelector('#network-heatmap[data-cells]');
  assert.match(page.url(), /hist=rtt/);
  assert.match(page.url(), /row=/);
  await screenshot(page, 'ui-contract-network');
  assert.deepEqual(w.problems, []);
  await page.close();
});

test('Profiles: sub-second heatmap; a dragged range becomes the flame graph; a range link; the diff', async () => {
  const { page, w } = await open('#/profiles', 'profiles');
  await page.waitForSelector('#samples-heatmap[data-cells]');
  assert.ok(Number(await page.getAttribute('#samples-heatmap', 'data-cells')) > 100);
  await page.locator('#samples-heatmap').scrollIntoViewIfNeeded();
  const over = await page.$('#samples-heatmap .u-over');
  const b = await over.boundingBox();
  // Drag from the top of the 2nd column to the bottom of a column further right.
  await page.mouse.move(b.x + b.width * 0.3, b.y + 2);
  await page.mouse.down();
  await page.mouse.move(b.x + b.width * 0.5, b.y + b.height - 2, { steps: 5 });
  await page.mouse.up();
  await page.waitForFunction(() => /recorded CPU samples/.test(document.getElementById('profile-status').textContent));
  const req = seen.profile[seen.profile.length - 1];
  assert.equal(req.format, 'folded');
  assert.ok(req.from >= SAMPLE_START && req.to <= SAMPLE_START + 121 && req.to - req.from > 10, JSON.stringify(req));
  const f = await page.evaluate(() => document.getElementById('profile-flame').nsFlame.frame('burn_hot_75'));
  assert.equal(f.share, 0.75);
  // Pin as the baseline, load another range from a link, diff against the baseline.
  await page.click('text=Use as baseline');
  await page.goto(AGENT + '/ui/#/profiles?from=' + (SAMPLE_START + 10) + '&to=' + (SAMPLE_START + 20) + '&workload=web');
  await pageReady(page, 'profiles');
  const last = seen.profile[seen.profile.length - 1];
  assert.deepEqual([last.from, last.to, last.workload], [SAMPLE_START + 10, SAMPLE_START + 20, 'web']);
  // The page was reloaded by the link: pin this range, load another, diff them.
  await page.waitForFunction(() => /recorded CPU samples/.test(document.getElementById('profile-status').textContent));
  await page.click('text=Use as baseline');
  await page.locator('#samples-heatmap').scrollIntoViewIfNeeded();
  const ob = await (await page.$('#samples-heatmap .u-over')).boundingBox();
  const before = seen.profile.length;
  await page.mouse.move(ob.x + ob.width * 0.6, ob.y + 2);
  await page.mouse.down();
  await page.mouse.move(ob.x + ob.width * 0.7, ob.y + ob.height - 2, { steps: 3 });
  await page.mouse.up();
  for (let i = 0; i < 100 && seen.profile.length === before; i++) await page.waitForTimeout(100);
  assert.equal(seen.profile.length, before + 1, 'a second range was requested');
  await page.waitForFunction(() => !/^Loading/.test(document.getElementById('profile-status').textContent));
  await page.check('#diff-toggle');
  const d = await page.evaluate(() => { const g = document.getElementById('profile-flame').nsFlame; const r = g.rects.find((x) => x.node.name === 'burn_hot_75'); return { diff: g.diff, inBase: r.node.inBase, base: r.node.base }; });
  assert.deepEqual(d, { diff: true, inBase: true, base: 75 });
  await screenshot(page, 'ui-contract-profiles');
  assert.deepEqual(w.problems, []);
  await page.close();
});

test('Incidents: list, trigger (and the cooldown), reader with findings and the flame graph', async () => {
  const { page, w } = await open('#/incidents', 'incidents');
  await page.waitForSelector('#incident-list tbody tr');
  assert.match(await page.textContent('#incident-list'), /slow checkout/);
  await page.click('#incident-form button[type="submit"]');
  await page.waitForFunction(() => /inc-2 is recording/.test(document.querySelector('main').textContent));
  await page.click('#incident-form button[type="submit"]');
  await page.waitForFunction(() => /Cooldown: cooldown: 120 s left/.test(document.querySelector('main').textContent));
  await page.click('#incident-list a[href^="#/incidents/"]');
  await page.waitForSelector('#incident-flame canvas[data-frames]');
  assert.match(await page.textContent('#incident-reader'), /refused connects/);
  const g = await page.evaluate(() => document.getElementById('incident-flame').nsFlame.frame('handler'));
  assert.equal(g.share, 0.6);
  await screenshot(page, 'ui-contract-incident-reader');
  // The one 429 is the cooldown this test asked for; nothing else went wrong.
  // (Chromium also logs a console error for any 4xx answer to a fetch.)
  const expected = (p) => /^HTTP 429 for .*\/api\/v1\/incidents$/.test(p) || /^console error: .*status of 429 .*\/api\/v1\/incidents$/.test(p);
  assert.deepEqual(w.problems.filter((p) => !expected(p)), []);
  assert.equal(w.problems.length, 2);
  await page.close();
});
