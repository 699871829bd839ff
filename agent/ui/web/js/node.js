/* nodescope web UI: the Node page (status of every component; the flight recorder's
 * timelines with synced cursors and event markers; recent events). */
(function () {
  'use strict';
  const NS = window.NS;
  const h = NS.h;
  const F = NS.fmt;

  const RANGES = [['300', 'Last 5 min'], ['900', 'Last 15 min'], ['3600', 'Last hour'], ['7200', 'Last 2 hours']];
  const MARKER_KINDS = 'kernel_oom_kill,kernel_hung_task,kernel_segfault,kernel_link_down,kernel_link_up,tcp_reset_sent,tcp_reset_received,tcp_connect_failed,incident';

  function statusRows(st) {
    return (st.components || []).map((c) => ({
      name: c.name,
      kind: c.kind,
      state: c.state,
      reason: c.last_error || '',
      last: c.last_success,
      dropped: c.dropped,
      details: Object.entries(c.details || {}).map(([k, v]) => k + ': ' + v).join('\n'),
    }));
  }

  function statusTable(rows) {
    return NS.table([
      { key: 'name', label: 'Component' },
      { key: 'kind', label: 'Kind' },
      { key: 'state', label: 'State', fmt: (v) => h('span', { class: 'state state-' + v, text: v }) },
      { key: 'reason', label: 'Reason / last error', fmt: (v) => h('span', { class: 'reason', text: v || '—' }) },
      { key: 'last', label: 'Last success', fmt: (v) => (v ? F.time(v) : '–') },
      { key: 'dropped', label: 'Dropped', num: true, fmt: (v) => F.num(v, 0) },
      { key: 'details', label: 'Details', fmt: (v) => h('span', { class: 'details', text: v }) },
    ], rows, { sort: 'kind', dir: 'asc', filter: '' });
  }

  NS.pages.node = async function (main, route) {
    const range = route.params.get('range') || '900';
    const rangeSel = NS.select(RANGES, range);
    const filter = h('input', { type: 'search', placeholder: 'Filter components', 'aria-label': 'Filter components' });
    const summary = h('p', { class: 'muted' });
    const statusBox = h('div');
    const charts = h('div', { class: 'grid2', id: 'node-timelines' });
    const evBox = h('div');
    const recNote = h('p', { class: 'muted' });
    main.append(
      h('h1', { text: 'Node' + (NS.env.node ? ': ' + NS.env.node : '') }),
      NS.section('Status of every collector, probe, exporter and server', h('div', { class: 'toolbar' }, filter, summary), statusBox),
      NS.section('Timelines (flight recorder)', h('div', { class: 'toolbar' }, NS.field('Range', rangeSel), recNote), charts),
      NS.section('Events (flight recorder)', evBox),
    );
    let table = null;
    const chartScope = NS.scope();
    let plots = [];
    let shown = '';
    filter.addEventListener('input', () => table && table.setFilter(filter.value));
    rangeSel.addEventListener('change', () => { NS.setParams({ range: rangeSel.value }); refreshTimelines(); });

    async function refreshStatus() {
      try {
        const st = await NS.api.json('/api/v1/status');
        const bad = (st.components || []).filter((c) => !['ok', 'disabled', 'starting'].includes(c.state));
        summary.textContent = (st.components || []).length + ' components, ' + (bad.length ? bad.length + ' not ok' : 'all ok') + ' · agent ' + st.version + ', up ' + F.seconds(st.uptime_seconds) + ' · refreshed ' + F.time(st.time);
        if (!table) {
          table = statusTable(statusRows(st));
          table.id = 'status-table';
          NS.clear(statusBox).appendChild(table);
        } else {
          table.setRows(statusRows(st));
        }
      } catch (e) {
        NS.clear(statusBox).appendChild(NS.errorBox(e));
      }
    }

    async function refreshTimelines() {
      if (!NS.env.recorder) {
        recNote.textContent = 'The flight recorder is not running on this agent ([recorder] enabled = false, or not built in): no timelines or events.';
        return;
      }
      const from = -Number(rangeSel.value);
      try {
        const [events, ...groups] = await Promise.all([
          NS.api.json('/api/v1/recorder/events' + NS.api.query({ from: from, limit: 2000 })),
        ].concat(NS.GROUPS.map(([g]) => NS.api.json('/api/v1/recorder/timeline' + NS.api.query({ group: g, from: from })))));
        const markers = (events.events || []).filter((e) => MARKER_KINDS.split(',').includes(e.kind));
        const sig = groups.map((d) => d.series.map((x) => x.name + '/' + x.unit).join(',') + ':' + d.step_seconds + ':' + (d.timestamps.length > 0)).join('|');
        if (sig === shown && plots.length === groups.length) {
          groups.forEach((d, i) => plots[i].nsUpdate(d, markers));
        } else {
          chartScope.clear();
          NS.clear(charts);
          plots = [];
          shown = sig;
          groups.forEach((d, i) => {
            const box = h('div', { class: 'chart-box', 'data-group': NS.GROUPS[i][0] });
            charts.appendChild(box);
            if (d.timestamps && d.timestamps.length) plots.push(NS.timeline(box, d, markers, { title: NS.GROUPS[i][1] + ' (' + d.step_seconds + ' s steps)', sync: 'node', scope: chartScope }));
            else box.appendChild(h('p', { class: 'muted', text: NS.GROUPS[i][1] + ': nothing recorded yet.' }));
          });
        }
        recNote.textContent = markers.length + ' event markers (OOM kills, resets, failed connects, link changes, incidents)' + (events.dropped ? '; ' + events.dropped + ' events dropped by the recorder' : '');
        NS.clear(evBox).appendChild(NS.eventsTable((events.events || []).slice(-500)));
      } catch (e) {
        chartScope.clear();
        plots = [];
        shown = '';
        NS.clear(charts).appendChild(NS.errorBox(e));
      }
    }

    await Promise.all([refreshStatus(), refreshTimelines()]);
    NS.every(refreshStatus, NS.env.refresh_seconds * 1000);
    NS.every(refreshTimelines, Math.max(NS.env.refresh_seconds, 10) * 1000);
  };
})();
