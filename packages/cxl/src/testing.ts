/**
 * Test and benchmark hooks of @tierstack/cxl: the test-only addon `tierstack_cxl_testing`
 * (binding.gyp; sources in native/testing/), never loaded by CxlTier. Loops over a tier's C ABI
 * are the testing kit's drivers (@tierstack/core/testing: driveStore, stressStore,
 * runNativeStoreConformance).
 */
import { loadNativeAddon } from '@tierstack/core';
import { packageDir } from './native.js';

/** A memfd mapping standing in for a region in the memcpy baseline. */
export interface MemcpyBaselineHandle {
  readonly __cxlMemcpyBaseline: unique symbol;
}

export interface CxlTestingAddon {
  memcpyBaseline(spanPages: number, pageSize: number): MemcpyBaselineHandle;
  /** Thread CPU ns of `iterations` batches of memcpy, walking `pages` from index `start`. */
  benchMemcpy(b: MemcpyBaselineHandle, mode: 'get' | 'put', pages: Float64Array, batch: number, iterations: number, start?: number): number;
  /** Opens the file region at `path` and starts a put of `page` that never finishes (then die: SIGKILL). */
  abandonPut(path: string, ns: bigint, page: number, fill?: number): number;
}

let addon: CxlTestingAddon | undefined;

export function cxlTestingAddon(): CxlTestingAddon {
  addon ??= loadNativeAddon<CxlTestingAddon>({ packageDir, name: 'tierstack_cxl_testing', packageName: '@tierstack/cxl' });
  return addon;
}

/** The path of the testing addon (for child processes that load it directly). */
export const cxlTestingAddonPath = `${packageDir}/build/Release/tierstack_cxl_testing.node`;

/** A baseline memory area of `spanPages` pages (memfd, MAP_SHARED, faulted in). */
export function memcpyBaseline(spanPages: number, pageSize: number): MemcpyBaselineHandle {
  return cxlTestingAddon().memcpyBaseline(spanPages, pageSize);
}

/** Thread CPU ns of copying the same page numbers a tier benchmark walks, to or from the baseline. */
export function benchMemcpy(b: MemcpyBaselineHandle, mode: 'get' | 'put', pages: Float64Array, batch: number, iterations: number, start?: number): number {
  return cxlTestingAddon().benchMemcpy(b, mode, pages, batch, iterations, start);
}
