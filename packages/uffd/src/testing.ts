/**
 * Test and benchmark helpers of @tierstack/uffd: the test-only addon `tierstack_uffd_testing`
 * (binding.gyp; sources in native/testing/), never loaded by the library — a native toucher
 * (touches pages of an address range on its own thread, so the JS thread never blocks in a
 * fault) and thread placement — plus `NativeTestTier`, the testing kit's native reference tier
 * (@tierstack/core/testing NativeReferenceTier: a C ABI handle with fault injection, a stand-in
 * for a native tier where none is built).
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_PAGE_SIZE, loadNativeAddon } from '@tierstack/core';
import { NativeReferenceTier } from '@tierstack/core/testing';

export interface UffdTestingAddon {
  touchPages(address: bigint, pages: Float64Array, pageSize: number, out?: Buffer, write?: Buffer, cpu?: number): Promise<void>;
  gettid(): number;
  pinCurrentThread(cpus: number[]): void;
}

let addon: UffdTestingAddon | undefined;

export function uffdTestingAddon(): UffdTestingAddon {
  addon ??= loadNativeAddon<UffdTestingAddon>({
    packageDir: join(dirname(fileURLToPath(import.meta.url)), '..'),
    name: 'tierstack_uffd_testing',
    packageName: '@tierstack/uffd',
    aptPackages: ['g++', 'make', 'python3'],
  });
  return addon;
}

export interface TouchOptions {
  /** Copy each page here (page i at i * pageSize). */
  out?: Buffer;
  /** Write each page from here instead of reading. */
  write?: Buffer;
  /** Pin the toucher thread to this CPU. */
  cpu?: number;
}

/** Touches `pages` (page indexes from `address`) on a new native thread. */
export function touchPages(address: bigint, pages: ArrayLike<number>, pageSize: number, options: TouchOptions = {}): Promise<void> {
  return uffdTestingAddon().touchPages(address, Float64Array.from(pages as ArrayLike<number>), pageSize, options.out, options.write, options.cpu);
}

/** The calling thread's kernel thread id. */
export function gettid(): number {
  return uffdTestingAddon().gettid();
}

/** Pins the calling thread (the JS thread when called from JS) to `cpus` ([] = all CPUs). */
export function pinCurrentThread(cpus: number[]): void {
  uffdTestingAddon().pinCurrentThread(cpus);
}

/**
 * A native DRAM page store (hash map) exposed both as a PageStore and as a C ABI handle: the
 * testing kit's reference tier, named 'native-test'. Its handle keeps serving native callers
 * after close() (fault threads may outlive the stack in tests).
 */
export class NativeTestTier extends NativeReferenceTier {
  constructor(options: { pageSize?: number; name?: string } = {}) {
    super({ pageSize: options.pageSize ?? DEFAULT_PAGE_SIZE, name: options.name ?? 'native-test', closeHandle: false });
  }
}
