/* nodescope web UI: shared helpers (DOM, formatting, API calls, hash routes).
 * Classic script (no modules) so the offline bundle page can inline it unchanged.
 * Never builds HTML from strings: every element is created with NS.h, text goes through
 * textContent, styles through element.style (the CSP forbids inline style attributes). */
(function () {
  'use strict';
  const NS = (window.NS = window.NS || {});
  NS.pages = NS.pages || {};

  /* ---------- DOM ---------- */
  // h('div', {class: 'x', text: 'hi', onclick: f, 'aria-label': 'y'}, child, [children], 'text')
  NS.h = function (tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected') el[k] = v;
        else if (k === 'style') throw new Error('NS.h: use element.style, not a style attribute');
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(el, children);
    return el;
  };
  function append(el, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else if (c instanceof Node) el.appendChild(c);
      else el.appendChild(document.createTextNode(String(c)));
    }
  }
  NS.clear = function (el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  };
  NS.main = () => document.getElementById('main');

  let toastTimer = null;
  NS.toast = function (msg, kind) {
    const t = document.getElementById('ns-toast');
    if (!t) return;
    t.textContent = msg;
    t.className = 'show ' + (kind || '');
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (t.className = ''), 6000);
  };

  /* ---------- formatting ---------- */
  const F = (NS.fmt = {});
  F.num = (v, d) => (v === null || v === undefined || Number.isNaN(v) ? '–' : Number(v).toLocaleString('en-US', { maximumFractionDigits: d === undefined ? 2 : d }));
  F.pct = (v, d) => (v === null || v === undefined ? '–' : (v * 100).toFixed(d === undefined ? 1 : d) + ' %');
  F.bytes = function (v) {
    if (v === null || v === undefined) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let x = Math.abs(v);
    while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
    return (v < 0 ? '-' : '') + (i === 0 ? x.toFixed(0) : x.toFixed(x < 10 ? 2 : 1)) + ' ' + u[i];
  };
  F.seconds = function (s) {
    if (s === null || s === undefined || Number.isNaN(s)) return '–';
    const a = Math.abs(s);
    if (a === 0) return '0';
    if (a < 1e-3) return (s * 1e6).toFixed(a < 1e-5 ? 2 : 0) + ' µs';
    if (a < 1) return (s * 1e3).toFixed(a < 1e-2 ? 2 : 1) + ' ms';
    if (a < 120) return s.toFixed(a < 10 ? 2 : 1) + ' s';
    if (a < 7200) return (s / 60).toFixed(1) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  };
  const pad = (n) => String(n).padStart(2, '0');
  F.time = function (t) {
    if (t === null || t === undefined) return '–';
    const d = new Date(t * 1000);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  };
  F.datetime = function (t) {
    if (t === null || t === undefined) return '–';
    const d = new Date(t * 1000);
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + F.time(t);
  };
  // A value in a timeline/table unit (the recorder's units: ratio, bytes, bytes_per_second,
  // per_second, load, seconds).
  F.unit = function (v, unit) {
    if (v === null || v === undefined) return '–';
    switch (unit) {
      case 'ratio': return F.pct(v);
      case 'bytes': return F.bytes(v);
      case 'bytes_per_second': return F.bytes(v) + '/s';
      case 'per_second': return F.num(v, 2) + '/s';
      case 'seconds': return F.seconds(v);
      default: return F.num(v, 2);
    }
  };

  /* ---------- API ---------- */
  // Error carrying the HTTP status and the agent's reason ({"error": "..."} or text).
  class ApiError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }
  NS.ApiError = ApiError;

  async function call(path, opts) {
    let r;
    try {
      r = await fetch(path, Object.assign({ credentials: 'same-origin', cache: 'no-store' }, opts || {}));
    } catch (e) {
      throw new ApiError(0, 'cannot reach the agent: ' + e.message);
    }
    if (!r.ok) {
      let msg = '';
      try {
        msg = await r.text();
        const j = JSON.parse(msg);
        if (j && j.error) msg = j.error;
      } catch (_) { /* plain text */ }
      const ra = r.headers.get('retry-after');
      throw new ApiError(r.status, (msg || r.statusText).trim() + ' (HTTP ' + r.status + ' ' + path.split('?')[0] + ')', ra ? Number(ra) : undefined);
    }
    return r;
  }
  NS.api = {
    json: async (path, opts) => (await call(path, opts)).json(),
    text: async (path, opts) => (await call(path, opts)).text(),
    bytes: async (path, opts) => {
      const r = await call(path, opts);
      return { bytes: new Uint8Array(await r.arrayBuffer()), headers: r.headers };
    },
    post: async (path, body) => (await call(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })).json(),
    query: function (params) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
      const s = q.toString();
      return s ? '?' + s : '';
    },
  };

  /* ---------- routes: #/page/rest?params ---------- */
  NS.route = function () {
    const h = location.hash.replace(/^#\/?/, '');
    const qi = h.indexOf('?');
    const path = qi < 0 ? h : h.slice(0, qi);
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    return { page: parts[0] || '', rest: parts.slice(1), params: new URLSearchParams(qi < 0 ? '' : h.slice(qi + 1)) };
  };
  // Rewrites the current URL's parameters without reloading the page (shareable links).
  NS.setParams = function (params) {
    const r = NS.route();
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const path = '#/' + [r.page].concat(r.rest).map(encodeURIComponent).join('/');
    const s = q.toString();
    history.replaceState(null, '', path + (s ? '?' + s : ''));
  };

  /* ---------- page lifetime: timers and cleanups end when the page changes ---------- */
  let cleanups = [];
  NS.onLeave = (f) => cleanups.push(f);
  NS.every = function (f, ms) {
    const id = setInterval(f, ms);
    cleanups.push(() => clearInterval(id));
    return id;
  };
  // A group of cleanups ended together (charts redrawn on refresh) or with the page.
  NS.scope = function () {
    const fns = [];
    const s = {
      add: (f) => fns.push(f),
      clear: () => {
        while (fns.length) {
          try { fns.pop()(); } catch (e) { console.warn('cleanup failed', e); }
        }
      },
    };
    NS.onLeave(s.clear);
    return s;
  };
  NS.leave = function () {
    const c = cleanups;
    cleanups = [];
    for (const f of c) {
      try { f(); } catch (e) { console.warn('cleanup failed', e); }
    }
  };

  /* ---------- shared widgets ---------- */
  // A sortable, filterable table. columns: [{key, label, fmt?, num?, title?}]
  NS.table = function (columns, rows, opts) {
    opts = opts || {};
    let sortKey = opts.sort || null;
    let sortDir = opts.dir === 'asc' ? 1 : -1;
    let filter = opts.filter || '';
    let selected = opts.selected || null;
    const tbody = NS.h('tbody');
    const heads = columns.map((c) => {
      const b = NS.h('button', { type: 'button', class: 'sort', text: c.label, title: c.title || ('Sort by ' + c.label) });
      b.addEventListener('click', () => {
        if (sortKey === c.key) sortDir = -sortDir;
        else { sortKey = c.key; sortDir = c.num ? -1 : 1; }
        draw();
        if (opts.onSort) opts.onSort(sortKey, sortDir > 0 ? 'asc' : 'desc');
      });
      return NS.h('th', { scope: 'col', class: c.num ? 'num' : '' }, b);
    });
    const table = NS.h('table', { class: 'data' + (opts.onSelect ? ' selectable' : '') }, NS.h('thead', null, NS.h('tr', null, heads)), tbody);
    function draw() {
      heads.forEach((th, i) => th.setAttribute('aria-sort', columns[i].key === sortKey ? (sortDir > 0 ? 'ascending' : 'descending') : 'none'));
      let list = rows;
      if (filter) {
        const f = filter.toLowerCase();
        list = list.filter((r) => columns.some((c) => String(r[c.key] === undefined || r[c.key] === null ? '' : r[c.key]).toLowerCase().includes(f)));
      }
      if (sortKey) {
        list = list.slice().sort((a, b) => {
          const x = a[sortKey];
          const y = b[sortKey];
          if (x === y) return 0;
          if (x === null || x === undefined) return 1;
          if (y === null || y === undefined) return -1;
          return (x < y ? -1 : 1) * sortDir;
        });
      }
      NS.clear(tbody);
      for (const r of list) {
        const tr = NS.h('tr', null, columns.map((c) => NS.h('td', { class: c.num ? 'num' : '' }, c.fmt ? c.fmt(r[c.key], r) : (r[c.key] === null || r[c.key] === undefined ? '–' : String(r[c.key])))));
        if (opts.onSelect) {
          tr.tabIndex = 0;
          if (selected && opts.key && opts.key(r) === selected) tr.classList.add('sel');
          const pick = () => {
            selected = opts.key ? opts.key(r) : null;
            for (const o of tbody.children) o.classList.remove('sel');
            tr.classList.add('sel');
            opts.onSelect(r);
          };
          tr.addEventListener('click', pick);
          tr.addEventListener('keydown', (e) => {
            if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); pick(); }
            else if (e.key === 'ArrowDown' && tr.nextElementSibling) { e.preventDefault(); tr.nextElementSibling.focus(); }
            else if (e.key === 'ArrowUp' && tr.previousElementSibling) { e.preventDefault(); tr.previousElementSibling.focus(); }
          });
        }
        tbody.appendChild(tr);
      }
      if (!list.length) tbody.appendChild(NS.h('tr', null, NS.h('td', { colspan: columns.length, class: 'muted', text: rows.length ? 'No row matches the filter.' : (opts.empty || 'No data yet.') })));
      table.dataset.rows = String(list.length);
    }
    table.setRows = (r) => { rows = r; draw(); };
    table.setFilter = (f) => { filter = f; draw(); };
    draw();
    return table;
  };

  // A labelled control row.
  NS.field = (label, control) => NS.h('label', { class: 'field' }, NS.h('span', { text: label }), control);
  NS.select = function (options, value) {
    const s = NS.h('select');
    for (const o of options) {
      const [v, t] = Array.isArray(o) ? o : [o, o];
      s.appendChild(NS.h('option', { value: v, text: t, selected: v === value }));
    }
    return s;
  };
  NS.section = (title, ...children) => NS.h('section', { class: 'card' }, NS.h('h2', { text: title }), children);
  NS.errorBox = (e) => NS.h('p', { class: 'error', role: 'alert', text: e && e.message ? e.message : String(e) });

  // Saves bytes as a file (blob URL on an <a download>; no request leaves the page).
  NS.download = function (name, data, type) {
    const blob = data instanceof Blob ? data : new Blob([data], { type: type || 'application/octet-stream' });
    const url = URL.createObjectURL(blob);
    const a = NS.h('a', { href: url, download: name });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  };

  // A Performance API mark (the benchmark reads them: docs/benchmarks.md).
  NS.mark = function (name) {
    if (window.performance && performance.mark) performance.mark(name);
  };

  // The pprof decoder (js/pprof.mjs, an ES module) registers itself here when loaded.
  NS.pprofReady = new Promise((resolve) => (NS._pprofLoaded = resolve));
})();
