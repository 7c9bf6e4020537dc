import { defineProject } from 'vitest/config';

export default defineProject({
  // Workspace packages resolve to their sources (the "tierstack-source" export condition).
  ssr: { resolve: { conditions: ['tierstack-source'] } },
  resolve: { conditions: ['tierstack-source'] },
  test: { name: 'cxl', include: ['test/**/*.test.ts'], testTimeout: 60_000 },
});
