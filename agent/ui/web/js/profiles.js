/* nodescope web UI: the Profiles page.
 * - Live: profile a process, container, cgroup, the whole node or the agent for N seconds
 *   (cpu, off-cpu or wall) through /debug/pprof/profile; the gzip'd pprof is decoded in the
 *   page (downloads: the pprof as received, the folded stacks, an SVG of the view).
 * - Recorded: a sub-second heatmap of the flight recorder's samples; a selected range
 *   becomes the flame graph (/api/v1/recorder/profile).
 * - Diff: pin any profile as the baseline, then view another one against it.
 * URL: #/profiles?pid=1234&seconds=10[&type=offcpu][&hz=99] profiles at once;
 *      #/profiles?from=T&to=T[&pid=|&workload=] opens a recorded range. */
(function () {
  'use strict';
  const NS = window.NS;
  const h = NS.h;
  const F = NS.fmt;

  const TARGETS = [['pid', 'Process (pid)'], ['container', 'Container (id)'], ['cgroup', 'Cgroup (path)'], ['all', 'Whole node'], ['self', 'The agent itself']];

  // The folded text of the profile on screen (built on demand for live profiles).
  function foldedOf(cur) {
    if (cur.folded === null) cur.folded = NS.toFolded(cur.tree);
    return cur.folded;
  }

  NS.pages.profiles = async function (main, route) {
    const p = route.params;
    let kind = TARGETS.map((t) => t[0]).find((k) => p.has(k)) || 'pid';
    if (p.get('all') === 'true') kind = 'all';
    const targetSel = NS.select(TARGETS, kind);
    const targetIn = h('input', { type: 'text', 'aria-label': 'Target', placeholder: 'pid', value: kind === 'all' || kind === 'self' ? '' : p.get(kind) || '', size: 28 });
    const secondsIn = h('input', { type: 'number', min: 1, max: 300, value: p.get('seconds') || '10', 'aria-label': 'Duration in seconds' });
    const typeSel = NS.select([['cpu', 'CPU'], ['offcpu', 'Off-CPU'], ['wall', 'Wall (on + off CPU)']], p.get('type') || 'cpu');
    const hzIn = h('input', { type: 'number', min: 1, max: 1000, value: p.get('hz') || '', placeholder: 'default', 'aria-label': 'Sampling frequency in Hz' });
    const go = h('button', { type: 'submit', class: 'primary', text: 'Profile' });
    const status = h('p', { class: 'muted', role: 'status', id: 'profile-status' });
    const form = h('form', { class: 'toolbar', id: 'profile-form' }, NS.field('Target', targetSel), targetIn, NS.field('Seconds', secondsIn), NS.field('Type', typeSel), NS.field('Hz', hzIn), go);

    const fhost = h('div', { class: 'flame-host', id: 'profile-flame' });
    const fg = new NS.FlameGraph(fhost, { label: 'Flame graph of the profile. Arrow keys move between frames, Enter zooms, Escape resets.' });
    const dlPprof = h('button', { type: 'button', text: 'Download pprof', disabled: true });
    const dlSvg = h('button', { type: 'button', text: 'Download SVG', disabled: true });
    const dlFolded = h('button', { type: 'button', text: 'Download folded', disabled: true });
    const pin = h('button', { type: 'button', text: 'Use as baseline', disabled: true });
    const diffBox = h('input', { type: 'checkbox', disabled: true, id: 'diff-toggle' });
    const baseLabel = h('span', { class: 'muted' });
    const actions = h('div', { class: 'toolbar' }, dlPprof, dlSvg, dlFolded, pin, h('label', { class: 'check' }, diffBox, ' Diff against the baseline'), baseLabel);

    const recBox = h('div', { class: 'chart-box', id: 'samples-heatmap' });
    const recNote = h('p', { class: 'muted' });
    const recRange = NS.select([['60', 'Last minute'], ['300', 'Last 5 min'], ['600', 'Last 10 min']], '300');
    const recWorkload = h('input', { type: 'text', placeholder: 'all workloads', 'aria-label': 'Workload filter for recorded samples', size: 24 });
    const recLoad = h('button', { type: 'button', text: 'Show samples' });
    const recInfo = h('span', { class: 'muted', 'aria-live': 'polite', text: 'Hover a cell for its count.' });

    main.append(
      h('h1', { text: 'Profiles' }),
      NS.section('Profile on demand', form, status),
      NS.section('Flame graph', actions, fhost),
      NS.section('Recorded samples: sub-second heatmap (select a range to see its flame graph)', NS.env.recorder ? h('div', { class: 'toolbar' }, NS.field('Range', recRange), NS.field('Workload', recWorkload), recLoad, NS.heatLegend('samples'), recInfo) : null, recNote, recBox),
    );

    // The profile on screen and the pinned baseline.
    let current = null; // {tree, folded, unit, title, pprof?: Uint8Array, name}
    let baseline = null;

    function show(cur) {
      current = cur;
      if (baseline && diffBox.checked) NS.diffTrees(cur.tree, baseline.tree);
      fg.setData(cur.tree, { unit: cur.unit === 'nanoseconds' ? 'nanoseconds' : 'samples', diff: !!baseline && diffBox.checked });
      dlSvg.disabled = dlFolded.disabled = pin.disabled = false;
      dlPprof.disabled = !cur.pprof && !cur.pprofUrl;
      fhost.dataset.title = cur.title;
    }

    const syncTarget = () => {
      const k = targetSel.value;
      targetIn.disabled = k === 'all' || k === 'self';
      targetIn.placeholder = { pid: 'e.g. 1234', container: '12 to 64 hex characters', cgroup: '/system.slice/nginx.service', all: 'every process on the node', self: 'the nodescope process' }[k];
    };
    targetSel.addEventListener('change', syncTarget);
    syncTarget();

    function params() {
      const q = {};
      const k = targetSel.value;
      if (k === 'all') q.all = 'true';
      else if (k !== 'self') q[k] = targetIn.value.trim();
      q.seconds = secondsIn.value;
      if (typeSel.value !== 'cpu') q.type = typeSel.value;
      if (hzIn.value) q.hz = hzIn.value;
      return q;
    }

    let inflight = null;
    NS.onLeave(() => inflight && inflight.abort());
    async function profileLive() {
      const q = params();
      const k = targetSel.value;
      if ((k === 'pid' || k === 'container' || k === 'cgroup') && !q[k]) {
        status.textContent = 'Enter a ' + k + ' to profile.';
        targetIn.focus();
        return;
      }
      NS.setParams(q);
      const secs = Number(q.seconds) || 10;
      const what = k === 'all' ? 'the whole node' : k === 'self' ? 'the agent' : k + ' ' + q[k];
      go.disabled = true;
      const started = Date.now();
      const tick = setInterval(() => (status.textContent = 'Profiling ' + what + ' (' + typeSel.value + ')… ' + Math.max(0, secs - Math.floor((Date.now() - started) / 1000)) + ' s left'), 250);
      inflight = new AbortController();
      try {
        const pprofLib = await NS.pprofReady;
        const r = await NS.api.bytes('/debug/pprof/profile' + NS.api.query(Object.assign({}, q, { format: 'pprof' })), { signal: inflight.signal });
        NS.mark('ns-profile-fetched');
        const d = await pprofLib.decode(r.bytes);
        NS.mark('ns-profile-decoded');
        const title = typeSel.value + ' profile of ' + what + ', ' + secs + ' s';
        show({ tree: d.root, folded: null, unit: d.unit, title: title, pprof: r.bytes, name: 'profile-' + (k === 'all' ? 'node' : k === 'self' ? 'agent' : k + '-' + q[k].replace(/[^\w.-]+/g, '_')) + '-' + typeSel.value });
        const sampler = r.headers.get('x-nodescope-sampler');
        status.textContent = title + ': ' + F.num(d.samples, 0) + ' stacks, ' + fg.fmtValue(d.total) + (sampler ? ' (sampler: ' + sampler + ')' : '') + (d.comments.length ? ' · ' + d.comments.join(' · ') : '');
        if (!d.total) status.textContent += ' — no sample: the target was idle or not running.';
      } catch (e) {
        if (e.name !== 'AbortError') status.textContent = 'Profile failed: ' + e.message;
      } finally {
        clearInterval(tick);
        go.disabled = false;
        inflight = null;
      }
    }
    form.addEventListener('submit', (e) => { e.preventDefault(); profileLive(); });

    dlPprof.addEventListener('click', async () => {
      if (current.pprof) NS.download(current.name + '.pb.gz', current.pprof, 'application/octet-stream');
      else if (current.pprofUrl) {
        try {
          const r = await NS.api.bytes(current.pprofUrl);
          NS.download(current.name + '.pb.gz', r.bytes, 'application/octet-stream');
        } catch (e) { NS.toast(e.message, 'error'); }
      }
    });
    dlSvg.addEventListener('click', () => NS.download(current.name + '.svg', fg.svg(current.title), 'image/svg+xml'));
    dlFolded.addEventListener('click', () => NS.download(current.name + '.folded', foldedOf(current), 'text/plain'));
    pin.addEventListener('click', () => {
      baseline = { tree: NS.parseFolded(foldedOf(current)).root, title: current.title };
      baseLabel.textContent = 'Baseline: ' + current.title;
      diffBox.disabled = false;
      NS.toast('Pinned as the baseline. Take another profile, then tick "Diff against the baseline".');
    });
    diffBox.addEventListener('change', () => {
      if (!current) return;
      const tree = NS.parseFolded(foldedOf(current)).root;
      show(Object.assign({}, current, { tree: tree }));
    });

    /* ---------- recorded samples ---------- */
    const heatScope = NS.scope();
    async function rangeProfile(from, to, label) {
      const q = { from: from.toFixed(3), to: to.toFixed(3), type: 'cpu' };
      const wl = recWorkload.value.trim();
      if (wl) q.workload = wl;
      if (p.get('pid') && !wl) q.pid = p.get('pid');
      status.textContent = 'Loading recorded samples ' + F.time(from) + ' → ' + F.time(to) + '…';
      try {
        const folded = await NS.api.text('/api/v1/recorder/profile' + NS.api.query(Object.assign({ format: 'folded' }, q)));
        const parsed = NS.parseFolded(folded);
        const title = 'recorded CPU samples ' + F.datetime(from) + ' → ' + F.time(to) + (wl ? ' of ' + wl : '') + (label ? ' ' + label : '');
        show({ tree: parsed.root, folded: folded, unit: 'samples', title: title, pprofUrl: '/api/v1/recorder/profile' + NS.api.query(Object.assign({ format: 'pprof' }, q)), name: 'recorded-' + Math.floor(from) + '-' + Math.ceil(to) });
        status.textContent = title + ': ' + fg.fmtValue(parsed.root.value) + (parsed.root.value ? '' : ' — nothing recorded in this range.');
        NS.setParams(Object.assign({}, q, { workload: wl || undefined }));
      } catch (e) {
        status.textContent = 'Recorded profile failed: ' + e.message;
      }
    }
    async function loadHeatmap() {
      heatScope.clear();
      NS.clear(recBox);
      const q = { from: -Number(recRange.value) };
      if (recWorkload.value.trim()) q.workload = recWorkload.value.trim();
      else if (p.get('pid')) q.pid = p.get('pid');
      try {
        const s = await NS.api.json('/api/v1/recorder/samples' + NS.api.query(q));
        const hm = NS.subsecond(s, 50);
        recNote.textContent = F.num(s.count, 0) + ' on-CPU samples at ' + s.hz + ' Hz since ' + F.time(s.start) + '. Drag across cells (or use the arrow keys and Enter) to pick a range.';
        NS.heatmap(recBox, hm.xs, 1, hm.rows, hm.counts, {
          title: 'CPU samples per ' + Math.round(hm.bucket) + ' ms',
          yLabel: 'offset in second',
          rowLabel: hm.rowLabel,
          scope: heatScope,
          describe: (c, r, n) => (recInfo.textContent = F.time(hm.xs[c]) + ' + ' + hm.rowLabel(r) + ': ' + n + (n === 1 ? ' sample' : ' samples')),
          onSelect: (sel) => { const rg = hm.range(sel); rangeProfile(rg.from, rg.to); },
        });
      } catch (e) {
        recNote.textContent = 'Recorded samples unavailable: ' + e.message;
      }
    }
    if (NS.env.recorder) {
      recLoad.addEventListener('click', loadHeatmap);
      loadHeatmap();
    } else {
      recNote.textContent = 'The flight recorder is not running on this agent: no recorded samples (live profiles above still work).';
    }

    // Opened from a link.
    if (p.has('from') && p.has('to') && NS.env.recorder) {
      if (p.get('workload')) recWorkload.value = p.get('workload');
      await rangeProfile(Number(p.get('from')), Number(p.get('to')));
    } else if (['pid', 'container', 'cgroup'].some((k) => p.has(k)) || p.get('all') === 'true' || p.has('self')) {
      await profileLive();
    }
  };
})();
