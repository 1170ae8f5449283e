import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, expect } from 'vitest';
import {
  DEFAULT_POLICY_PATH,
  PolicyError,
  compilePolicy,
  loadPolicyFile,
  type AuthorizeResult,
  type CompiledPolicy,
} from '../../src/policy/policy.js';

const policy: CompiledPolicy = loadPolicyFile(DEFAULT_POLICY_PATH);

// Outcome for one scope: Allowed, or Denied for lack of the row's permission.
const A = 'allow';
const D = 'deny';
type Outcome = typeof A | typeof D;
type Row = [method: string, path: string, permission: string | null, buyer: Outcome, readOnly: Outcome, writeOnly: Outcome, unknown: Outcome];

// Written from the seed table (SPEC section 4), not from the policy file:
// buyer = everything; read-only = read models, KBs, memories, billing; write-only = inference + KB uploads.
const seed: Row[] = [
  ['POST', '/v1/chat/completions', 'inference', A, D, A, D],
  ['POST', '/v1/completions', 'inference', A, D, A, D],
  ['POST', '/v1/embeddings', 'inference', A, D, A, D],
  ['POST', '/v1/responses', 'inference', A, D, A, D],
  ['GET', '/v1/models', 'models.read', A, A, D, D],
  ['GET', '/v1/models/gpt-4o-mini', 'models.read', A, A, D, D],
  ['GET', '/v1/models/meta-llama/Llama-3.1-8B', 'models.read', A, A, D, D],
  ['POST', '/v1/knowledge-bases/kb_1/documents', 'kb.upload', A, D, A, D],
  ['POST', '/v1/knowledge-bases/kb_1/files', 'kb.upload', A, D, A, D],
  ['GET', '/v1/knowledge-bases', 'kb.read', A, A, D, D],
  ['HEAD', '/v1/knowledge-bases/kb_1/documents/doc_1', 'kb.read', A, A, D, D],
  ['POST', '/v1/knowledge-bases', 'kb.write', A, D, D, D],
  ['PATCH', '/v1/knowledge-bases/kb_1', 'kb.write', A, D, D, D],
  ['DELETE', '/v1/knowledge-bases/kb_1/documents/doc_1', 'kb.write', A, D, D, D],
  ['PUT', '/v1/knowledge-bases/kb_1/documents', 'kb.write', A, D, D, D],
  ['GET', '/v1/agents', 'agents', A, D, D, D],
  ['POST', '/v1/agents/ag_1/runs', 'agents', A, D, D, D],
  ['GET', '/v1/memories/mem_1', 'memories.read', A, A, D, D],
  ['POST', '/v1/memories', 'memories.write', A, D, D, D],
  ['DELETE', '/v1/memories/mem_1', 'memories.write', A, D, D, D],
  ['GET', '/api/v1/billing/usage', 'billing.read', A, A, D, D],
  ['GET', '/api/v1/billing', 'billing.read', A, A, D, D],
  ['POST', '/api/v1/billing/top-up', 'billing.write', A, D, D, D],
  ['GET', '/api/v1/auth/api-keys', 'keys.manage', A, D, D, D],
  ['POST', '/api/v1/auth/api-keys', 'keys.manage', A, D, D, D],
  ['DELETE', '/api/v1/auth/api-keys/key_1', 'keys.manage', A, D, D, D],
  ['POST', '/api/v1/auth/api-keys/key_1/roll', 'keys.manage', A, D, D, D],
  ['POST', '/mcp', 'mcp', A, D, D, D],
  ['GET', '/mcp/sse', 'mcp', A, D, D, D],
  ['DELETE', '/mcp', 'mcp', A, D, D, D],
  ['GET', '/api/v1/auth/me', null, A, A, A, A],
];

// Routes no rule covers: denied for everyone under default_action deny.
const unmatched: Array<[method: string, path: string]> = [
  ['GET', '/v1/unknown'],
  ['GET', '/v1/chat/completions'],
  ['POST', '/v1/models'],
  ['PATCH', '/api/v1/auth/api-keys/key_1'],
  ['DELETE', '/api/v1/auth/api-keys/key_1/extra'],
  ['POST', '/api/v1/auth/me'],
  ['OPTIONS', '/v1/memories'],
  ['GET', '/'],
  ['GET', '/mcpx'],
];

const SCOPES = ['buyer', 'read-only', 'write-only', 'no-such-scope'] as const;

function expected(outcome: Outcome, permission: string | null): AuthorizeResult {
  // The inference rule is marked as one (its body is read for token limits: issue 19).
  if (outcome === A) return permission === 'inference' ? { kind: 'allow', permission, inference: true } : { kind: 'allow', permission };
  if (permission === null) throw new Error('an any-valid-key route cannot deny');
  return { kind: 'insufficient_scope', permission };
}

describe('default policy', () => {
  it('declares the three seed scopes', () => {
    expect([...policy.scopes].sort()).toEqual(['buyer', 'read-only', 'write-only']);
  });

  it('grants read-only and write-only exactly the seed permissions', () => {
    expect([...policy.permissionsOf('read-only')].sort()).toEqual(['billing.read', 'kb.read', 'memories.read', 'models.read']);
    expect([...policy.permissionsOf('write-only')].sort()).toEqual(['inference', 'kb.upload']);
    expect(policy.permissionsOf('no-such-scope').size).toBe(0);
  });

  describe.each(seed)('%s %s (%s)', (method, path, permission, ...outcomes) => {
    it.each(SCOPES.map((scope, i) => [scope, outcomes[i] as Outcome]))('%s: %s', (scope, outcome) => {
      expect(policy.authorize(method, path, scope)).toEqual(expected(outcome, permission));
    });
  });

  describe.each(unmatched)('unmatched %s %s', (method, path) => {
    it.each(SCOPES)('is no_route for %s', (scope) => {
      expect(policy.authorize(method, path, scope)).toEqual({ kind: 'no_route' });
    });
  });
});

describe('default policy against bypass spellings', () => {
  const cases: Array<[name: string, method: string, path: string, scope: string, result: AuthorizeResult]> = [
    ['dot-dot out of models into inference', 'POST', '/v1/models/../chat/completions', 'read-only', { kind: 'insufficient_scope', permission: 'inference' }],
    ['encoded dot-dot into inference', 'POST', '/v1/models/%2e%2e/chat/completions', 'read-only', { kind: 'insufficient_scope', permission: 'inference' }],
    ['double slash into inference', 'POST', '/v1//chat/completions', 'read-only', { kind: 'insufficient_scope', permission: 'inference' }],
    ['encoded slashes', 'POST', '/v1%2Fchat%2Fcompletions', 'write-only', { kind: 'invalid_path', reason: expect.any(String) as string }],
    ['encoded NUL', 'GET', '/v1/models%00', 'buyer', { kind: 'invalid_path', reason: expect.any(String) as string }],
    ['encoded backslash', 'GET', '/v1/models%5C..%5C..%5Capi', 'buyer', { kind: 'invalid_path', reason: expect.any(String) as string }],
    ['dot-dot above the root', 'GET', '/../v1/models', 'buyer', { kind: 'invalid_path', reason: expect.any(String) as string }],
    ['upload path climbing to a KB write', 'POST', '/v1/knowledge-bases/kb_1/documents/../../kb_2', 'write-only', { kind: 'insufficient_scope', permission: 'kb.write' }],
    ['upload with a query that looks like a path', 'POST', '/v1/knowledge-bases/kb_1/documents?x=/../../', 'write-only', { kind: 'allow', permission: 'kb.upload' }],
    ['upload with a trailing slash', 'POST', '/v1/knowledge-bases/kb_1/documents/', 'write-only', { kind: 'allow', permission: 'kb.upload' }],
    ['query naming a readable route', 'POST', '/v1/chat/completions?x=/v1/models', 'read-only', { kind: 'insufficient_scope', permission: 'inference' }],
    ['upper-case path falls to the default', 'GET', '/V1/MODELS', 'read-only', { kind: 'no_route' }],
    ['encoded unreserved letter', 'GET', '/v1/m%6Fdels', 'read-only', { kind: 'allow', permission: 'models.read' }],
    ['double-encoded dot-dot is refused', 'GET', '/v1/%252e%252e/models', 'buyer', { kind: 'invalid_path', reason: expect.stringContaining('double-encoded') }],
    ['me climbing to key management', 'GET', '/api/v1/auth/me/../api-keys', 'read-only', { kind: 'insufficient_scope', permission: 'keys.manage' }],
    ['mcp climbing to agents', 'POST', '/mcp/../v1/agents', 'read-only', { kind: 'insufficient_scope', permission: 'agents' }],
    ['lower-case method matches no method list', 'get', '/v1/models', 'buyer', { kind: 'no_route' }],
    ['unknown method still reaches any-method rules', 'PROPFIND', '/mcp', 'read-only', { kind: 'insufficient_scope', permission: 'mcp' }],
  ];

  it.each(cases)('%s', (_name, method, path, scope, result) => {
    expect(policy.authorize(method, path, scope)).toEqual(result);
  });
});

describe('rule semantics', () => {
  it('lets the first matching rule decide, even when a later rule would allow', () => {
    const p = compilePolicy(
      `version: 1
scopes:
  reader: [read]
  writer: [write]
rules:
  - methods: [POST]
    paths: [/things/special]
    permission: write
  - paths: [/things/**]
    permission: read
`,
      '<inline>',
    );
    expect(p.authorize('POST', '/things/special', 'reader')).toEqual({ kind: 'insufficient_scope', permission: 'write' });
    expect(p.authorize('POST', '/things/other', 'reader')).toEqual({ kind: 'allow', permission: 'read' });
  });

  it('matches "*" as exactly one segment and "**" as zero or more', () => {
    const p = compilePolicy(
      `version: 1
scopes:
  s: [one, many, middle]
rules:
  - paths: [/one/*]
    permission: one
  - paths: [/many/**]
    permission: many
  - paths: [/a/**/z]
    permission: middle
`,
      '<inline>',
    );
    expect(p.authorize('GET', '/one', 's')).toEqual({ kind: 'no_route' });
    expect(p.authorize('GET', '/one/x', 's')).toEqual({ kind: 'allow', permission: 'one' });
    expect(p.authorize('GET', '/one/x/y', 's')).toEqual({ kind: 'no_route' });
    expect(p.authorize('GET', '/many', 's')).toEqual({ kind: 'allow', permission: 'many' });
    expect(p.authorize('GET', '/many/x/y/z', 's')).toEqual({ kind: 'allow', permission: 'many' });
    expect(p.authorize('GET', '/manyx', 's')).toEqual({ kind: 'no_route' });
    expect(p.authorize('GET', '/a/z', 's')).toEqual({ kind: 'allow', permission: 'middle' });
    expect(p.authorize('GET', '/a/b/c/z', 's')).toEqual({ kind: 'allow', permission: 'middle' });
    expect(p.authorize('GET', '/a/b/c', 's')).toEqual({ kind: 'no_route' });
  });

  it('reports shadow_deny for an unenforced rule and allows a scope that has the permission', () => {
    const p = compilePolicy(
      `version: 1
scopes:
  admin: [admin]
  user: []
rules:
  - paths: [/admin/**]
    permission: admin
    enforce: false
`,
      '<inline>',
    );
    expect(p.authorize('GET', '/admin/users', 'user')).toEqual({ kind: 'shadow_deny', permission: 'admin' });
    expect(p.authorize('GET', '/admin/users', 'admin')).toEqual({ kind: 'allow', permission: 'admin' });
    expect(p.authorize('GET', '/other', 'admin')).toEqual({ kind: 'no_route' });
  });

  it('allows unmatched routes under default_action allow, and still enforces matched ones', () => {
    const p = compilePolicy(
      `version: 1
default_action: allow
scopes:
  user: []
rules:
  - methods: [DELETE]
    paths: [/v1/things/*]
    permission: things.delete
  - methods: ['*']
    paths: [/v1/ping]
    any_valid_key: true
`,
      '<inline>',
    );
    expect(p.authorize('GET', '/v1/anything', 'user')).toEqual({ kind: 'allow', permission: null });
    expect(p.authorize('DELETE', '/v1/things/t1', 'user')).toEqual({ kind: 'insufficient_scope', permission: 'things.delete' });
    expect(p.authorize('PATCH', '/v1/ping', 'user')).toEqual({ kind: 'allow', permission: null });
    expect(p.authorize('GET', '/v1/%2F', 'user')).toEqual({ kind: 'invalid_path', reason: expect.any(String) as string });
  });

  it('keeps the source it was compiled from', () => {
    expect(policy.source).toBe(DEFAULT_POLICY_PATH);
    expect(compilePolicy('version: 1\nscopes: {}\nrules: []\n', '<inline>').source).toBe('<inline>');
  });
});

describe('policy load errors', () => {
  const VALID_HEAD = `version: 1
scopes:
  reader: [read]
rules:
`;

  function loadError(yamlText: string): PolicyError {
    try {
      compilePolicy(yamlText, 'policy/test.yaml');
    } catch (err) {
      if (err instanceof PolicyError) return err;
      throw err;
    }
    throw new Error('expected compilePolicy to throw');
  }

  const cases: Array<[name: string, yamlText: string, message: string]> = [
    [
      'YAML syntax error names its line',
      `version: 1\nscopes:\n  reader: [read\nrules: []\n`,
      'policy/test.yaml:4: YAML syntax error:',
    ],
    ['unknown top-level key', `${VALID_HEAD}  - paths: [/r]\n    permission: read\nlimits: {}\n`, 'policy/test.yaml:7: unknown key "limits"'],
    [
      'plan window out of range',
      `${VALID_HEAD}  - paths: [/r]\n    permission: read\nplans:\n  free:\n    account: { requests: 10, window: 2d }\n`,
      'policy/test.yaml:9: plans.free.account.window: "2d" is not a window from 1s to 1d (like "1s", "30s", "1m", "1h", "1d")',
    ],
    [
      'default plan that is not a plan',
      `${VALID_HEAD}  - paths: [/r]\n    permission: read\nplans:\n  free:\n    account: { requests: 10, window: 1m }\ndefault_plan: gold\n`,
      'policy/test.yaml:10: default_plan: default plan "gold" is not one of the plans',
    ],
    [
      'unknown key in a rule',
      `${VALID_HEAD}  - paths: [/r]\n    permision: read\n`,
      'policy/test.yaml:6: rules[0]: unknown key "permision"',
    ],
    [
      'bad method',
      `${VALID_HEAD}  - paths: [/r]\n    permission: read\n  - methods: [GET,\n      GETT]\n    paths: [/s]\n    permission: read\n`,
      'policy/test.yaml:8: rules[1].methods[1]: "GETT" is not an HTTP method',
    ],
    [
      'lower-case method',
      `${VALID_HEAD}  - methods: [get]\n    paths: [/r]\n    permission: read\n`,
      'policy/test.yaml:5: rules[0].methods[0]: "get" is not an HTTP method (methods are upper-case: "GET")',
    ],
    [
      'partial glob',
      `${VALID_HEAD}  - paths:\n      - /r\n      - /v1/model*\n    permission: read\n`,
      'policy/test.yaml:7: rules[0].paths[1]: "/v1/model*": "*" and "**" must be a whole segment, not part of "model*"',
    ],
    [
      'unknown permission in a scope',
      `version: 1\nscopes:\n  reader:\n    - read\n    - raed\nrules:\n  - paths: [/r]\n    permission: read\n`,
      'policy/test.yaml:5: scopes.reader[1]: permission "raed" is not used by any rule',
    ],
    [
      'wrong type',
      `${VALID_HEAD}  - paths: /r\n    permission: read\n`,
      'policy/test.yaml:5: rules[0].paths: expected array, received string',
    ],
    [
      'wrong type for enforce',
      `${VALID_HEAD}  - paths: [/r]\n    permission: read\n    enforce: "no"\n`,
      'policy/test.yaml:7: rules[0].enforce: expected boolean, received string',
    ],
    ['missing required key', `${VALID_HEAD}  - permission: read\n`, 'policy/test.yaml:5: rules[0]: missing required key "paths"'],
    [
      'rule with neither permission nor any_valid_key',
      `${VALID_HEAD}  - paths: [/r]\n`,
      'policy/test.yaml:5: rules[0]: a rule needs "permission" or "any_valid_key: true"',
    ],
    [
      'rule with both permission and any_valid_key',
      `${VALID_HEAD}  - paths: [/r]\n    permission: read\n    any_valid_key: true\n`,
      'policy/test.yaml:7: rules[0].any_valid_key: a rule has "permission" or "any_valid_key: true", not both',
    ],
    [
      'pattern with a trailing slash',
      `${VALID_HEAD}  - paths: [/v1/models/]\n    permission: read\n`,
      'policy/test.yaml:5: rules[0].paths[0]: "/v1/models/" has an empty segment',
    ],
    [
      'pattern not in normalised form',
      `${VALID_HEAD}  - paths: [/v1/m%6fdels]\n    permission: read\n`,
      'policy/test.yaml:5: rules[0].paths[0]: "/v1/m%6fdels": segment "m%6fdels" is not in normalised form (write "models")',
    ],
    ['pattern without a leading slash', `${VALID_HEAD}  - paths: [v1/models]\n    permission: read\n`, 'policy/test.yaml:5: rules[0].paths[0]: "v1/models" must start with "/"'],
    ['unsupported version', `version: 2\nscopes: {}\nrules: []\n`, 'policy/test.yaml:1: version: expected 1'],
    ['bad default_action', `version: 1\ndefault_action: block\nscopes: {}\nrules: []\n`, 'policy/test.yaml:2: default_action:'],
    ['duplicate key', `version: 1\nscopes: {}\nscopes: {}\nrules: []\n`, 'policy/test.yaml:3: YAML syntax error:'],
    ['empty file', '', 'policy/test.yaml:1: expected object, received'],
  ];

  it.each(cases)('%s', (_name, yamlText, message) => {
    const err = loadError(yamlText);
    expect(err.message.startsWith(message), `got: ${err.message}`).toBe(true);
    expect(err.message).not.toContain('\n');
    expect(err.problems[0]).toBe(err.message);
  });

  it('lists every problem, in line order', () => {
    const err = loadError(`version: 1\nscopes:\n  reader: [raed]\nrules:\n  - methods: [GETT]\n    paths: [/a*]\n    permission: read\n`);
    expect(err.problems).toEqual([
      'policy/test.yaml:5: rules[0].methods[0]: "GETT" is not an HTTP method',
      'policy/test.yaml:6: rules[0].paths[0]: "/a*": "*" and "**" must be a whole segment, not part of "a*"',
    ]);
  });

  it('names the file when it cannot be read', () => {
    const dir = mkdtempSync(join(tmpdir(), 'policy-test-'));
    try {
      const missing = join(dir, 'missing.yaml');
      expect(() => loadPolicyFile(missing)).toThrow(PolicyError);
      expect(() => loadPolicyFile(missing)).toThrow(`${missing}: cannot read policy file: ENOENT`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('resolves the default policy path to the shipped file', () => {
    expect(DEFAULT_POLICY_PATH.endsWith(join('policy', 'default.yaml'))).toBe(true);
    expect(existsSync(DEFAULT_POLICY_PATH)).toBe(true);
  });
});
