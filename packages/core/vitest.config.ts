import { defineProject } from 'vitest/config';

export default defineProject({
  resolve: { conditions: ['tierstack-source'] },
  test: { name: 'core', include: ['test/**/*.test.ts'], testTimeout: 30_000 },
});
