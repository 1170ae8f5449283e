// Writes docs/configuration.md from the schema in src/config.ts: `npm run docs:config`.
// test/unit/config-docs.test.ts fails when the file and the schema part.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { settingDocs } from '../src/config.js';

export const CONFIG_DOC_PATH = fileURLToPath(new URL('../docs/configuration.md', import.meta.url));
export const REGENERATE = 'npm run docs:config';

/** A table cell: pipes would end the cell, newlines the row. */
function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function defaultText(doc: { default?: string }, parsed: unknown): string {
  if (doc.default !== undefined) return doc.default;
  if (parsed === undefined) return 'unset';
  return `\`${String(parsed)}\``;
}

export function renderConfigurationDoc(): string {
  const rows = settingDocs().map(({ name, doc, parsedDefault }) => `| \`${name}\` | ${cell(defaultText(doc, parsedDefault))} | ${cell(doc.unit)} | ${cell(doc.description)} |`);
  return [
    '# Configuration',
    '',
    `<!-- Generated from src/config.ts by \`${REGENERATE}\`: edit the schema there, not this file. -->`,
    '',
    'Environment variables, validated at start-up: a bad value stops the process with one line',
    'naming the variable (values are never echoed). An empty value counts as unset.',
    '',
    '| variable | default | unit | meaning |',
    '|---|---|---|---|',
    ...rows,
    '',
    '`DATA_DIR` (default `./.ryvion-authz`, relative to the working directory) is read only by `dev`',
    'and, when `DATABASE_URL` is unset, by the admin commands: see [dev-mode.md](dev-mode.md).',
    '',
  ].join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeFileSync(CONFIG_DOC_PATH, renderConfigurationDoc());
  process.stdout.write(`wrote ${CONFIG_DOC_PATH}\n`);
}
