// package.json "engines" promises only Node versions every installed dependency accepts.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';

const ROOT = new URL('../../', import.meta.url);
const semver = createRequire(import.meta.url)('semver') as {
  satisfies: (version: string, range: string) => boolean;
  minVersion: (range: string) => { version: string } | null;
};
const pkg = JSON.parse(readFileSync(new URL('package.json', ROOT), 'utf8')) as { engines: { node: string } };
const lock = JSON.parse(readFileSync(new URL('package-lock.json', ROOT), 'utf8')) as {
  packages: Record<string, { version?: string; engines?: { node?: string } | string[] }>;
};

// cookie@2 (through fastify's light-my-request, loaded only by fastify's inject) says ">=22", but it
// is an ES module that Node loads through require() from 20.19 on, which the suite does on Node 20.
const CLAIMS_BEYOND_NEED = new Set(['node_modules/cookie']);

describe('package.json engines', () => {
  it('covers the Node running this suite', () => {
    expect(semver.satisfies(process.versions.node, pkg.engines.node)).toBe(true);
  });

  it('starts each of its ranges at a version every dependency accepts', () => {
    const floors = pkg.engines.node.split('||').map((r) => semver.minVersion(r.trim())!.version);
    expect(floors).toEqual(['20.19.0', '22.13.0', '24.0.0']);
    const refused: string[] = [];
    for (const [path, entry] of Object.entries(lock.packages)) {
      const range = !Array.isArray(entry.engines) ? entry.engines?.node : undefined;
      if (!path || !range || CLAIMS_BEYOND_NEED.has(path)) continue;
      for (const floor of floors) if (!semver.satisfies(floor, range)) refused.push(`${path}@${entry.version} needs ${range}, not ${floor}`);
    }
    expect(refused).toEqual([]);
  });
});
