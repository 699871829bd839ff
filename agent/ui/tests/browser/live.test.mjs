// Every page of the web UI against a running agent (started by
// agent/nodescope/tests/ui_browser.rs, which also runs the 75/25 workload and opens a
// loopback connection to a known port):
//   NS_AGENT=http://127.0.0.1:PORT NS_BURN_PID=N NS_PEER_PORT=P node --test live.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { launch, watch, screenshot, pageReady } from './lib.mjs';

const AGENT = process.env.NS_AGENT;
const BURN = process.env.NS_BURN_PID;
const PEER_PORT = process.env.NS_PEER_PORT;
const SECONDS = process.env.NS_PROFILE_SECONDS || '10';
assert.ok(AGENT && BURN && PEER_PORT, 'NS_AGENT, NS_BURN_PID and NS_PEER_PORT must be set');
const ORIGIN = new URL(AGENT).origin;

let browser;
let env;
// Polls `f` until it returns true (or fails after `ms`).
async function until(what, f, ms) {
  const end = Date.now() + ms;
  for (;;) {
    if (await f().catch(() => false)) return;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 500));
  }
}
const getJson = async (p) => (await fetch(AGENT + p)).json();

before(async () => {
  browser = await launch();
  env = await getJson('/ui/env.json');
  if (env.recorder) {
    // The recorder samples host metrics every second and peers every 10 s: make sure its
    // first points exist before judging the pages.
    await until('recorder timelines', async () => (await getJson('/api/v1/recorder/timeline?group=cpu&from=-60')).timestamps.length >= 3, 30000);
    for (let i = 0; i < 3; i++) {
      await new Promise((res, rej) => { const c = net.connect(Number(PEER_PORT), '127.0.0.1', () => { c.end(); res(); }); c.on('error', rej); });
    }
    await until('recorded peer ' + PEER_PORT, async () => (await getJson('/api/v1/recorder/network?from=-300&limit=1000')).rows.some((r) => String(r.peer_port) === PEER_PORT), 45000);
  }
});
after(async () => {
  await browser.close();
});

async function open(url, name) {
  const page = await browser.context.newPage();
  const w = watch(page, ORIGIN);
  await page.goto(url);
  await pageReady(page, name);
  return { page, w };
}

function clean(w, page) {
  assert.deepEqual(w.problems, [], 'problems on ' + page);
  assert.ok(w.requests.length > 0);
  for (const u of w.requests) assert.ok(u.startsWith(ORIGIN) || u.startsWith('blob:') || u.startsWith('data:'), u);
}

test('GET / redirects to the UI and the Node page shows every component with its state', async () => {
  const { page, w } = await open(AGENT + '/', 'node');
  assert.match(page.url(), /\/ui\/#\/node$/);
  const rows = await page.$$eval('#status-table tbody tr', (trs) => trs.map((tr) => Array.from(tr.cells).map((c) => c.textContent)));
  const names = rows.map((r) => r[0]);
  for (const n of ['profiler', 'ui', 'intake']) assert.ok(names.includes(n), 'status lacks ' + n + ': ' + names.join(', '));
  for (const r of rows) assert.match(r[2], /^(ok|degraded|unavailable|failed|stuck|disabled|starting|stopped)$/, r.join(' | '));
  const charts = await page.$$eval('#node-timelines .chart-box', (els) => els.map((e) => ({ group: e.dataset.group, points: Number(e.dataset.points || 0) })));
  if (env.recorder) {
    assert.equal(charts.length, 6);
    for (const c of charts) assert.ok(c.points > 0, 'timeline ' + c.group + ' has no point');
  } else {
    assert.match(await page.textContent('main'), /flight recorder is not running/);
  }
  // Keyboard: the nav is reachable with Tab and opens a page with Enter.
  await page.focus('nav a[data-page="network"]');
  await page.keyboard.press('Enter');
  await pageReady(page, 'network');
  await screenshot(page, 'ui-node');
  clean(w, 'node');
  await page.close();
});

test('Network page lists the peer the test connected to; sorting, filtering and the URL', async () => {
  const { page, w } = await open(AGENT + '/ui/#/network?filter=' + PEER_PORT, 'network');
  const text = await page.textContent('#network-table tbody');
  assert.ok(text.includes('127.0.0.1') && text.includes(PEER_PORT), 'peer 127.0.0.1:' + PEER_PORT + ' not in ' + text);
  const n = Number(await page.getAttribute('#network-table table', 'data-rows'));
  assert.ok(n >= 1);
  await page.click('#network-table th:nth-child(5) button');
  assert.match(page.url(), /sort=connects/);
  await page.click('#network-table tbody tr');
  assert.match(page.url(), /row=/);
  if (env.recorder) {
    await page.waitForSelector('#network-heatmap[data-cells]');
    assert.ok(Number(await page.getAttribute('#network-heatmap', 'data-cells')) > 0);
  }
  await screenshot(page, 'ui-network');
  clean(w, 'network');
  await page.close();
});

test('Profiles page profiles a pid from the URL; 75/25 in the flame graph; click zooms; search; icicle; downloads', async () => {
  // 499 Hz (the profiler's cap): enough samples for ±8 points even when the workload gets
  // a small share of a busy machine.
  const { page, w } = await open(AGENT + '/ui/#/profiles?pid=' + BURN + '&seconds=' + SECONDS + '&hz=499', 'profiles');
  assert.equal(await page.inputValue('#profile-form input[aria-label="Sampling frequency in Hz"]'), '499');
  await page.waitForFunction(() => /stacks/.test(document.getElementById('profile-status').textContent), null, { timeout: 60000 });
  const shares = await page.evaluate(() => {
    const f = document.getElementById('profile-flame').nsFlame;
    return { hot: f.frame('burn_hot_75'), cold: f.frame('burn_cold_25') };
  });
  assert.ok(shares.hot && shares.cold, 'both functions drawn: ' + JSON.stringify(shares));
  const hot = shares.hot.value / (shares.hot.value + shares.cold.value);
  console.log('burn_hot_75 share of the two: ' + hot.toFixed(3) + ' (' + shares.hot.value + ' vs ' + shares.cold.value + ')');
  assert.ok(Math.abs(hot - 0.75) < 0.08, 'hot share ' + hot);
  assert.ok(shares.hot.box.w > shares.cold.box.w * 2, 'drawn widths follow the values');

  // Clicking a frame zooms to it.
  const b = shares.hot.box;
  await page.mouse.click(b.x + b.w / 2, b.y + b.h / 2);
  const zoomed = await page.evaluate(() => document.getElementById('profile-flame').nsFlame.zoomed().name);
  assert.equal(zoomed, 'burn_hot_75');
  const after = await page.evaluate(() => document.getElementById('profile-flame').nsFlame.frame('burn_hot_75').box.w);
  assert.ok(after > b.w * 1.2, 'zoomed frame is wider: ' + after + ' vs ' + b.w);
  await screenshot(page, 'ui-profiles-zoomed');
  // Escape on the canvas resets the zoom; search highlights; icicle flips the layout.
  await page.focus('#profile-flame canvas');
  await page.keyboard.press('Escape');
  assert.equal(await page.evaluate(() => document.getElementById('profile-flame').nsFlame.zoomed().name), 'all');
  await page.fill('#profile-flame input[type="search"]', 'burn_cold');
  assert.match(await page.textContent('#profile-flame .flame-match'), /Matched: \d/);
  // Flame: the root (the process frame "burn") below its callees; icicle: above them.
  const ys = () => page.evaluate(() => { const g = document.getElementById('profile-flame').nsFlame; return [g.frame('burn').box.y, g.frame('burn_hot_75').box.y]; });
  const [root0, leaf0] = await ys();
  assert.ok(root0 > leaf0, 'flame graph: root below the leaf ' + root0 + ' vs ' + leaf0);
  await page.check('#profile-flame input[type="checkbox"]');
  const [root1, leaf1] = await ys();
  assert.ok(root1 < leaf1, 'icicle: root above the leaf ' + root1 + ' vs ' + leaf1);
  await screenshot(page, 'ui-profiles');

  for (const [label, check] of [
    ['Download folded', (s) => assert.match(s, /burn_hot_75 \d+/)],
    ['Download SVG', (s) => assert.match(s, /<svg[\s\S]*burn_hot_75/)],
    ['Download pprof', (s, buf) => assert.equal(buf[0] === 0x1f && buf[1] === 0x8b, true)],
  ]) {
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('text=' + label)]);
    const buf = fs.readFileSync(await dl.path());
    check(buf.toString('utf8'), buf);
  }
  clean(w, 'profiles');
  await page.close();
});

test('Incidents page', async () => {
  const { page, w } = await open(AGENT + '/ui/#/incidents', 'incidents');
  if (env.recorder) {
    await page.waitForSelector('#incident-list table');
  } else {
    assert.match(await page.textContent('main'), /flight recorder is not running/);
  }
  await screenshot(page, 'ui-incidents');
  clean(w, 'incidents');
  await page.close();
});
