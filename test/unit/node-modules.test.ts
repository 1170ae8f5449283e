// npm (npx) trusts node_modules/.package-lock.json only while nothing under node_modules is newer:
// a cache written there makes every later `npx ryvion-authz` reread the whole tree.
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const NODE_MODULES = fileURLToPath(new URL('../../node_modules', import.meta.url));

describe('tests and tools keep their caches out of node_modules', () => {
  it('node_modules holds no cache directory (.cache, .vite, .vite-temp)', () => {
    const caches = readdirSync(NODE_MODULES).filter((name) => ['.cache', '.vite', '.vite-temp'].includes(name));
    expect(caches, 'something wrote a cache under node_modules (left over from an older checkout? then run npm ci)').toEqual([]);
  });
});
