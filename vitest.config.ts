import { defineConfig } from 'vitest/config';
import FailedFilesReporter from './scripts/failed-files-reporter.js';

// One vitest project per package (each package has its own vitest.config.ts).
// Workspace packages resolve to their TypeScript sources through the "tierstack-source"
// export condition, so tests never run against a stale dist/.
// The second reporter names, at the very end, each file behind a red run (a crashed worker
// included, which vitest's summary leaves anonymous).
export default defineConfig({
  test: {
    projects: ['packages/*/vitest.config.ts', 'tools/*/vitest.config.ts'],
    reporters: ['default', new FailedFilesReporter()],
  },
});
