/* nodescope web UI: the incident reader (a bundle's data document: summary, findings,
 * timelines, events, network, profiles), shared by the Incidents page and the offline
 * index.html of a bundle. Also the sub-second heatmap model used by the Profiles page. */
(function () {
  'use strict';
  const NS = window.NS;
  const h = NS.h;
  const F = NS.fmt;

  NS.GROUPS = [
    ['cpu', 'CPU'],
    ['memory', 'Memory'],
    ['psi', 'Pressure (PSI)'],
    ['disk', 'Disk'],
    ['network', 'Network'],
    ['load', 'Load'],
  ];

  /* Sub-second heatmap (FlameScope): one column per second, `rows` cells per second,
   * row 0 at the bottom = the end of the second (read top to bottom, left to right). */
  NS.subsecond = function (samples, rows) {
    rows = rows || 50;
    const bucket = 1000 / rows;
    const start = Math.floor(samples.start || 0);
    const lead = ((samples.start || 0) - start) * 1000;
    const offs = samples.offsets_ms || [];
    const last = offs.length ? offs[offs.length - 1] + lead : 0;
    const ncol = Math.min(600, Math.floor(last / 1000) + 1);
    const counts = [];
    for (let c = 0; c < ncol; c++) counts.push(new Array(rows).fill(0));
    for (const o of offs) {
      const ms = o + lead;
      const col = Math.floor(ms / 1000);
      if (col < 0 || col >= ncol) continue;
      const r = rows - 1 - Math.min(rows - 1, Math.floor((ms - col * 1000) / bucket));
      counts[col][r]++;
    }
    const xs = counts.map((_, c) => start + c);
    return {
      xs: xs,
      rows: rows,
      counts: counts,
      // Time range [from, to) of a selection in reading order.
      range: (s) => ({ from: start + s.col0 + ((rows - 1 - s.row0) * bucket) / 1000, to: start + s.col1 + ((rows - s.row1) * bucket) / 1000 }),
      rowLabel: (r) => Math.round((rows - 1 - r) * bucket) + ' ms',
      bucket: bucket,
    };
  };

  function kv(obj) {
    const dl = h('dl', { class: 'kv' });
    for (const [k, v] of Object.entries(obj)) {
      if (v === null || v === undefined || v === '') continue;
      dl.append(h('dt', { text: k }), h('dd', { text: typeof v === 'object' ? JSON.stringify(v) : String(v) }));
    }
    return dl;
  }

  function findingsTable(list) {
    const rows = (list || []).map((f) => ({
      rank: f.rank,
      score: f.score,
      kind: f.kind,
      title: f.title,
      subject: f.subject ? Object.entries(f.subject).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => k + '=' + v).join(', ') : '',
      incident: f.incident_value,
      baseline: f.baseline_value,
      unit: f.unit,
      evidence: (f.evidence || []).join('\n'),
    }));
    const val = (v, r) => F.unit(v, r.unit);
    return NS.table([
      { key: 'rank', label: '#', num: true },
      { key: 'kind', label: 'Kind' },
      { key: 'title', label: 'Finding' },
      { key: 'subject', label: 'Subject' },
      { key: 'incident', label: 'Incident', num: true, fmt: val },
      { key: 'baseline', label: 'Baseline', num: true, fmt: val },
      { key: 'evidence', label: 'Evidence', fmt: (v) => h('ul', { class: 'evidence' }, (v ? v.split('\n') : []).map((e) => h('li', { text: e }))) },
    ], rows, { sort: 'rank', dir: 'asc', empty: 'No finding: nothing deviated from the baseline.' });
  }

  NS.eventsTable = function (events) {
    const rows = (events || []).map((e) => ({
      time: e.time,
      kind: e.kind,
      severity: e.severity,
      body: e.body,
      labels: e.labels ? Object.entries(e.labels).map(([k, v]) => k + '=' + v).join(' ') : '',
    }));
    return NS.table([
      { key: 'time', label: 'Time', fmt: (v) => F.datetime(v) },
      { key: 'kind', label: 'Kind' },
      { key: 'severity', label: 'Severity', fmt: (v) => h('span', { class: 'sev sev-' + (v || 'info'), text: v || '' }) },
      { key: 'body', label: 'Message' },
      { key: 'labels', label: 'Labels' },
    ], rows, { sort: 'time', dir: 'desc', empty: 'No event in this window.' });
  };

  // Rows of /api/v1/recorder/network (or network.json) → one summary row per peer.
  NS.networkRows = function (doc) {
    const out = [];
    const sum = (a) => (a || []).reduce((s, v) => s + (v || 0), 0);
    const lastNum = (a) => { for (let i = (a || []).length - 1; i >= 0; i--) if (a[i] !== null && a[i] !== undefined) return a[i]; return null; };
    const maxNum = (a) => { let m = null; for (const v of a || []) if (v !== null && v !== undefined && (m === null || v > m)) m = v; return m; };
    for (const r of (doc && doc.rows) || []) {
      const errors = {};
      let errTotal = 0;
      for (const [k, v] of Object.entries(r.errors || {})) { errors[k] = sum(v); errTotal += errors[k]; }
      out.push({
        key: r.workload + '→' + r.peer + ':' + r.peer_port + '/' + r.direction,
        workload: r.workload,
        peer: r.peer,
        port: r.peer_port,
        direction: r.direction,
        connects: sum(r.connects),
        errors: errTotal,
        errors_by: Object.entries(errors).filter(([, v]) => v > 0).map(([k, v]) => k + ' ' + v).join(', '),
        connect_p50: lastNum(r.connect_p50),
        connect_p99: maxNum(r.connect_p99),
        rtt_p50: lastNum(r.rtt_p50),
        rtt_p99: maxNum(r.rtt_p99),
        retransmits: sum(r.retransmits),
        resets: sum(r.resets),
        raw: r,
      });
    }
    return out;
  };

  NS.networkColumns = function () {
    const s = (v) => F.seconds(v);
    return [
      { key: 'workload', label: 'Workload' },
      { key: 'peer', label: 'Peer' },
      { key: 'port', label: 'Port' },
      { key: 'direction', label: 'Dir.' },
      { key: 'connects', label: 'Connects', num: true, fmt: (v) => F.num(v, 0) },
      { key: 'errors', label: 'Errors', num: true, fmt: (v, r) => (v ? F.num(v, 0) + (r.errors_by ? ' (' + r.errors_by + ')' : '') : '0') },
      { key: 'connect_p50', label: 'Connect p50', num: true, fmt: s },
      { key: 'connect_p99', label: 'Connect p99', num: true, fmt: s },
      { key: 'rtt_p50', label: 'RTT p50', num: true, fmt: s },
      { key: 'rtt_p99', label: 'RTT p99', num: true, fmt: s },
      { key: 'retransmits', label: 'Retrans.', num: true, fmt: (v) => F.num(v, 0) },
      { key: 'resets', label: 'Resets', num: true, fmt: (v) => F.num(v, 0) },
    ];
  };

  // Latency heatmap of one network row: hist arrays per timestamp over bucket bounds.
  NS.latencyHeatmap = function (host, doc, row, which, scope) {
    const hist = which === 'rtt' ? row.rtt_hist : row.connect_hist;
    const bounds = which === 'rtt' ? doc.rtt_buckets : doc.connect_buckets;
    const rows = (bounds || []).length;
    return NS.heatmap(host, doc.timestamps || [], doc.step_seconds || 10, rows, (hist || []).map((c) => c || []), {
      title: (which === 'rtt' ? 'RTT' : 'Connect latency') + ' — ' + row.workload + ' → ' + row.peer + ':' + row.peer_port,
      yLabel: 'latency ≤',
      scope: scope,
      rowLabel: (i) => (bounds[i] === null || bounds[i] === undefined || !Number.isFinite(bounds[i]) ? '+Inf' : F.seconds(bounds[i])),
    });
  };

  /* Renders an incident data document into `host`. opts.files: {name: url} links to the
   * bundle's members (the Incidents page); offline, the members sit next to index.html. */
  NS.renderIncident = function (host, data, opts) {
    opts = opts || {};
    NS.clear(host);
    if (!data || typeof data !== 'object') {
      host.appendChild(NS.errorBox('This bundle has no readable data document.'));
      return;
    }
    const m = data.manifest || {};
    const trig = m.trigger || {};
    const title = 'Incident ' + (m.id || '') + (m.node ? ' on ' + m.node : '');
    host.appendChild(h('h1', { text: title }));
    const facts = {
      node: m.node,
      time: m.time !== undefined ? F.datetime(m.time) : undefined,
      trigger: [trig.kind, trig.name].filter(Boolean).join(': '),
      reason: trig.reason,
      window: m.window ? F.datetime(m.window.from) + ' → ' + F.datetime(m.window.to) : undefined,
      baseline: m.baseline ? F.datetime(m.baseline.from) + ' → ' + F.datetime(m.baseline.to) : undefined,
      kernel: m.kernel,
      version: m.version,
    };
    host.appendChild(NS.section('Overview', kv(facts)));
    host.appendChild(NS.section('Findings (ranked by deviation from the baseline)', findingsTable(data.findings)));
    host.appendChild(NS.section('Summary', h('pre', { class: 'summary', text: data.summary_md || 'No summary in this bundle.' })));

    // Timelines: the incident window (baseline on request), with the events as markers.
    const tl = h('div', { class: 'grid2' });
    const which = NS.select([['incident', 'Incident window'], ['baseline', 'Baseline window']], 'incident');
    const drawTimelines = () => {
      NS.clear(tl);
      const src = which.value === 'baseline' ? data.baseline_timelines : data.timelines;
      for (const [g, label] of NS.GROUPS) {
        const d = src && src[g];
        const box = h('div', { class: 'chart-box', 'data-group': g });
        tl.appendChild(box);
        if (d && d.timestamps && d.timestamps.length) NS.timeline(box, d, data.events, { title: label, sync: 'incident' });
        else box.appendChild(h('p', { class: 'muted', text: label + ': no data recorded.' }));
      }
    };
    which.addEventListener('change', drawTimelines);
    host.appendChild(NS.section('Timelines', h('div', { class: 'toolbar' }, NS.field('Window', which)), tl));

    // Profiles: incident, baseline, or the diff.
    const profiles = data.profiles || {};
    const fhost = h('div', { class: 'flame-host', id: 'incident-flame' });
    const mode = NS.select([['incident', 'Incident'], ['baseline', 'Baseline'], ['diff', 'Diff: incident vs baseline']], 'incident');
    mode.id = 'incident-profile-mode';
    const note = h('span', { class: 'muted' });
    const fg = new NS.FlameGraph(fhost, { label: 'Flame graph of the incident profile' });
    const drawFlame = () => {
      const inc = NS.parseFolded(profiles.incident || '');
      const base = NS.parseFolded(profiles.baseline || '');
      let root = inc.root;
      if (mode.value === 'baseline') root = base.root;
      if (mode.value === 'diff') NS.diffTrees(root, base.root);
      note.textContent = root.value ? '' : 'No CPU samples were recorded for this window.';
      fg.setData(root, { diff: mode.value === 'diff' });
    };
    mode.addEventListener('change', drawFlame);
    const dl = h('button', { type: 'button', text: 'Download folded', onclick: () => NS.download('cpu-' + mode.value.replace('diff', 'incident') + '.folded', profiles[mode.value === 'baseline' ? 'baseline' : 'incident'] || '', 'text/plain') });
    const dlSvg = h('button', { type: 'button', text: 'Download SVG', onclick: () => NS.download('cpu-' + mode.value + '.svg', fg.svg(title + ' — ' + mode.value), 'image/svg+xml') });
    host.appendChild(NS.section('CPU profile', h('div', { class: 'toolbar' }, NS.field('Profile', mode), dl, dlSvg, note), fhost));

    if (data.heatmap && data.heatmap.offsets_ms && data.heatmap.offsets_ms.length) {
      const hm = NS.subsecond(data.heatmap, 50);
      const box = h('div', { class: 'chart-box' });
      const info = h('span', { class: 'muted' });
      host.appendChild(NS.section('CPU samples per sub-second (incident window)', h('div', { class: 'toolbar' }, NS.heatLegend('samples'), info), box));
      NS.heatmap(box, hm.xs, 1, hm.rows, hm.counts, {
        title: 'Samples (' + F.num(data.heatmap.count, 0) + ' at ' + data.heatmap.hz + ' Hz)',
        yLabel: 'offset in second',
        rowLabel: hm.rowLabel,
        describe: (c, r, n) => (info.textContent = F.time(hm.xs[c]) + ' + ' + hm.rowLabel(r) + ': ' + n + ' samples'),
      });
    }

    const netRows = NS.networkRows(data.network);
    if (netRows.length) host.appendChild(NS.section('Network (peers that changed most)', NS.table(NS.networkColumns(), netRows, { sort: 'errors' })));
    else if (data.network && Object.keys(data.network).length) host.appendChild(NS.section('Network', h('pre', { class: 'summary', text: JSON.stringify(data.network, null, 2) })));
    host.appendChild(NS.section('Events', NS.eventsTable(data.events)));

    const files = ['summary.md', 'findings.json', 'events.ndjson', 'network.json', 'metrics.om', 'cpu-incident.pb.gz', 'cpu-baseline.pb.gz', 'cpu-incident.folded', 'cpu-baseline.folded', 'manifest.json', 'data.json'];
    if (opts.files) {
      host.appendChild(NS.section('Files of this bundle', h('ul', { class: 'files' }, files.map((f) => h('li', null, h('a', { href: opts.files(f), download: f, text: f }))))));
    }
    drawTimelines();
    drawFlame();
  };
})();
