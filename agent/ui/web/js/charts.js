/* nodescope web UI: time series (uPlot) with synced cursors and event markers, and
 * heatmaps (uPlot axes, scales, cursor and selection; cells drawn in a draw hook). */
(function () {
  'use strict';
  const NS = window.NS;
  const h = NS.h;

  // Colour-blind-safe palette (Okabe-Ito), dark enough on white.
  const PALETTE = ['#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#000000', '#999933'];
  const SEVERITY = { error: '#C62828', fatal: '#C62828', warn: '#E65100', warning: '#E65100', info: '#1565C0' };

  function axisValues(unit) {
    return (u, vals) => vals.map((v) => {
      if (v === null) return '';
      switch (unit) {
        case 'ratio': return (v * 100).toFixed(Math.abs(v) < 0.1 && v !== 0 ? 1 : 0) + '%';
        case 'bytes': return NS.fmt.bytes(v);
        case 'bytes_per_second': return NS.fmt.bytes(v) + '/s';
        case 'per_second': return NS.fmt.num(v, 1) + '/s';
        case 'seconds': return NS.fmt.seconds(v);
        default: return NS.fmt.num(v, 2);
      }
    });
  }

  function width(host) {
    return Math.max(300, (host.clientWidth || 600) - 2);
  }

  // Redraws charts when their container changes width.
  function follow(host, u, height, own) {
    if (!window.ResizeObserver) return;
    let w = 0;
    const ro = new ResizeObserver(() => {
      const nw = width(host);
      if (Math.abs(nw - w) > 2) { w = nw; u.setSize({ width: nw, height: height }); }
    });
    ro.observe(host);
    own(() => ro.disconnect());
  }

  /* A timeline: data = {timestamps, series: [{name, unit, values}]} as served by
   * /api/v1/recorder/timeline. events: [{time, kind, severity, body}] drawn as markers.
   * opts: {title, sync (cursor sync key), height, onSelect(from, to)} */
  NS.timeline = function (host, data, events, opts) {
    opts = opts || {};
    const unit = (data.series[0] && data.series[0].unit) || '';
    const series = [{}].concat(data.series.map((s, i) => ({
      label: s.name,
      stroke: PALETTE[i % PALETTE.length],
      width: 1.5,
      value: (u, v) => NS.fmt.unit(v, s.unit),
      spanGaps: false,
    })));
    const within = (d, evs) => (evs || []).filter((e) => e.time >= (d.timestamps[0] || 0) && e.time <= (d.timestamps[d.timestamps.length - 1] || 0));
    let marks = within(data, events);
    const height = opts.height || 170;
    const u = new uPlot({
      title: opts.title,
      width: width(host),
      height: height,
      cursor: { sync: opts.sync ? { key: opts.sync, setSeries: false } : undefined, drag: { x: !!opts.onSelect, y: false, setScale: false } },
      scales: { x: { time: true }, y: unit === 'ratio' ? { range: (u, min, max) => [0, Math.max(max || 0, 0.05)] } : { range: (u, min, max) => [Math.min(0, min || 0), max > 0 ? max * 1.05 : 1] } },
      axes: [{ stroke: '#333', grid: { stroke: '#eee' } }, { stroke: '#333', grid: { stroke: '#eee' }, values: axisValues(unit), size: 86 }],
      series: series,
      hooks: {
        draw: [(u) => {
          if (!marks.length) return;
          const ctx = u.ctx;
          ctx.save();
          const top = u.bbox.top;
          const bottom = u.bbox.top + u.bbox.height;
          for (const e of marks) {
            const x = Math.round(u.valToPos(e.time, 'x', true));
            ctx.strokeStyle = SEVERITY[e.severity] || '#6A1B9A';
            ctx.lineWidth = e.kind === 'incident' ? 3 : 1.5;
            ctx.setLineDash(e.kind === 'incident' ? [] : [4, 3]);
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, bottom);
            ctx.stroke();
          }
          ctx.restore();
        }],
        setSelect: [(u) => {
          if (!opts.onSelect || u.select.width < 2) return;
          const from = u.posToVal(u.select.left, 'x');
          const to = u.posToVal(u.select.left + u.select.width, 'x');
          opts.onSelect(from, to);
        }],
      },
    }, [data.timestamps].concat(data.series.map((s) => s.values)), host);
    host.classList.add('chart');
    host.dataset.points = String(data.timestamps.length);
    host.dataset.markers = String(marks.length);
    // New data for the same series (auto-refresh): keeps the chart, its cursor and sync.
    u.nsSignature = data.series.map((s) => s.name + '/' + s.unit).join(',');
    u.nsUpdate = function (d, evs) {
      marks = within(d, evs);
      u.setData([d.timestamps].concat(d.series.map((s) => s.values)));
      host.dataset.points = String(d.timestamps.length);
      host.dataset.markers = String(marks.length);
    };
    const own = opts.scope ? opts.scope.add : NS.onLeave;
    follow(host, u, height, own);
    own(() => u.destroy());
    return u;
  };

  function heatColour(t) {
    // white → yellow → orange → dark red (sequential, monotonic lightness)
    const stops = [[255, 255, 255], [255, 237, 160], [254, 178, 76], [240, 59, 32], [128, 0, 38]];
    if (t <= 0) return null;
    const x = Math.min(1, t) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(x));
    const f = x - i;
    const c = stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * f));
    return 'rgb(' + c[0] + ',' + c[1] + ',' + c[2] + ')';
  }

  /* A heatmap. xs: column start times (Unix s); step: column width (s); rows: count of
   * rows; counts[col][row]; rowLabel(i) for the y axis (row 0 at the bottom).
   * opts: {title, height, yLabel, onSelect({col0,row0,col1,row1}), describe(col,row,count)} */
  NS.heatmap = function (host, xs, step, rows, counts, opts) {
    opts = opts || {};
    let max = 0;
    for (const col of counts) for (const v of col) if (v > max) max = v;
    const height = opts.height || 260;
    let down = null;
    const last = xs.length ? xs[xs.length - 1] + step : 1;
    const u = new uPlot({
      title: opts.title,
      width: width(host),
      height: height,
      legend: { show: false },
      cursor: { drag: { x: true, y: true, setScale: false }, points: { show: false } },
      scales: { x: { time: opts.time !== false, range: () => [xs.length ? xs[0] : 0, last] }, y: { auto: false, range: [0, rows] } },
      axes: [
        { stroke: '#333', grid: { show: false } },
        { stroke: '#333', grid: { show: false }, size: 70, label: opts.yLabel, splits: () => { const s = []; const every = Math.max(1, Math.ceil(rows / 8)); for (let i = 0; i < rows; i += every) s.push(i + 0.5); return s; }, values: (u, vals) => vals.map((v) => (opts.rowLabel ? opts.rowLabel(Math.floor(v)) : String(Math.floor(v)))) },
      ],
      series: [{}, { label: 'cells', stroke: 'transparent', points: { show: false } }],
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx;
          ctx.save();
          ctx.beginPath();
          ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
          ctx.clip();
          for (let c = 0; c < xs.length; c++) {
            const x0 = u.valToPos(xs[c], 'x', true);
            const x1 = u.valToPos(xs[c] + step, 'x', true);
            const col = counts[c] || [];
            for (let r = 0; r < rows; r++) {
              const v = col[r] || 0;
              if (!v) continue;
              const y0 = u.valToPos(r + 1, 'y', true);
              const y1 = u.valToPos(r, 'y', true);
              ctx.fillStyle = heatColour(Math.sqrt(v / max) * 0.9 + 0.1);
              ctx.fillRect(x0, y0, Math.max(1, x1 - x0 - 0.5), Math.max(1, y1 - y0 - 0.5));
            }
          }
          ctx.restore();
        }],
        setCursor: [(u) => {
          if (!opts.describe || u.cursor.left < 0) return;
          const cell = at(u, u.cursor.left, u.cursor.top);
          if (cell) opts.describe(cell.col, cell.row, (counts[cell.col] || [])[cell.row] || 0);
        }],
        setSelect: [(u) => {
          if (!opts.onSelect || (u.select.width < 1 && u.select.height < 1)) return;
          const a = down || { left: u.select.left, top: u.select.top };
          const bLeft = a.left <= u.select.left + 0.5 ? u.select.left + u.select.width : u.select.left;
          const bTop = a.top <= u.select.top + 0.5 ? u.select.top + u.select.height : u.select.top;
          const c0 = at(u, a.left, a.top);
          const c1 = at(u, bLeft - 0.01, bTop - 0.01);
          if (c0 && c1) opts.onSelect(order(c0, c1));
        }],
      },
    }, [xs.length ? xs : [0], xs.length ? xs.map(() => null) : [null]], host);
    function at(u, left, top) {
      const t = u.posToVal(left, 'x');
      const r = Math.floor(u.posToVal(top, 'y'));
      const col = Math.floor((t - (xs[0] || 0)) / step);
      if (col < 0 || col >= xs.length || r < 0 || r >= rows) return null;
      return { col: col, row: r };
    }
    // Reading order: by column, then by row from the top (FlameScope's selection).
    function order(a, b) {
      const ka = a.col * rows + (rows - 1 - a.row);
      const kb = b.col * rows + (rows - 1 - b.row);
      return ka <= kb ? { col0: a.col, row0: a.row, col1: b.col, row1: b.row } : { col0: b.col, row0: b.row, col1: a.col, row1: a.row };
    }
    u.over.addEventListener('mousedown', (e) => {
      const b = u.over.getBoundingClientRect();
      down = { left: e.clientX - b.left, top: e.clientY - b.top };
    });
    // Keyboard: a cell cursor moved with the arrows, Enter selects it alone.
    host.tabIndex = 0;
    host.setAttribute('role', 'application');
    host.setAttribute('aria-label', (opts.title || 'Heatmap') + '. Arrow keys move between cells, Enter selects one.');
    let kc = null;
    host.addEventListener('keydown', (e) => {
      if (!xs.length) return;
      if (!kc) kc = { col: xs.length - 1, row: rows - 1 };
      const mv = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] }[e.key];
      if (mv) {
        e.preventDefault();
        kc.col = Math.max(0, Math.min(xs.length - 1, kc.col + mv[0]));
        kc.row = Math.max(0, Math.min(rows - 1, kc.row + mv[1]));
        const left = (u.valToPos(xs[kc.col], 'x') + u.valToPos(xs[kc.col] + step, 'x')) / 2;
        const top = (u.valToPos(kc.row, 'y') + u.valToPos(kc.row + 1, 'y')) / 2;
        u.setCursor({ left: left, top: top });
        if (opts.describe) opts.describe(kc.col, kc.row, (counts[kc.col] || [])[kc.row] || 0);
      } else if (e.key === 'Enter' && opts.onSelect) {
        e.preventDefault();
        opts.onSelect({ col0: kc.col, row0: kc.row, col1: kc.col, row1: kc.row });
      }
    });
    host.classList.add('chart', 'heatmap');
    host.dataset.cells = String(counts.reduce((n, c) => n + c.filter((v) => v > 0).length, 0));
    const own = opts.scope ? opts.scope.add : NS.onLeave;
    follow(host, u, height, own);
    own(() => u.destroy());
    return u;
  };

  // A legend of colour stops for heatmaps.
  NS.heatLegend = function (label) {
    const bar = h('span', { class: 'heat-legend' });
    for (let i = 1; i <= 10; i++) {
      const s = h('span', { class: 'heat-stop' });
      s.style.background = heatColour(i / 10);
      bar.appendChild(s);
    }
    return h('span', { class: 'muted small' }, 'fewer ', bar, ' more ' + (label || ''));
  };
})();
