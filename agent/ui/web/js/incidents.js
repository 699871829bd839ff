/* nodescope web UI: the Incidents page (list, trigger, download, reader). */
(function () {
  'use strict';
  const NS = window.NS;
  const h = NS.h;
  const F = NS.fmt;

  const enc = encodeURIComponent;

  NS.pages.incidents = async function (main, route) {
    if (!NS.env.recorder) {
      main.append(h('h1', { text: 'Incidents' }), NS.section('Flight recorder', h('p', { class: 'muted', text: 'The flight recorder is not running on this agent ([recorder] enabled = false, or not built in): incidents need it.' })));
      return;
    }
    const id = route.rest[0];
    if (id) return reader(main, id);

    const before = h('input', { type: 'text', value: '10m', size: 6, 'aria-label': 'Window before the trigger' });
    const after = h('input', { type: 'text', value: '30s', size: 6, 'aria-label': 'Window after the trigger' });
    const reason = h('input', { type: 'text', placeholder: 'what you saw (optional)', size: 40, 'aria-label': 'Reason' });
    const go = h('button', { type: 'submit', class: 'primary', text: 'Record an incident' });
    const msg = h('p', { class: 'muted', role: 'status' });
    const form = h('form', { class: 'toolbar', id: 'incident-form' }, NS.field('Before', before), NS.field('After', after), NS.field('Reason', reason), go);
    const listBox = h('div', { id: 'incident-list' });
    main.append(h('h1', { text: 'Incidents' }), NS.section('Trigger', form, msg), NS.section('Bundles', listBox));

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      go.disabled = true;
      try {
        const body = { before: before.value.trim(), after: after.value.trim() };
        if (reason.value.trim()) body.reason = reason.value.trim();
        const r = await NS.api.post('/api/v1/incidents', body);
        msg.textContent = 'Incident ' + r.id + ' is recording; the bundle is ready at about ' + F.time(r.ready_at) + '.';
        refresh();
      } catch (err) {
        msg.textContent = err.status === 429 ? 'Cooldown: ' + err.message : 'Trigger failed: ' + err.message;
      } finally {
        go.disabled = false;
      }
    });

    let table = null;
    async function refresh() {
      try {
        const d = await NS.api.json('/api/v1/incidents');
        const rows = (d.incidents || []).map((i) => ({
          id: i.id,
          time: i.time,
          trigger: [i.trigger && i.trigger.kind, i.trigger && i.trigger.name].filter(Boolean).join(': ') + (i.trigger && i.trigger.reason ? ' — ' + i.trigger.reason : ''),
          state: i.state,
          top: i.top_finding || (i.error ? 'error: ' + i.error : ''),
          bytes: i.bytes,
          file: i.file,
        }));
        const cols = [
          { key: 'time', label: 'Time', fmt: (v) => F.datetime(v) },
          { key: 'trigger', label: 'Trigger' },
          { key: 'state', label: 'State', fmt: (v) => h('span', { class: 'state state-' + (v === 'ready' ? 'ok' : v === 'failed' ? 'failed' : 'starting'), text: v }) },
          { key: 'top', label: 'Top finding' },
          { key: 'bytes', label: 'Size', num: true, fmt: (v) => (v ? F.bytes(v) : '–') },
          { key: 'id', label: 'Open', fmt: (v, r) => (r.state === 'ready' ? h('span', { class: 'links' }, h('a', { href: '#/incidents/' + enc(v), text: 'Read' }), ' · ', h('a', { href: '/api/v1/incidents/' + enc(v), download: r.file || v + '.tar.gz', text: 'Download' })) : '–') },
        ];
        if (!table) {
          table = NS.table(cols, rows, { sort: 'time', dir: 'desc', empty: 'No incident recorded yet.' });
          NS.clear(listBox).appendChild(table);
        } else table.setRows(rows);
      } catch (e) {
        NS.clear(listBox).appendChild(NS.errorBox(e));
        table = null;
      }
    }
    await refresh();
    NS.every(refresh, NS.env.refresh_seconds * 1000);
  };

  async function reader(main, id) {
    const back = h('p', null, h('a', { href: '#/incidents', text: '← All incidents' }), ' · ', h('a', { href: '/api/v1/incidents/' + enc(id), download: '', text: 'Download the bundle' }));
    const box = h('div', { id: 'incident-reader' }, h('p', { class: 'muted', text: 'Loading…' }));
    main.append(back, box);
    try {
      const data = await NS.api.json('/api/v1/incidents/' + enc(id) + '/files/data.json');
      NS.renderIncident(box, data, { files: (f) => '/api/v1/incidents/' + enc(id) + '/files/' + enc(f) });
    } catch (e) {
      NS.clear(box).appendChild(NS.errorBox(e));
    }
  }
})();
