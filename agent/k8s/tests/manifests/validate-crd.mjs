// Validates prometheus-operator custom resources (PodMonitor, ServiceMonitor) against the
// CRD OpenAPI schemas shipped by the npm package @kubernetes-models/prometheus-operator
// (generated from prometheus-operator's CRDs). Reads a JSON array of objects on stdin;
// objects of other kinds are ignored. Prints one line per validated object; exits 1 on
// the first invalid one, 2 when the package is missing.
//   node validate-crd.mjs <npm-prefix> < objects.json
import { readFileSync, existsSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const prefix = process.argv[2];
const pkg = `${prefix}/node_modules/@kubernetes-models/prometheus-operator`;
if (!existsSync(pkg)) {
  console.error(`missing ${pkg}: npm install --prefix ${prefix} @kubernetes-models/prometheus-operator@6.0.0`);
  process.exit(2);
}
const kinds = {
  PodMonitor: `${pkg}/monitoring.coreos.com/v1/PodMonitor.js`,
  ServiceMonitor: `${pkg}/monitoring.coreos.com/v1/ServiceMonitor.js`,
};
const objects = JSON.parse(readFileSync(0, 'utf8'));
let validated = 0;
for (const obj of objects) {
  if (!obj || obj.apiVersion !== 'monitoring.coreos.com/v1' || !(obj.kind in kinds)) continue;
  const mod = await import(pathToFileURL(kinds[obj.kind]).href);
  const Model = mod[obj.kind];
  try {
    new Model(obj).validate();
  } catch (e) {
    console.log(`INVALID ${obj.kind}/${obj.metadata?.name}: ${e.message}`);
    process.exit(1);
  }
  console.log(`VALID ${obj.kind}/${obj.metadata?.name}`);
  validated++;
}
console.log(`validated ${validated}`);
