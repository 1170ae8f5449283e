import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    // Generous: CI shares 2 cores between many test processes, servers and load generators.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
