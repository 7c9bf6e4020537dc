import { defineProject } from 'vitest/config';

export default defineProject({
  resolve: { conditions: ['tierstack-source'] },
  test: { name: 'bench', include: ['test/**/*.test.ts'], testTimeout: 60_000 },
});
