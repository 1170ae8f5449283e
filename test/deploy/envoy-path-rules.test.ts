// The shipped Envoy configurations refuse double-encoded and overlong path spellings before
// routing and ext_authz (issue 16, item 8), with an RBAC DENY rule checked against Envoy's protos.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { normalizePath } from '../../src/policy/normalize.js';
import { checkEnvoyConfig } from './envoy-proto.js';
import { ROOT } from './helm.js';

/* eslint-disable @typescript-eslint/no-explicit-any */
type Loose = any;
/* eslint-enable @typescript-eslint/no-explicit-any */

const REFUSED = [
  '/v1/models/..%3B/agents',
  '/v1/models/..%3b/agents',
  '/v1/models/%252e%252e/%252e%252e/v1/agents',
  '/v1%252Fchat',
  '/v1/models/%255c..',
  '/v1/models/..%253b/agents',
  '/v1/models%2500',
  '/v1/models/%25252e',
  '/v1/models/%c0%ae%c0%ae/agents',
  '/v1/models%C0%AFagents',
  '/v1/models/%e0%80%ae',
  '/v1/models/%ed%a0%80',
  '/v1/models/%f0%80%80%ae',
  '/v1/models/%f8%80',
];
const ALLOWED = ['/v1/models', '/v1/knowledge-bases/kb/documents/50%25off', '/v1/knowledge-bases/kb/documents/a%2541', '/v1/knowledge-bases/caf%C3%A9', '/v1/knowledge-bases/%F0%9F%98%80', '/v1/models/gpt%2D4'];

describe.each(['envoy.yaml', 'http-ext-authz.yaml'])('deploy/envoy/%s', (file) => {
  const bootstrap = parse(readFileSync(join(ROOT, 'deploy', 'envoy', file), 'utf8')) as Loose;
  const hcm = bootstrap.static_resources.listeners[0].filter_chains[0].filters.find((f: Loose) => f.name === 'envoy.filters.network.http_connection_manager').typed_config;
  const filters: Loose[] = hcm.http_filters;
  const rbac = filters.find((f) => f.name === 'envoy.filters.http.rbac');

  it("is valid by Envoy's protos, with the RBAC filter before ext_authz", () => {
    expect(checkEnvoyConfig(bootstrap)).toEqual([]);
    expect(rbac, 'an RBAC filter').toBeDefined();
    expect(filters.indexOf(rbac)).toBeLessThan(filters.findIndex((f) => f.name === 'envoy.filters.http.ext_authz'));
    expect(rbac.typed_config.rules.action).toBe('DENY');
  });

  it('denies the double-encoded and overlong spellings the gate refuses, and lets ordinary encoded paths through', () => {
    const policies = Object.values(rbac.typed_config.rules.policies) as Loose[];
    // RE2 full match; these patterns use nothing JavaScript reads differently.
    const patterns = policies.flatMap((p) => p.permissions.map((perm: Loose) => new RegExp(`^(?:${perm.url_path.path.safe_regex.regex})$`)));
    const denied = (path: string) => patterns.some((re) => re.test(path));
    for (const path of REFUSED) {
      expect(denied(path), `Envoy denies ${path}`).toBe(true);
      expect(normalizePath(path).ok, `the gate refuses ${path}`).toBe(false);
    }
    for (const path of ALLOWED) {
      expect(denied(path), `Envoy lets ${path} through`).toBe(false);
      expect(normalizePath(path).ok, `the gate accepts ${path}`).toBe(true);
    }
  });
});
