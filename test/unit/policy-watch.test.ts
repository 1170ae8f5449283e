import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it, expect, vi } from 'vitest';
import { loadPolicyFile, type CompiledPolicy, type PolicyError } from '../../src/policy/policy.js';
import { watchPolicy } from '../../src/policy/watch.js';

const policyWithScopes = (...scopes: string[]): string =>
  `version: 1
scopes:
${scopes.map((s) => `  ${s}: [read]`).join('\n')}
rules:
  - methods: [GET]
    paths: [/things/**]
    permission: read
`;

// Lays out a directory the way the kubelet does for a ConfigMap volume and swaps it the same way:
// a new timestamped directory, a fresh symlink renamed atomically over `..data`.
class ConfigMapDir {
  readonly root = mkdtempSync(join(tmpdir(), 'policy-watch-'));
  readonly file = join(this.root, 'policy.yaml');
  private generation = 0;

  constructor(initial: string) {
    this.writeGeneration(initial);
    symlinkSync(`..${this.stamp()}`, join(this.root, '..data'));
    symlinkSync(join('..data', 'policy.yaml'), this.file);
  }

  swap(content: string): void {
    this.generation += 1;
    this.writeGeneration(content);
    const tmpLink = join(this.root, '..data_tmp');
    symlinkSync(`..${this.stamp()}`, tmpLink);
    renameSync(tmpLink, join(this.root, '..data'));
  }

  remove(): void {
    rmSync(this.root, { recursive: true, force: true });
  }

  private stamp(): string {
    return `2026_01_01_00_00_00.${this.generation}`;
  }

  private writeGeneration(content: string): void {
    const dir = join(this.root, `..${this.stamp()}`);
    mkdirSync(dir);
    writeFileSync(join(dir, 'policy.yaml'), content);
  }
}

describe('watchPolicy', () => {
  let cm: ConfigMapDir;
  let reloads: CompiledPolicy[];
  let errors: PolicyError[];
  let watcher: { close(): void } | null;

  beforeEach(() => {
    cm = new ConfigMapDir(policyWithScopes('first'));
    reloads = [];
    errors = [];
    watcher = null;
  });

  afterEach(() => {
    watcher?.close();
    cm.remove();
  });

  const start = (pollIntervalMs?: number): void => {
    watcher = watchPolicy(cm.file, {
      onReload: (p) => reloads.push(p),
      onError: (e) => errors.push(e),
      debounceMs: 20,
      pollIntervalMs,
    });
  };

  it('reloads after a ConfigMap symlink swap, then reports a broken swap without reloading', async () => {
    expect(loadPolicyFile(cm.file).scopes).toEqual(['first']);
    start(); // production poll interval: the directory watch must carry the swap

    cm.swap(policyWithScopes('first', 'second'));
    await vi.waitFor(() => expect(reloads).toHaveLength(1), { timeout: 5000, interval: 20 });
    expect(reloads[0]?.scopes).toEqual(['first', 'second']);
    expect(reloads[0]?.authorize('GET', '/things/1', 'second')).toEqual({ kind: 'allow', permission: 'read' });
    expect(errors).toHaveLength(0);

    cm.swap('version: 1\nscopes:\n  first: [read]\nrules:\n  - methods: [GETT]\n    paths: [/things/**]\n    permission: read\n');
    await vi.waitFor(() => expect(errors).toHaveLength(1), { timeout: 5000, interval: 20 });
    expect(errors[0]?.message).toMatch(/policy\.yaml:5: rules\[0\]\.methods\[0\]: "GETT" is not an HTTP method/);
    expect(reloads).toHaveLength(1);
  });

  it('does not reload when the content of a swap is unchanged', async () => {
    start(100);
    cm.swap(policyWithScopes('first'));
    cm.swap(policyWithScopes('first', 'third'));
    await vi.waitFor(() => expect(reloads).toHaveLength(1), { timeout: 5000, interval: 20 });
    expect(reloads[0]?.scopes).toEqual(['first', 'third']);
  });

  it('picks up a change by polling alone when directory events are missed', async () => {
    // Rewriting the file inside the current generation directory produces no event on the watched
    // directory (inotify does not recurse), so only the poll can notice it.
    start(50);
    writeFileSync(join(cm.root, '..2026_01_01_00_00_00.0', 'policy.yaml'), policyWithScopes('first', 'polled'));
    await vi.waitFor(() => expect(reloads).toHaveLength(1), { timeout: 5000, interval: 20 });
    expect(reloads[0]?.scopes).toEqual(['first', 'polled']);
  });

  it('reports a file that stays missing, and recovers when it returns', async () => {
    start(50);
    rmSync(cm.file);
    await vi.waitFor(() => expect(errors).toHaveLength(1), { timeout: 5000, interval: 20 });
    expect(errors[0]?.message).toBe(`${cm.file}: cannot read policy file: ENOENT`);

    symlinkSync(join('..data', 'policy.yaml'), cm.file);
    cm.swap(policyWithScopes('back'));
    await vi.waitFor(() => expect(reloads).toHaveLength(1), { timeout: 5000, interval: 20 });
    expect(reloads[0]?.scopes).toEqual(['back']);
    expect(errors).toHaveLength(1);
  });

  it('stops calling back after close', async () => {
    start(50);
    watcher?.close();
    cm.swap(policyWithScopes('first', 'late'));
    // Several poll intervals and debounces pass with nobody listening.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(reloads).toHaveLength(0);
    expect(errors).toHaveLength(0);
  });
});
