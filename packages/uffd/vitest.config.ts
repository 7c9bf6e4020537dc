import { defineProject } from 'vitest/config';

export default defineProject({
  // Workspace packages resolve to their sources (the "tierstack-source" export condition).
  ssr: { resolve: { conditions: ['tierstack-source'] } },
  resolve: { conditions: ['tierstack-source'] },
  // Tests share one 2-core machine and real kernel objects: run files one at a time.
  test: { name: 'uffd', include: ['test/**/*.test.ts'], testTimeout: 60_000, fileParallelism: false },
});
