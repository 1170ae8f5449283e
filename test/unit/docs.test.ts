// The README stays a front door, and every relative link in it and in docs/ leads somewhere.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { welcomeText } from '../../src/dev/bootstrap.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
// Written on other branches at the same time as this test (issue 15: revocation; production topology).
function markdownFiles(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? markdownFiles(path.join(dir, e.name)) : e.name.endsWith('.md') ? [path.join(dir, e.name)] : [],
  );
}

describe('documentation', () => {
  it('README.md is under 250 lines', () => {
    expect(readFileSync(path.join(ROOT, 'README.md'), 'utf8').split('\n').length).toBeLessThan(250);
  });

  it('every relative link in README.md and docs/ names an existing file', () => {
    const broken: string[] = [];
    for (const file of ['README.md', 'bench/README.md', 'deploy/nginx/README.md', ...markdownFiles('docs')]) {
      const text = readFileSync(path.join(ROOT, file), 'utf8');
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target!) || target!.startsWith('#')) continue;
        const resolved = path.relative(ROOT, path.resolve(ROOT, path.dirname(file), target!.split('#')[0]!));
        if (!existsSync(path.join(ROOT, resolved))) broken.push(`${file}: ${target}`);
      }
    }
    expect(broken).toEqual([]);
  });

  it('gives Envoy the same ext_authz timeout everywhere: docs/proxies/envoy.md, deploy/envoy/envoy.yaml and the dev banner', () => {
    type Filter = { name: string; typed_config: { grpc_service?: { timeout: string } } };
    const timeoutIn = (filters: Filter[]): string | undefined => filters.find((f) => f.name === 'envoy.filters.http.ext_authz')?.typed_config.grpc_service?.timeout;
    const doc = readFileSync(path.join(ROOT, 'docs/proxies/envoy.md'), 'utf8');
    const snippet = parseYaml(/```yaml\n([\s\S]*?)```/.exec(doc)![1]!) as { http_filters: Filter[] };
    const shipped = readFileSync(path.join(ROOT, 'deploy/envoy/envoy.yaml'), 'utf8');
    const shippedFilters = [...shipped.matchAll(/^\s*- name: envoy\.filters\.http\.ext_authz[\s\S]*?timeout: (\S+)/gm)].map((m) => m[1]);
    const banner = welcomeText({ secret: 'ryv_live_x', keyId: 'key_x', accountId: 'acct_x', httpPort: 8080, grpcPort: 9191, dataDir: '/tmp/x' });
    const bannerYaml = parseYaml(banner.slice(banner.indexOf('http_filters:'), banner.indexOf('\nData, pepper'))) as { http_filters: Filter[] };
    expect(shippedFilters).toEqual(['0.25s']);
    expect(timeoutIn(snippet.http_filters)).toBe('0.25s');
    expect(timeoutIn(bannerYaml.http_filters)).toBe('0.25s');
  });
});
