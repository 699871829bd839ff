// Benchmarks of the web UI (run by scripts/bench-ui.sh; results in docs/benchmarks.md):
//   node bench.mjs flame  AGENT_URL [runs]   first render of the Profiles page with a
//        20,000-node flame graph (Performance API mark), alternated with the anchor,
//        d3-flame-graph 5 drawing the same tree
//   node bench.mjs assets AGENT_URL          JS + CSS bytes as transferred (gzip) for /ui/
//   node bench.mjs cost   AGENT_URL PID [runs] [seconds] [page]   the agent's CPU time with
//        one page (node, network, ...) auto-refreshing vs no page, alternated
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';
import { Profile, StringTable, Sample, Location, Line, Function as PFunction, ValueType, Label, Mapping } from '../vendor/pprof-format/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const [mode, agent, ...rest] = process.argv.slice(2);
const median = (a) => { const s = a.slice().sort((x, y) => x - y); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

async function browser() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nsui-bench-'));
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: process.env.NS_CHROMIUM || '/usr/bin/chromium', headless: true, args: FLAGS, viewport: { width: 1280, height: 800 } });
  return { ctx, close: async () => { await ctx.close(); fs.rmSync(dir, { recursive: true, force: true }); } };
}

// A deterministic tree of `n` distinct frames (power-law fan-out, like real profiles).
function tree(n) {
  let seed = 1;
  const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  const nodes = [{ name: 'bench', parent: -1, self: 0 }];
  for (let i = 1; i < n; i++) nodes.push({ name: 'fn_' + i + '_' + Math.floor(rnd() * 1e6).toString(36), parent: Math.floor(Math.pow(rnd(), 0.5) * i), self: 1 + Math.floor(rnd() * 100) });
  return nodes;
}
function pathOf(nodes, i) { const p = []; for (let j = i; j >= 0; j = nodes[j].parent) p.unshift(j); return p; }

// The same tree as a gzip'd pprof (what /debug/pprof/profile answers) ...
function pprof(nodes) {
  const st = new StringTable();
  const functions = nodes.map((nd, i) => new PFunction({ id: i + 1, name: st.dedup(nd.name), systemName: st.dedup(nd.name), filename: st.dedup('bench.c') }));
  const locations = nodes.map((nd, i) => new Location({ id: i + 1, mappingId: 1, address: 0x1000 + i * 16, line: [new Line({ functionId: i + 1, line: 1 })] }));
  const comm = st.dedup('comm');
  const commV = st.dedup('bench');
  const samples = [];
  nodes.forEach((nd, i) => {
    if (i === 0) return;
    const p = pathOf(nodes, i).slice(1); // the root frame is the comm label
    samples.push(new Sample({ locationId: p.reverse().map((j) => j + 1), value: [nd.self, nd.self * 10101010], label: [new Label({ key: comm, str: commV })] }));
  });
  const prof = new Profile({
    sampleType: [new ValueType({ type: st.dedup('samples'), unit: st.dedup('count') }), new ValueType({ type: st.dedup('cpu'), unit: st.dedup('nanoseconds') })],
    sample: samples,
    mapping: [new Mapping({ id: 1, memoryStart: 0x1000, memoryLimit: 0x1000000, filename: st.dedup('/bench') })],
    location: locations,
    function: functions,
    stringTable: st,
    periodType: new ValueType({ type: st.dedup('cpu'), unit: st.dedup('nanoseconds') }),
    period: 10101010,
    defaultSampleType: st.dedup('cpu'),
  });
  return zlib.gzipSync(Buffer.from(prof.encode()));
}
// ... and as d3-flame-graph's nested JSON.
function d3json(nodes) {
  const objs = nodes.map((nd) => ({ name: nd.name, value: nd.self, children: [] }));
  nodes.forEach((nd, i) => { if (i) objs[nd.parent].children.push(objs[i]); });
  return objs[0];
}

async function flame(runs) {
  const nodes = tree(20000);
  const gz = pprof(nodes);
  const d3dir = path.join(here, 'node_modules');
  const scripts = ['internmap/dist/internmap.min.js', 'd3-array/dist/d3-array.min.js', 'd3-color/dist/d3-color.min.js', 'd3-dispatch/dist/d3-dispatch.min.js', 'd3-ease/dist/d3-ease.min.js', 'd3-format/dist/d3-format.min.js', 'd3-hierarchy/dist/d3-hierarchy.min.js', 'd3-interpolate/dist/d3-interpolate.min.js', 'd3-time/dist/d3-time.min.js', 'd3-time-format/dist/d3-time-format.min.js', 'd3-scale/dist/d3-scale.min.js', 'd3-selection/dist/d3-selection.min.js', 'd3-timer/dist/d3-timer.min.js', 'd3-transition/dist/d3-transition.min.js', 'd3-flame-graph/dist/d3-flamegraph.umd.min.js'];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nsui-bench-d3-'));
  fs.writeFileSync(path.join(tmp, 'data.js'), 'window.DATA=' + JSON.stringify(d3json(nodes)) + ';');
  fs.writeFileSync(path.join(tmp, 'index.html'), '<!doctype html><html><head><meta charset="utf-8"></head><body><div id="chart"></div>' + scripts.map((s) => '<script src="' + pathToFileURL(path.join(d3dir, s)).href + '"></script>').join('') + '<script src="data.js"></script><script>const fg=flamegraph.default().width(1240).cellHeight(18).transitionDuration(0).minFrameSize(0).selfValue(true);d3.select("#chart").datum(window.DATA).call(fg);requestAnimationFrame(()=>{performance.mark("d3-drawn",{detail:{rects:document.querySelectorAll("#chart rect").length}});});</script></body></html>');
  const b = await browser();
  await b.ctx.route('**/debug/pprof/profile**', (route) => route.fulfill({ status: 200, contentType: 'application/octet-stream', body: gz }));
  const ours = [];
  const anchor = [];
  let frames = 0;
  let rects = 0;
  try {
    for (let i = 0; i < runs; i++) {
      for (const side of i % 2 ? ['anchor', 'ours'] : ['ours', 'anchor']) {
        const page = await b.ctx.newPage();
        if (side === 'ours') {
          await page.goto(agent + '/ui/#/profiles?pid=1&seconds=1');
          const m = await page.waitForFunction(() => { const e = performance.getEntriesByName('ns-flame-drawn')[0]; return e && { t: e.startTime, d: e.detail, marks: Object.fromEntries(performance.getEntriesByType('mark').map((x) => [x.name, Math.round(x.startTime)])), dcl: Math.round(performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd) }; }, null, { timeout: 60000 });
          const v = await m.jsonValue();
          ours.push(v.t);
          if (process.env.NS_BENCH_VERBOSE) console.error(JSON.stringify({ dcl: v.dcl, marks: v.marks }));
          frames = v.d.frames;
          if (v.d.nodes < 20000) throw new Error('flame graph has ' + v.d.nodes + ' nodes');
        } else {
          await page.goto(pathToFileURL(path.join(tmp, 'index.html')).href);
          const m = await page.waitForFunction(() => { const e = performance.getEntriesByName('d3-drawn')[0]; return e && { t: e.startTime, d: e.detail }; }, null, { timeout: 60000 });
          const v = await m.jsonValue();
          anchor.push(v.t);
          rects = v.d.rects;
        }
        await page.close();
      }
    }
  } finally {
    await b.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  const mo = median(ours);
  const ma = median(anchor);
  console.log(JSON.stringify({ bench: 'flame-first-render-20000', runs, ours_ms: ours.map(Math.round), anchor_d3_ms: anchor.map(Math.round), median_ours_ms: Math.round(mo), median_anchor_ms: Math.round(ma), ratio_ours_over_anchor: +(mo / ma).toFixed(3), ours_frames_drawn: frames, anchor_rects: rects }));
}

async function assets() {
  const b = await browser();
  try {
    const page = await b.ctx.newPage();
    await page.goto(agent + '/ui/');
    await page.waitForSelector('main[data-ready="true"]', { timeout: 60000 });
    const res = await page.evaluate(() => performance.getEntriesByType('resource').filter((r) => /\.(m?js|css)(\?|$)/.test(r.name)).map((r) => ({ name: r.name.replace(location.origin, ''), transfer: r.encodedBodySize, decoded: r.decodedBodySize })));
    const gz = res.reduce((s, r) => s + r.transfer, 0);
    const raw = res.reduce((s, r) => s + r.decoded, 0);
    console.log(JSON.stringify({ bench: 'ui-js-css-bytes', files: res.length, gzip_bytes: gz, raw_bytes: raw, budget_bytes: 150 * 1024, within: gz <= 150 * 1024, detail: res }));
  } finally {
    await b.close();
  }
}

// CPU time of the whole process (every thread, exited ones included) in ns, from
// utime + stime of /proc/<pid>/stat (clock ticks of 10 ms). (/proc/<pid>/schedstat has ns
// but only for the main thread, which sits idle in a tokio runtime.)
function cpuNs(pid) {
  const stat = fs.readFileSync('/proc/' + pid + '/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]);
  return (ticks * 1e9) / 100;
}

async function cost(pid, runs, seconds, pageName) {
  const b = await browser();
  const withPage = [];
  const without = [];
  try {
    for (let i = 0; i < runs; i++) {
      for (const side of i % 2 ? ['without', 'with'] : ['with', 'without']) {
        let page = null;
        if (side === 'with') {
          page = await b.ctx.newPage();
          await page.goto(agent + '/ui/#/' + pageName);
          await page.waitForSelector('main[data-ready="true"]', { timeout: 60000 });
        }
        const c0 = cpuNs(pid);
        const t0 = process.hrtime.bigint();
        await new Promise((r) => setTimeout(r, seconds * 1000));
        const share = (cpuNs(pid) - c0) / Number(process.hrtime.bigint() - t0);
        (side === 'with' ? withPage : without).push(share * 100);
        if (page) await page.close();
      }
    }
  } finally {
    await b.close();
  }
  const mw = median(withPage);
  const mo = median(without);
  const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  console.log(JSON.stringify({ bench: 'ui-agent-cost', page: pageName, runs, seconds, mean_with: +mean(withPage).toFixed(4), mean_without: +mean(without).toFixed(4), with_page_pct_of_core: withPage.map((v) => +v.toFixed(4)), without_pct_of_core: without.map((v) => +v.toFixed(4)), median_with: +mw.toFixed(4), median_without: +mo.toFixed(4), ui_cost_pct_of_core: +(mw - mo).toFixed(4), ratio_with_over_without: +(mw / mo).toFixed(3) }));
}

if (mode === 'flame') await flame(Number(rest[0] || 10));
else if (mode === 'assets') await assets();
else if (mode === 'cost') await cost(Number(rest[0]), Number(rest[1] || 10), Number(rest[2] || 30), rest[3] || 'node');
else {
  console.error('usage: node bench.mjs flame|assets|cost AGENT_URL [...]');
  process.exit(2);
}
