import { defineConfig } from 'vitest/config';

// One vitest project per package (each package has its own vitest.config.ts).
// Workspace packages resolve to their TypeScript sources through the "tierstack-source"
// export condition, so tests never run against a stale dist/.
export default defineConfig({
  test: {
    projects: ['packages/*/vitest.config.ts', 'tools/*/vitest.config.ts'],
  },
});
