/**
 * The registered benchmark suites. Suites of other packages are loaded on demand so that the
 * bench runs with whatever packages are built.
 */
import type { Suite } from './harness.js';

export type SuiteLoader = () => Promise<Suite>;

const loaders = new Map<string, SuiteLoader>([
  ['memory', async () => (await import('./suites/memory.js')).memorySuite],
  ['file', async () => (await import('./suites/file.js')).fileSuite],
  ['rdma', async () => (await import('./suites/rdma.js')).rdmaSuite],
  ['cxl', async () => (await import('./suites/cxl.js')).cxlSuite],
  ['redis', async () => (await import('./suites/redis.js')).redisSuite],
  ['restore', async () => (await import('./suites/restore.js')).restoreSuite],
  ['uffd', async () => (await import('./suites/uffd.js')).uffdSuite],
  ['ublk', async () => (await import('./suites/ublk.js')).ublkSuite],
  ['run', async () => (await import('./suites/run.js')).runSuite],
]);

export function registerSuite(name: string, loader: SuiteLoader): void {
  loaders.set(name, loader);
}

export function suiteNames(): string[] {
  return [...loaders.keys()];
}

export async function loadSuite(name: string): Promise<Suite> {
  const loader = loaders.get(name);
  if (!loader) throw new Error(`unknown bench suite "${name}" (known: ${suiteNames().join(', ')})`);
  return loader();
}
