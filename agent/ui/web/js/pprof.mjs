/* nodescope web UI: decodes a gzip'd pprof profile (the agent's /debug/pprof/profile) into
 * folded stacks for the flame graph, with the vendored pprof-format package (MIT). Loaded
 * as a module by the live UI only; the offline bundle page carries folded stacks. */
import { Profile } from '../vendor/pprof-format/index.js';

async function gunzip(bytes) {
  if (bytes.length < 2 || bytes[0] !== 0x1f || bytes[1] !== 0x8b) return bytes;
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// The flame graph tree of the profile's default sample type: the process name (the comm
// label) as the first frame, then root to leaf, kernel frames suffixed _[k] (like the
// agent's format=folded; NS.toFolded gives that text back for downloads).
async function decode(bytes) {
  const raw = await gunzip(bytes);
  window.NS.mark('ns-pprof-gunzipped');
  const p = Profile.decode(raw);
  window.NS.mark('ns-pprof-decoded');
  const strings = p.stringTable.strings;
  const str = (i) => strings[Number(i)] || '';
  const types = p.sampleType.map((t) => ({ type: str(t.type), unit: str(t.unit) }));
  let vi = types.length - 1;
  const def = str(p.defaultSampleType);
  if (def) {
    const i = types.findIndex((t) => t.type === def);
    if (i >= 0) vi = i;
  }
  const clean = (x) => x.replace(/;/g, ':').replace(/[\r\n]/g, ' ');
  const funcs = new Map(p.function.map((f) => [Number(f.id), str(f.name) || str(f.systemName)]));
  const kernelMaps = new Set(p.mapping.filter((m) => str(m.filename).includes('kernel')).map((m) => Number(m.id)));
  const locs = new Map();
  for (const l of p.location) {
    const k = kernelMaps.has(Number(l.mappingId)) ? '_[k]' : '';
    const names = l.line.length ? l.line.map((ln) => clean((funcs.get(Number(ln.functionId)) || '[unknown]') + k)) : ['0x' + Number(l.address).toString(16) + k];
    locs.set(Number(l.id), names); // leaf (innermost inline) first
  }
  const commKey = strings.indexOf('comm');
  const tree = window.NS.tree();
  const frames = [];
  let total = 0;
  for (const s of p.sample) {
    const v = Number(s.value[vi] || 0);
    if (!v) continue;
    frames.length = 0;
    const comm = commKey >= 0 ? s.label.find((l) => Number(l.key) === commKey) : null;
    if (comm) frames.push(clean(str(comm.str)) || '[unknown]');
    for (let i = s.locationId.length - 1; i >= 0; i--) {
      const names = locs.get(Number(s.locationId[i])) || ['[unknown]'];
      for (let j = names.length - 1; j >= 0; j--) frames.push(names[j]);
    }
    tree.add(frames, v);
    total += v;
  }
  return {
    root: tree.done(),
    unit: types[vi] ? types[vi].unit : 'count',
    type: types[vi] ? types[vi].type : '',
    total: total,
    samples: p.sample.length,
    comments: p.comment.map(str),
  };
}

window.NS._pprofLoaded({ decode: decode });
