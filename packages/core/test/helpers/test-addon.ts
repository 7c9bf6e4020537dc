// Loads core's test addon (test/addon: built on demand by scripts/build-native.mjs).
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { NativePageStoreHandle } from '../../src/index.js';

export interface WorkResult {
  mismatches: number;
  misses: number;
  errors: number;
  found: number;
  lastError: number;
  byLevel: number[];
}

export interface HammerResult {
  found: number;
  misses: number;
  mismatches: number;
  checksum: number;
  errors: number;
}

export interface TestAddon {
  createMapStore(pageSize: number, name: string): NativePageStoreHandle;
  mapStoreOp(h: NativePageStoreHandle, op: number, ns: bigint, pages: Float64Array, buf?: Buffer, found?: Uint8Array): number;
  createClient(jsPath: object, maxBatchPages?: number): object;
  closeClient(c: object): void;
  runWorkers(c: object, mode: string, ns: bigint, threads: number, perThread: number, batch: number, version: number): Promise<WorkResult>;
  getOnJsThread(c: object, ns: bigint, page: number): { rc: number; status: number };
  /** Native threads read `pages` through the handle into out/status (batches dealt round-robin). */
  readPages(h: NativePageStoreHandle, ns: bigint, pages: Float64Array, out: Buffer, status: Int32Array, batch: number, threads: number): Promise<number>;
  hammer(h: NativePageStoreHandle, ns: bigint, pages: Float64Array, batch: number, threads: number, rounds: number, versionA: number, versionB: number): Promise<HammerResult>;
  benchGet(h: NativePageStoreHandle, ns: bigint, pages: Float64Array, batch: number, iterations: number): Promise<{ nsPerCall: number; found: number }>;
  storeOp(h: NativePageStoreHandle, op: 'put' | 'remove', ns: bigint, pages: Float64Array): number;
}

const addonDir = join(import.meta.dirname, '..', 'addon');

export function loadTestAddon(): TestAddon {
  execFileSync(process.execPath, [join(import.meta.dirname, '../../../../scripts/build-native.mjs')], { cwd: addonDir, stdio: 'inherit' });
  return createRequire(import.meta.url)(join(addonDir, 'build/Release/stack_client_test.node')) as TestAddon;
}
