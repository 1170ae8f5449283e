// Lint: typescript-eslint's recommended rules over src, test and bench, and the import direction
// of src (docs/architecture.md): a layer imports only from the layers listed before it.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import importX from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

/** Bottom to top. Each entry is one layer; paths in one layer may import each other. */
const LAYERS = [
  ['src/time', 'src/net', 'src/config.ts', 'src/paths.ts', 'src/lru.ts'],
  ['src/store', 'src/observability'],
  ['src/policy'],
  ['src/keys'],
  ['src/ratelimit'],
  ['src/budget'],
  ['src/check'],
  ['src/transport'],
  ['src/service.ts', 'src/signals.ts'],
  ['src/dev'],
  ['src/cli'],
];

const layerZones = LAYERS.flatMap((layer, i) =>
  layer.flatMap((target) =>
    LAYERS.slice(i + 1).flat().map((from) => ({ target: `./${target}`, from: `./${from}`, message: 'imports point down the layers (docs/architecture.md)' })),
  ),
);

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/', 'helm/', 'deploy/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: 'readonly', Buffer: 'readonly', console: 'readonly', URL: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly' } },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/**/*.ts'],
    plugins: { 'import-x': importX },
    settings: {
      'import-x/extensions': ['.ts', '.js'],
      'import-x/parsers': { '@typescript-eslint/parser': ['.ts'] },
      'import-x/resolver-next': [createTypeScriptImportResolver({ project: './tsconfig.json' })],
    },
    rules: {
      'import-x/no-restricted-paths': ['error', { zones: layerZones }],
      // Type-only imports are erased at build time and are not counted as cycles.
      'import-x/no-cycle': ['error', { ignoreExternal: true }],
    },
  },
);
