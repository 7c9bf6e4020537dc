import { defineProject } from 'vitest/config';

export default defineProject({
  // Workspace packages resolve to their sources (the "tierstack-source" export condition).
  ssr: { resolve: { conditions: ['tierstack-source'] } },
  resolve: { conditions: ['tierstack-source'] },
  // Guest boots run under software emulation (TCG): one boot is several seconds, and the first
  // run also downloads QEMU and a kernel into the cache. Files run one after another so two
  // guests never compete for the machine's two cores.
  test: {
    name: 'guestvm',
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 600_000,
    fileParallelism: false,
  },
});
