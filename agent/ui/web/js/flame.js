/* nodescope web UI: interactive flame graph on a canvas.
 *
 * Why our own: d3-flame-graph (the maintained library with search, zoom, icicle and diff)
 * draws one SVG group per frame (1.5 s median for a 20,000-frame graph with its data inline
 * in headless Chromium here, scripts/bench-ui.sh, against a 1 s target for our whole page),
 * needs 14 d3 packages and injects an inline <style> our CSP refuses; flame-chart-js is a time-ordered flame *chart* (no merged stacks, no icicle or
 * search) and ships bare module imports that need a bundler. A canvas draws 20,000 frames
 * in a few milliseconds.
 *
 * Input: folded stacks ("root;...;leaf count" per line, root first). Frames are merged by
 * name along the stack (a flame graph, not a chart) and children are sorted by name, so two
 * profiles of the same program lay out alike (the diff view relies on it). */
(function () {
  'use strict';
  const NS = window.NS;
  const h = NS.h;

  function node(name, parent) {
    return { name: name, value: 0, self: 0, children: [], index: null, parent: parent, base: 0 };
  }

  // A tree built stack by stack: NS.tree() → add(frames root first, value) → done() → root.
  NS.tree = function () {
    const root = node('all', null);
    root.index = new Map();
    return {
      root: root,
      add: function (frames, value) {
        let cur = root;
        cur.value += value;
        for (let i = 0; i < frames.length; i++) {
          const name = frames[i];
          if (!cur.index) cur.index = new Map();
          let c = cur.index.get(name);
          if (!c) {
            c = node(name, cur);
            cur.index.set(name, c);
          }
          c.value += value;
          cur = c;
        }
        cur.self += value;
      },
      done: function () {
        finish(root);
        return root;
      },
    };
  };

  // Parses folded text into a tree. Returns {root, lines, skipped}.
  NS.parseFolded = function (text) {
    const t = NS.tree();
    let lines = 0;
    let skipped = 0;
    let start = 0;
    const n = text.length;
    while (start < n) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = n;
      const line = text.slice(start, end).replace(/\r$/, '');
      start = end + 1;
      if (!line.trim()) continue;
      const sp = line.lastIndexOf(' ');
      const count = sp > 0 ? Number(line.slice(sp + 1)) : NaN;
      if (!(count >= 0) || !Number.isFinite(count)) { skipped++; continue; }
      lines++;
      if (count === 0) continue;
      t.add(line.slice(0, sp).split(';'), count);
    }
    return { root: t.done(), lines: lines, skipped: skipped };
  };

  // Index maps → sorted child arrays; depth and node counts.
  function finish(root) {
    let count = 0;
    let maxDepth = 0;
    const stack = [[root, 0]];
    while (stack.length) {
      const [nd, d] = stack.pop();
      nd.depth = d;
      count++;
      if (d > maxDepth) maxDepth = d;
      if (nd.index) {
        nd.children = Array.from(nd.index.values()).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
        for (const c of nd.children) stack.push([c, d + 1]);
      }
    }
    root.count = count;
    root.maxDepth = maxDepth;
  }

  // Annotates `cur` with the baseline's values (scaled to cur's total) for the diff colours.
  NS.diffTrees = function (cur, base) {
    const scale = base.value > 0 ? cur.value / base.value : 0;
    (function walk(c, b) {
      c.base = b ? b.value * scale : 0;
      c.inBase = !!b;
      for (const ch of c.children) walk(ch, b && b.index ? b.index.get(ch.name) : null);
    })(cur, base);
    cur.hasBase = true;
    cur.baseTotal = base.value;
  };

  // The folded text of a tree (for downloads of a recorded range or a pinned baseline).
  NS.toFolded = function (root) {
    const out = [];
    (function walk(nd, path) {
      const p = nd === root ? path : path.concat(nd.name);
      if (nd !== root && nd.self > 0) out.push(p.join(';') + ' ' + nd.self);
      for (const c of nd.children) walk(c, p);
    })(root, []);
    return out.join('\n') + (out.length ? '\n' : '');
  };

  /* ---------- colours (all readable with black text: contrast ≥ 4.5:1) ---------- */
  function hash(s) {
    let x = 2166136261;
    for (let i = 0; i < s.length; i++) { x ^= s.charCodeAt(i); x = Math.imul(x, 16777619); }
    return (x >>> 0) / 4294967295;
  }
  const colourCache = new Map();
  function warm(name) {
    let c = colourCache.get(name);
    if (c) return c;
    const v1 = hash(name);
    const v2 = hash(name + '#');
    if (name.endsWith('_[k]')) c = 'rgb(' + (235 + Math.round(20 * v1)) + ',' + (180 + Math.round(40 * v2)) + ',' + (70 + Math.round(40 * v1)) + ')';
    else c = 'rgb(' + (230 + Math.round(25 * v2)) + ',' + (110 + Math.round(120 * v1)) + ',' + (40 + Math.round(50 * v2)) + ')';
    if (colourCache.size < 50000) colourCache.set(name, c);
    return c;
  }
  function diffColour(nd, total) {
    if (!nd.inBase) return 'rgb(255,110,110)';
    const delta = (nd.value - nd.base) / (total || 1);
    const t = Math.min(1, Math.abs(delta) / 0.05);
    const k = Math.round(255 - 150 * t);
    return delta >= 0 ? 'rgb(255,' + k + ',' + k + ')' : 'rgb(' + k + ',' + k + ',255)';
  }

  const ROW = 18;

  class FlameGraph {
    constructor(host, opts) {
      opts = opts || {};
      this.host = host;
      this.opts = opts;
      this.unit = 'samples';
      this.icicle = !!opts.icicle;
      this.term = '';
      this.re = null;
      this.root = null;
      this.zoomNode = null;
      this.sel = null;
      this.rects = [];
      this.rows = [];
      host.classList.add('flame');
      this.searchBox = h('input', { type: 'search', placeholder: 'Search frames (text or /regex/)', 'aria-label': 'Search frames', class: 'flame-search' });
      this.icicleBox = h('input', { type: 'checkbox', checked: this.icicle });
      this.resetBtn = h('button', { type: 'button', text: 'Reset zoom', disabled: true });
      this.matchLabel = h('span', { class: 'muted flame-match', 'aria-live': 'polite' });
      this.crumb = h('span', { class: 'flame-crumb muted' });
      const tools = h('div', { class: 'toolbar' }, this.searchBox, h('label', { class: 'check' }, this.icicleBox, ' Icicle (root at top)'), this.resetBtn, this.matchLabel, this.crumb);
      this.canvas = h('canvas', { tabindex: '0', role: 'img', class: 'flame-canvas', 'aria-label': opts.label || 'Flame graph. Arrow keys move between frames, Enter zooms, Escape resets.' });
      this.tip = h('div', { class: 'flame-tip', role: 'tooltip', hidden: true });
      this.live = h('div', { class: 'sr-only', 'aria-live': 'polite' });
      this.wrap = h('div', { class: 'flame-wrap' }, this.canvas, this.tip);
      host.append(tools, this.wrap, this.live);
      host.nsFlame = this;
      this.searchBox.addEventListener('input', () => this.search(this.searchBox.value));
      this.icicleBox.addEventListener('change', () => this.setIcicle(this.icicleBox.checked));
      this.resetBtn.addEventListener('click', () => this.zoom(this.root));
      this.canvas.addEventListener('mousemove', (e) => this.hover(e));
      this.canvas.addEventListener('mouseleave', () => (this.tip.hidden = true));
      this.canvas.addEventListener('click', (e) => {
        const r = this.hit(e);
        if (r) { this.sel = r.node; this.zoom(r.node); }
      });
      this.canvas.addEventListener('keydown', (e) => this.key(e));
      this.canvas.addEventListener('focus', () => { if (!this.sel && this.zoomNode) { this.sel = this.zoomNode; this.draw(); this.announce(); } });
      if (window.ResizeObserver) {
        let w = 0;
        this.ro = new ResizeObserver(() => {
          const nw = this.wrap.clientWidth;
          if (nw !== w) { w = nw; if (this.root) this.render(); }
        });
        this.ro.observe(this.wrap);
      }
    }

    // root: from NS.parseFolded (optionally annotated by NS.diffTrees). unit: samples |
    // nanoseconds.
    setData(root, opts) {
      opts = opts || {};
      this.root = root;
      this.unit = opts.unit || 'samples';
      this.diff = !!opts.diff && !!root.hasBase;
      this.zoomNode = root;
      this.sel = null;
      if (this.term) this.computeMatches();
      this.render();
    }

    setIcicle(on) {
      this.icicle = on;
      this.icicleBox.checked = on;
      this.render();
      if (this.opts.onChange) this.opts.onChange();
    }

    zoom(nd) {
      if (!nd || !this.root) return;
      this.zoomNode = nd;
      this.resetBtn.disabled = nd === this.root;
      const path = [];
      for (let p = nd; p; p = p.parent) path.unshift(p.name);
      this.crumb.textContent = nd === this.root ? '' : 'Zoomed: ' + path.slice(1).join(' › ');
      this.render();
      this.announce();
      if (this.opts.onZoom) this.opts.onZoom(nd);
    }

    zoomed() {
      return this.zoomNode;
    }

    search(term) {
      this.term = term || '';
      this.re = null;
      if (this.term) {
        const m = /^\/(.+)\/$/.exec(this.term);
        try {
          this.re = m ? new RegExp(m[1], 'i') : null;
        } catch (e) {
          this.re = null;
        }
      }
      this.computeMatches();
      this.draw();
      return this.matched;
    }

    matches(name) {
      if (!this.term) return false;
      return this.re ? this.re.test(name) : name.toLowerCase().includes(this.term.toLowerCase());
    }

    computeMatches() {
      this.matched = 0;
      if (!this.term || !this.root) { this.matchLabel.textContent = ''; return; }
      const self = this;
      let frames = 0;
      (function walk(nd) {
        if (nd !== self.root && self.matches(nd.name)) { self.matched += nd.value; frames++; return; }
        for (const c of nd.children) walk(c);
      })(this.root);
      this.matchLabel.textContent = frames ? 'Matched: ' + NS.fmt.pct(this.matched / (this.root.value || 1)) + ' of the total' : 'No frame matches';
    }

    fmtValue(v) {
      if (this.unit === 'nanoseconds') return NS.fmt.seconds(v / 1e9);
      return NS.fmt.num(Math.round(v), 0) + (v === 1 ? ' sample' : ' samples');
    }

    // Lays out the visible frames (≥ 0.3 px) of the zoomed subtree, plus its ancestors as
    // full-width rows, then draws.
    render() {
      if (!this.root) return;
      const W = Math.max(200, this.wrap.clientWidth || 800);
      this.W = W;
      const rects = [];
      const rows = [];
      const add = (nd, x, w, d, anc) => {
        const r = { node: nd, x: x, w: w, d: d, anc: anc };
        rects.push(r);
        (rows[d] || (rows[d] = [])).push(r);
      };
      const path = [];
      for (let p = this.zoomNode.parent; p; p = p.parent) path.unshift(p);
      path.forEach((p, i) => add(p, 0, W, i, true));
      const k = path.length;
      const scale = W / (this.zoomNode.value || 1);
      const stack = [[this.zoomNode, 0, k]];
      while (stack.length) {
        const [nd, x, d] = stack.pop();
        const w = nd.value * scale;
        if (w < 0.3) continue;
        add(nd, x, w, d, false);
        let cx = x;
        const kids = [];
        for (const c of nd.children) { kids.push([c, cx, d + 1]); cx += c.value * scale; }
        for (let i = kids.length - 1; i >= 0; i--) stack.push(kids[i]);
      }
      // Rows must be sorted by x for the hit test; the depth-first order gives that.
      this.rects = rects;
      this.rows = rows;
      this.depth = rows.length;
      const H = Math.max(1, rows.length) * ROW;
      this.H = H;
      const dpr = window.devicePixelRatio || 1;
      this.canvas.width = Math.round(W * dpr);
      this.canvas.height = Math.round(H * dpr);
      this.canvas.style.width = W + 'px';
      this.canvas.style.height = H + 'px';
      this.dpr = dpr;
      this.draw();
    }

    y(d) {
      return this.icicle ? d * ROW : this.H - (d + 1) * ROW;
    }

    draw() {
      if (!this.root) return;
      const ctx = this.canvas.getContext('2d');
      ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
      ctx.clearRect(0, 0, this.W, this.H);
      ctx.font = '12px system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif';
      ctx.textBaseline = 'middle';
      if (!this.charW) this.charW = ctx.measureText('abcdefghijklmnopqrstuvwxyz_:').width / 28;
      const searching = !!this.term;
      const total = this.root.value;
      for (const r of this.rects) {
        const nd = r.node;
        const y = this.y(r.d);
        let fill;
        if (r.anc) fill = '#d9d9d9';
        else if (searching && this.matches(nd.name)) fill = 'rgb(225,120,225)';
        else if (this.diff) fill = diffColour(nd, total);
        else if (nd === this.root) fill = '#e0e0e0';
        else fill = warm(nd.name);
        ctx.globalAlpha = searching && !r.anc && !this.matches(nd.name) ? 0.45 : 1;
        ctx.fillStyle = fill;
        ctx.fillRect(r.x, y, Math.max(r.w - (r.w > 2 ? 1 : 0), 0.5), ROW - 1);
        if (r.w > 24) {
          const max = Math.floor((r.w - 6) / this.charW);
          let label = nd === this.root ? 'all (' + this.fmtValue(total) + ')' : nd.name;
          if (label.length > max) label = max > 2 ? label.slice(0, max - 1) + '…' : '';
          if (label) {
            ctx.fillStyle = '#000';
            ctx.fillText(label, r.x + 3, y + ROW / 2);
          }
        }
      }
      ctx.globalAlpha = 1;
      if (this.sel) {
        const r = this.rects.find((q) => q.node === this.sel);
        if (r) {
          ctx.strokeStyle = '#000';
          ctx.lineWidth = 2;
          ctx.strokeRect(r.x + 1, this.y(r.d) + 1, Math.max(r.w - 2, 2), ROW - 3);
        }
      }
      this.canvas.dataset.frames = String(this.rects.length);
      // First drawing of real data, for the Performance API (docs/benchmarks.md).
      if (!this.marked && total > 0 && window.performance && performance.mark) {
        this.marked = true;
        performance.mark('ns-flame-drawn', { detail: { frames: this.rects.length, nodes: this.root.count } });
      }
    }

    hitAt(px, py) {
      const d = this.icicle ? Math.floor(py / ROW) : Math.floor((this.H - py) / ROW);
      const row = this.rows[d];
      if (!row) return null;
      let lo = 0;
      let hi = row.length - 1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        const r = row[mid];
        if (px < r.x) hi = mid - 1;
        else if (px >= r.x + r.w) lo = mid + 1;
        else return r;
      }
      return null;
    }

    hit(e) {
      const b = this.canvas.getBoundingClientRect();
      return this.hitAt(e.clientX - b.left, e.clientY - b.top);
    }

    describe(nd) {
      const total = this.root.value || 1;
      const lines = [nd === this.root ? 'all' : nd.name, this.fmtValue(nd.value) + ' (' + NS.fmt.pct(nd.value / total, 2) + ' of the total' + (this.zoomNode !== this.root ? ', ' + NS.fmt.pct(nd.value / (this.zoomNode.value || 1), 2) + ' of the zoomed frame' : '') + ')'];
      if (nd.self) lines.push('self: ' + this.fmtValue(nd.self) + ' (' + NS.fmt.pct(nd.self / total, 2) + ')');
      if (this.diff) {
        lines.push(nd.inBase ? 'baseline: ' + NS.fmt.pct(nd.base / total, 2) + ', change ' + ((nd.value - nd.base) >= 0 ? '+' : '') + ((100 * (nd.value - nd.base)) / total).toFixed(2) + ' points' : 'not in the baseline');
      }
      return lines;
    }

    hover(e) {
      const r = this.hit(e);
      if (!r) { this.tip.hidden = true; this.canvas.style.cursor = ''; return; }
      this.canvas.style.cursor = 'pointer';
      NS.clear(this.tip);
      this.describe(r.node).forEach((l, i) => this.tip.appendChild(h('div', { class: i === 0 ? 'name' : '', text: l })));
      this.tip.hidden = false;
      const b = this.wrap.getBoundingClientRect();
      const x = e.clientX - b.left + 14;
      const y = e.clientY - b.top + 14;
      this.tip.style.left = Math.min(x, b.width - 320) + 'px';
      this.tip.style.top = y + 'px';
    }

    announce() {
      const nd = this.sel || this.zoomNode;
      if (nd) this.live.textContent = this.describe(nd).join('. ');
    }

    key(e) {
      if (!this.root) return;
      let sel = this.rects.find((q) => q.node === (this.sel || this.zoomNode));
      if (!sel) sel = this.rects[0];
      const row = this.rows[sel.d];
      const i = row.indexOf(sel);
      let next = null;
      const childRow = this.rows[sel.d + 1] || [];
      const biggestChild = () => childRow.filter((r) => r.x >= sel.x - 0.01 && r.x + r.w <= sel.x + sel.w + 0.01).sort((a, b) => b.w - a.w)[0];
      const parentRect = () => (this.rows[sel.d - 1] || []).find((r) => r.x <= sel.x + 0.01 && r.x + r.w >= sel.x + sel.w - 0.01);
      switch (e.key) {
        case 'ArrowLeft': next = row[i - 1]; break;
        case 'ArrowRight': next = row[i + 1]; break;
        case 'ArrowUp': next = this.icicle ? parentRect() : biggestChild(); break;
        case 'ArrowDown': next = this.icicle ? biggestChild() : parentRect(); break;
        case 'Enter':
        case ' ':
          e.preventDefault();
          this.zoom(sel.node);
          return;
        case 'Escape':
          e.preventDefault();
          this.zoom(this.root);
          return;
        case '/':
          e.preventDefault();
          this.searchBox.focus();
          return;
        default:
          return;
      }
      e.preventDefault();
      if (next) {
        this.sel = next.node;
        this.draw();
        this.announce();
      }
    }

    // For tests and links: the frames named `name` (exact, else substring): their summed
    // value (without double-counting nested occurrences) and the largest visible one's box
    // in page coordinates.
    frame(name) {
      if (!this.root) return null;
      const eq = (n) => n === name;
      const has = (n) => n.includes(name);
      for (const test of [eq, has]) {
        let value = 0;
        (function walk(nd, inside) {
          const m = nd.parent && test(nd.name);
          if (m && !inside) value += nd.value;
          for (const c of nd.children) walk(c, inside || m);
        })(this.root, false);
        if (!value) continue;
        const vis = this.rects.filter((r) => !r.anc && test(r.node.name)).sort((a, b) => b.w - a.w)[0];
        const b = this.canvas.getBoundingClientRect();
        return {
          value: value,
          total: this.root.value,
          share: value / (this.root.value || 1),
          box: vis ? { x: b.left + vis.x, y: b.top + this.y(vis.d), w: vis.w, h: ROW, name: vis.node.name } : null,
        };
      }
      return null;
    }

    // The current view as a standalone SVG document.
    svg(title) {
      const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
      const total = this.root.value;
      const out = ['<?xml version="1.0" encoding="UTF-8"?>', '<svg xmlns="http://www.w3.org/2000/svg" width="' + this.W + '" height="' + (this.H + 24) + '" font-family="sans-serif" font-size="12">', '<title>' + esc(title || 'flame graph') + '</title>', '<text x="4" y="16">' + esc(title || '') + '</text>', '<g transform="translate(0,24)">'];
      for (const r of this.rects) {
        const nd = r.node;
        const fill = r.anc ? '#d9d9d9' : this.diff ? diffColour(nd, total) : nd === this.root ? '#e0e0e0' : warm(nd.name);
        const y = this.y(r.d);
        const label = nd === this.root ? 'all' : nd.name;
        out.push('<g><title>' + esc(label + ' — ' + this.fmtValue(nd.value) + ' (' + NS.fmt.pct(nd.value / (total || 1), 2) + ')') + '</title><rect x="' + r.x.toFixed(2) + '" y="' + y + '" width="' + Math.max(r.w - 1, 0.5).toFixed(2) + '" height="' + (ROW - 1) + '" fill="' + fill + '"/>');
        if (r.w > 24) {
          const max = Math.floor((r.w - 6) / (this.charW || 7));
          let t = label.length > max ? (max > 2 ? label.slice(0, max - 1) + '…' : '') : label;
          if (t) out.push('<text x="' + (r.x + 3).toFixed(2) + '" y="' + (y + 13) + '">' + esc(t) + '</text>');
        }
        out.push('</g>');
      }
      out.push('</g></svg>');
      return out.join('\n');
    }
  }

  NS.FlameGraph = FlameGraph;
})();
