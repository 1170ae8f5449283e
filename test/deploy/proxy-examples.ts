// The proxy configurations of deploy/ as the chart renders them (templates/proxy-examples.yaml).
import { CHART_DIR, helm, parseManifests } from './helm.js';

/** The rendered files by path under deploy/ (ConfigMap keys spell "/" as "_"). */
export async function renderProxyExamples(release: string, namespace: string, extra: string[] = []): Promise<Record<string, string>> {
  const r = await helm([
    'template', release, CHART_DIR, '--namespace', namespace, '--show-only', 'templates/proxy-examples.yaml',
    // Placeholders: the Secrets' names do not appear in the proxy files.
    '--set', 'database.existingSecret=unused', '--set', 'keyPepper.existingSecret=unused', '--set', 'proxyExamples.enabled=true',
    ...extra,
  ]);
  if (r.code !== 0) throw new Error(`helm template failed: ${r.stderr}`);
  const [configMap] = parseManifests(r.stdout);
  const data = (configMap?.data ?? {}) as Record<string, string>;
  return Object.fromEntries(Object.entries(data).map(([key, text]) => [key.replace('_', '/'), text]));
}
