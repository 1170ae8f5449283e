// Writes the proxy configurations of deploy/ (Envoy, Istio, Envoy Gateway) from the Helm chart, so
// release and namespace names live in the chart only. `npm run deploy:render` regenerates the
// shipped files (release "ryvion-authz" in namespace "ryvion"); with --release, --namespace and
// --out it writes the files for another install, and each --set / --set-file goes to helm (e.g.
// --set-file policy.content=my-policy.yaml: the strip lists then follow its forward_metadata).
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT } from '../test/deploy/helm.js';
import { renderProxyExamples } from '../test/deploy/proxy-examples.js';

const { values } = parseArgs({
  options: {
    release: { type: 'string', default: 'ryvion-authz' },
    namespace: { type: 'string', default: 'ryvion' },
    out: { type: 'string', default: join(ROOT, 'deploy') },
    set: { type: 'string', multiple: true, default: [] },
    'set-file': { type: 'string', multiple: true, default: [] },
  },
});

try {
  const files = await renderProxyExamples(values.release, values.namespace, [
    ...values.set.flatMap((s) => ['--set', s]),
    ...values['set-file'].flatMap((s) => ['--set-file', s]),
  ]);
  for (const [path, text] of Object.entries(files)) {
    const target = join(values.out, path);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, text);
    console.log(`wrote ${target}`);
  }
} catch (err) {
  console.error((err as Error).message);
  process.exit(1);
}
