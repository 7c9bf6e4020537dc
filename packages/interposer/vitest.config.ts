import { defineProject } from 'vitest/config';

export default defineProject({
  // Workspace packages resolve to their sources (the "tierstack-source" export condition).
  ssr: { resolve: { conditions: ['tierstack-source'] } },
  resolve: { conditions: ['tierstack-source'] },
  // Real processes and kernel objects on a shared 2-core machine: one file at a time.
  test: { name: 'interposer', include: ['test/**/*.test.ts'], testTimeout: 60_000, fileParallelism: false },
});
