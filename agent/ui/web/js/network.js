/* nodescope web UI: the Network page (workload → peer table, sortable and filterable; a
 * latency heatmap over time for the selected row, from the flight recorder). */
(function () {
  'use strict';
  const NS = window.NS;
  const h = NS.h;
  const F = NS.fmt;

  // /api/v1/network/connections (live, since the probe started) → table rows.
  function liveRows(doc) {
    const seen = new Map();
    for (const p of [].concat(doc.by_connect_p99 || [], doc.by_rtt_p99 || [])) {
      const key = p.workload + '→' + p.peer_address + ':' + p.peer_port + '/' + p.direction;
      if (seen.has(key)) continue;
      seen.set(key, {
        key: key,
        workload: p.workload + (p.pod ? ' (' + p.namespace + '/' + p.pod + ')' : ''),
        peer: p.peer_address,
        port: p.peer_port,
        direction: p.direction,
        connects: p.connects,
        errors: p.connect_errors,
        connect_mean: p.connect_mean_seconds,
        connect_p99: p.connect_p99_seconds,
        rtt_mean: p.rtt_mean_seconds,
        rtt_p99: p.rtt_p99_seconds,
        retransmits: p.retransmits,
        active: p.active,
      });
    }
    return Array.from(seen.values());
  }
  function liveColumns() {
    const s = (v) => F.seconds(v);
    return [
      { key: 'workload', label: 'Workload' },
      { key: 'peer', label: 'Peer' },
      { key: 'port', label: 'Port' },
      { key: 'direction', label: 'Dir.' },
      { key: 'connects', label: 'Connects', num: true, fmt: (v) => F.num(v, 0) },
      { key: 'errors', label: 'Errors', num: true, fmt: (v) => F.num(v, 0) },
      { key: 'connect_mean', label: 'Connect mean', num: true, fmt: s },
      { key: 'connect_p99', label: 'Connect p99', num: true, fmt: s },
      { key: 'rtt_mean', label: 'RTT mean', num: true, fmt: s },
      { key: 'rtt_p99', label: 'RTT p99', num: true, fmt: s },
      { key: 'retransmits', label: 'Retrans.', num: true, fmt: (v) => F.num(v, 0) },
      { key: 'active', label: 'Active', num: true, fmt: (v) => F.num(v, 0) },
    ];
  }

  NS.pages.network = async function (main, route) {
    const p = route.params;
    const state = { filter: p.get('filter') || '', sort: p.get('sort') || 'connect_p99', dir: p.get('dir') || 'desc', row: p.get('row') || '', hist: p.get('hist') || 'connect', range: p.get('range') || '900' };
    const save = () => NS.setParams(state);
    const filter = h('input', { type: 'search', placeholder: 'Filter by workload, peer, port…', 'aria-label': 'Filter peers', value: state.filter });
    const rangeSel = NS.select([['300', 'Last 5 min'], ['900', 'Last 15 min'], ['3600', 'Last hour'], ['7200', 'Last 2 hours']], state.range);
    const histSel = NS.select([['connect', 'Connect latency'], ['rtt', 'RTT']], state.hist);
    const note = h('p', { class: 'muted' });
    const tableBox = h('div', { id: 'network-table' });
    const heatBox = h('div', { class: 'chart-box', id: 'network-heatmap' });
    const heatNote = h('p', { class: 'muted', text: 'Select a row to see its latency over time.' });
    main.append(
      h('h1', { text: 'Network' }),
      NS.section('Workload → peer', h('div', { class: 'toolbar' }, filter, NS.field('Range', rangeSel), note), tableBox),
      NS.section('Latency heatmap of the selected row', h('div', { class: 'toolbar' }, NS.field('Histogram', histSel), NS.heatLegend('connections')), heatNote, heatBox),
    );
    let table = null;
    let doc = null;
    let rows = [];
    const heatScope = NS.scope();

    function drawHeat() {
      heatScope.clear();
      NS.clear(heatBox);
      const r = rows.find((x) => x.key === state.row);
      if (!r) return;
      if (!doc || !r.raw) {
        heatNote.textContent = 'Latency over time needs the flight recorder ([recorder]); the live table above covers the time since the probe started.';
        return;
      }
      heatNote.textContent = r.workload + ' → ' + r.peer + ':' + r.port + ' (' + r.direction + ')';
      NS.latencyHeatmap(heatBox, doc, r.raw, state.hist, heatScope);
    }

    async function refresh() {
      try {
        if (NS.env.recorder) {
          doc = await NS.api.json('/api/v1/recorder/network' + NS.api.query({ from: -Number(state.range), limit: 500 }));
          rows = NS.networkRows(doc);
          note.textContent = rows.length + ' peers, ' + (doc.step_seconds || 10) + ' s steps, from the flight recorder';
        } else {
          doc = null;
          rows = liveRows(await NS.api.json('/api/v1/network/connections?limit=500'));
          note.textContent = rows.length + ' peers since the network probe started (the flight recorder adds errors by reason, p50, resets and the heatmap)';
        }
        if (!table) {
          table = NS.table(NS.env.recorder ? NS.networkColumns() : liveColumns(), rows, {
            sort: state.sort, dir: state.dir, filter: state.filter, selected: state.row, key: (r) => r.key,
            onSort: (k, d) => { state.sort = k; state.dir = d; save(); },
            onSelect: (r) => { state.row = r.key; save(); drawHeat(); },
            empty: 'No connection seen yet.',
          });
          NS.clear(tableBox).appendChild(table);
        } else {
          table.setRows(rows);
        }
        if (state.row && doc) drawHeat();
      } catch (e) {
        NS.clear(tableBox).appendChild(NS.errorBox(e));
        table = null;
      }
    }
    filter.addEventListener('input', () => { state.filter = filter.value; save(); if (table) table.setFilter(filter.value); });
    rangeSel.addEventListener('change', () => { state.range = rangeSel.value; save(); refresh(); });
    histSel.addEventListener('change', () => { state.hist = histSel.value; save(); drawHeat(); });
    await refresh();
    if (state.row) drawHeat();
    NS.every(refresh, Math.max(NS.env.refresh_seconds, 10) * 1000);
  };
})();
