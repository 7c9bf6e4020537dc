// Core's tests drive handles and StackClients from native threads with the testing kit
// (src/testing/native.ts over the tierstack_core_testing addon, built by build:native).
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { TsStatus, type NativePageStoreHandle } from '../../src/index.js';
import { coreTestingAddon, driveStore, driveStoreSync, readStorePages, runStoreOps, type NativeClientHandle, type OpsResult } from '../../src/testing/index.js';

export type WorkResult = OpsResult;

export interface HammerResult {
  found: number;
  misses: number;
  mismatches: number;
  checksum: number;
  errors: number;
}

const range = (from: number, count: number): number[] => Array.from({ length: count }, (_, i) => from + i);

export const testAddon = {
  createClient: (jsPath: object, maxBatchPages?: number): NativeClientHandle => coreTestingAddon().createClient(jsPath, maxBatchPages),
  closeClient: (c: NativeClientHandle): void => coreTestingAddon().closeClient(c),
  getOnJsThread: (c: NativeClientHandle, ns: bigint, page: number) => coreTestingAddon().getOnJsThread(c, ns, page),
  /** `threads` native threads: thread t does `mode` on pages [t * perThread, (t + 1) * perThread) in batches; gets check version `version`. */
  runWorkers: (c: NativeClientHandle, mode: 'put' | 'get' | 'remove' | 'flush', ns: bigint, threads: number, perThread: number, batch: number, version: number): Promise<WorkResult> =>
    runStoreOps(c, ns, mode, mode === 'flush' ? [0] : range(0, threads * perThread), { threads, batch, version, versions: [version] }),
  readPages: (h: NativePageStoreHandle, ns: bigint, pages: Float64Array, out: Buffer, status: Int32Array, batch: number, threads: number): Promise<number> =>
    readStorePages(h, ns, pages, out, status, batch, threads),
  /** Every thread reads every page `rounds` times; a found page must be version A or B exactly. */
  hammer: (h: NativePageStoreHandle, ns: bigint, pages: Float64Array, batch: number, threads: number, rounds: number, va: number, vb: number): Promise<HammerResult> =>
    runStoreOps(h, ns, 'get', pages, { threads, batch, rounds, split: 'all', versions: [va, vb] }),
  /** One native thread: `iterations` gets of consecutive batches of `pages`. */
  benchGet: async (h: NativePageStoreHandle, ns: bigint, pages: Float64Array, batch: number, iterations: number) => {
    const r = await driveStore(h, ns, 'get', pages, batch, iterations);
    return { nsPerCall: iterations ? r.wallNs / iterations : 0, found: r.calls * batch - r.misses };
  },
  /** The status of one put (zero pages) or remove of `pages` through the handle. */
  storeOp: (h: NativePageStoreHandle, op: 'put' | 'remove', ns: bigint, pages: Float64Array): number =>
    driveStoreSync(h, ns, op, pages, pages.length, 1, { flags: 1, fill: 0 }).status,
};
export type TestAddon = typeof testAddon;

/** Builds core's addons if their sources changed, then returns the drivers. */
export function loadTestAddon(): TestAddon {
  execFileSync(process.execPath, [join(import.meta.dirname, '../../../../scripts/build-native.mjs')], { cwd: join(import.meta.dirname, '..', '..'), stdio: 'inherit' });
  return testAddon;
}

export { TsStatus };
