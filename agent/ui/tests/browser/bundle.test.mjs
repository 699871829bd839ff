// A bundle's offline index.html (rendered by nodescope_ui::OfflineRenderer from a data
// document built per the contract by agent/nodescope/tests/ui_browser.rs), opened from
// file:// with the network off and every request but the file itself refused:
//   NS_BUNDLE_HTML=/path/index.html NS_BUNDLE_SUMMARY='text in summary_md' node --test bundle.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pathToFileURL } from 'node:url';
import { launch, watch, screenshot } from './lib.mjs';

const FILE = process.env.NS_BUNDLE_HTML;
const SUMMARY = process.env.NS_BUNDLE_SUMMARY;
assert.ok(FILE && SUMMARY, 'NS_BUNDLE_HTML and NS_BUNDLE_SUMMARY must be set');

test('offline bundle page renders summary, findings, timelines and the flame graph with no request', async () => {
  const browser = await launch({ offline: true });
  try {
    const page = await browser.context.newPage();
    const w = watch(page, 'file');
    const url = pathToFileURL(FILE).href;
    // Everything but the page itself is refused (and would be reported by watch()).
    await browser.context.route('**/*', (route) => (route.request().url() === url ? route.continue() : route.abort('blockedbyclient')));
    await page.goto(url);
    await page.waitForSelector('#incident-flame canvas[data-frames]');
    assert.match(await page.textContent('h1'), /^Incident /);
    assert.ok((await page.textContent('pre.summary')).includes(SUMMARY));
    const findings = await page.$$eval('section', (ss) => {
      const s = ss.find((x) => x.querySelector('h2').textContent.startsWith('Findings'));
      return Array.from(s.querySelectorAll('tbody tr')).map((tr) => tr.textContent);
    });
    assert.ok(findings.length >= 1 && /burn_hot_75|cpu_hog/.test(findings.join(' ')), findings.join('\n'));
    const points = await page.$$eval('.chart-box[data-group]', (els) => els.map((e) => Number(e.dataset.points || 0)));
    assert.equal(points.length, 6);
    assert.ok(points.every((p) => p > 0), 'every timeline has points: ' + points);
    // A hostile event body is shown as text, never run.
    assert.ok((await page.textContent('main')).includes('</script><script>'));
    assert.equal(await page.evaluate(() => window.__pwned === undefined), true);

    await page.locator('#incident-flame canvas').scrollIntoViewIfNeeded();
    const f = await page.evaluate(() => {
      const g = document.getElementById('incident-flame').nsFlame;
      return { hot: g.frame('burn_hot_75'), cold: g.frame('burn_cold_25') };
    });
    assert.equal(f.hot.value, 750);
    assert.equal(f.cold.value, 250);
    const b = f.hot.box;
    await page.mouse.click(b.x + b.w / 2, b.y + b.h / 2);
    assert.equal(await page.evaluate(() => document.getElementById('incident-flame').nsFlame.zoomed().name), 'burn_hot_75');
    // Diff view: burn_hot_75 grew from 50 % in the baseline to 75 %.
    await page.selectOption('#incident-profile-mode', 'diff');
    const diff = await page.evaluate(() => {
      const g = document.getElementById('incident-flame').nsFlame;
      const r = g.rects.find((x) => x.node.name === 'burn_hot_75');
      return { diff: g.diff, base: r.node.base, value: r.node.value };
    });
    assert.equal(diff.diff, true);
    assert.equal(diff.value, 750);
    assert.equal(diff.base, 500);
    await screenshot(page, 'ui-bundle-offline');
    assert.deepEqual(w.problems, []);
    assert.deepEqual(w.requests, [url], 'the page made no request but for itself');
  } finally {
    await browser.close();
  }
});
