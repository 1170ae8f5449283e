import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CONFIG_VARIABLES, settingDocs } from '../../src/config.js';
import { CONFIG_DOC_PATH, REGENERATE, renderConfigurationDoc } from '../../scripts/config-docs.js';

describe('docs/configuration.md', () => {
  it('is what the schema in src/config.ts generates', () => {
    const onDisk = readFileSync(CONFIG_DOC_PATH, 'utf8');
    expect(onDisk === renderConfigurationDoc(), `docs/configuration.md differs from src/config.ts: run \`${REGENERATE}\``).toBe(true);
  });

  it('gives every setting a description, a default and a unit', () => {
    const docs = settingDocs();
    expect(docs.map((d) => d.name)).toEqual([...CONFIG_VARIABLES]);
    for (const { name, doc } of docs) {
      expect(doc?.description, `${name}: description`).toMatch(/\S/);
      expect(doc?.unit, `${name}: unit`).toMatch(/\S/);
    }
    const doc = renderConfigurationDoc();
    for (const name of CONFIG_VARIABLES) expect(doc).toMatch(new RegExp(`^\\| \`${name}\` \\| [^|]*\\S`, 'm'));
    expect(doc).toContain('| `STORE_TIMEOUT_MS` | `100` | milliseconds |');
    expect(doc).toContain('| `REDIS_URL` | unset | URL |');
  });
});
