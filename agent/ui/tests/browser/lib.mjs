// Shared helpers of the UI's browser tests: Debian's chromium driven by playwright-core
// (Playwright cannot download its own browser here), with a fresh profile per run, and a
// page watcher that records console errors, failed requests, HTTP errors and requests to
// any host but the agent.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const CHROMIUM = process.env.NS_CHROMIUM || '/usr/bin/chromium';
export const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// A persistent context on a fresh --user-data-dir, removed by close().
export async function launch(opts = {}) {
  const dir = fs.mkdtempSync(path.join(process.env.NS_TMP || os.tmpdir(), 'nsui-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 800 },
    offline: !!opts.offline,
    acceptDownloads: true,
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Records everything that must not happen on a page.
export function watch(page, agentOrigin) {
  const problems = [];
  const requests = [];
  const note = (p) => {
    problems.push(p);
    console.log('  page problem: ' + p);
  };
  page.on('console', (m) => {
    if (m.type() === 'error') note('console error: ' + m.text() + (m.location() && m.location().url ? ' at ' + m.location().url : ''));
  });
  page.on('pageerror', (e) => note('uncaught exception: ' + e.message + '\n' + e.stack));
  page.on('request', (r) => {
    requests.push(r.url());
    const u = new URL(r.url());
    const ok = agentOrigin === 'file' ? u.protocol === 'file:' || u.protocol === 'blob:' || u.protocol === 'data:' : u.origin === agentOrigin || u.protocol === 'blob:' || u.protocol === 'data:';
    if (!ok) note('request to another host: ' + r.url());
  });
  page.on('requestfailed', (r) => {
    const f = r.failure();
    // A navigation away (or a page change) cancels in-flight requests: not a failure of the UI.
    if (f && f.errorText === 'net::ERR_ABORTED' && r.resourceType() === 'fetch') return;
    note('failed request: ' + r.url() + ' (' + (f && f.errorText) + ')');
  });
  page.on('response', (r) => {
    if (r.status() >= 400) note('HTTP ' + r.status() + ' for ' + r.url());
  });
  return { problems, requests };
}

export function screenshotDir() {
  const d = process.env.NS_SCREENSHOTS || path.join(os.tmpdir(), 'nsui-screenshots');
  fs.mkdirSync(d, { recursive: true });
  return d;
}

// Saves a full-page screenshot and prints its path into the test log.
export async function screenshot(page, name) {
  const file = path.join(screenshotDir(), name + '.png');
  await page.screenshot({ path: file, fullPage: true });
  console.log('screenshot: ' + file);
  return file;
}

// Waits until the routed page says it finished its first render.
export async function pageReady(page, name, timeout = 60000) {
  await page.waitForSelector(`main[data-page="${name}"][data-ready="true"]`, { timeout });
}
