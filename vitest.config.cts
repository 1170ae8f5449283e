// CommonJS on purpose: Vite loads an ESM config through a temporary file in node_modules/.vite-temp,
// and any write under node_modules makes npm (npx) reread the whole tree on every call.
const config: import('vitest/config').ViteUserConfig = {
  // Not node_modules/.vite, for the same reason.
  cacheDir: '.cache/vite',
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    // Generous: CI shares 2 cores between many test processes, servers and load generators.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
};

export = config;
