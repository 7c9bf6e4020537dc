import { defineProject } from 'vitest/config';

export default defineProject({
  // Workspace packages resolve to their sources (the "tierstack-source" export condition).
  ssr: { resolve: { conditions: ['tierstack-source'] } },
  resolve: { conditions: ['tierstack-source'] },
  // memd processes are real: tests of one file share them, files run one after another (2 cores).
  test: { name: 'rdma', include: ['test/**/*.test.ts'], testTimeout: 60_000, hookTimeout: 60_000, fileParallelism: false },
});
