import { defineProject } from 'vitest/config';

export default defineProject({
  // Workspace packages resolve to their sources (the "tierstack-source" export condition).
  ssr: { resolve: { conditions: ['tierstack-source'] } },
  resolve: { conditions: ['tierstack-source'] },
  // Block devices, mounts and swap areas are machine-global: run this package's files one at a time.
  test: { name: 'ublk', include: ['test/**/*.test.ts'], globalSetup: ['test/global-setup.ts'], testTimeout: 120_000, hookTimeout: 60_000, fileParallelism: false },
});
