/**
 * Test and benchmark helpers: a native toucher (touches pages of an address range on its own
 * thread, so the JS thread never blocks in a fault) and a native in-process page store with a
 * C ABI handle and fault injection (a stand-in for a native tier where none is built).
 */
import { BasePageStore, DEFAULT_PAGE_SIZE, namespaceId, type NativePageStoreHandle, type PutOptions } from '@tierstack/core';
import { uffdAddon } from './native.js';

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
  return uffdAddon().touchPages(address, Float64Array.from(pages as ArrayLike<number>), pageSize, options.out, options.write, options.cpu);
}

/** The calling thread's kernel thread id. */
export function gettid(): number {
  return uffdAddon().gettid();
}

/** Pins the calling thread (the JS thread when called from JS) to `cpus` ([] = all CPUs). */
export function pinCurrentThread(cpus: number[]): void {
  uffdAddon().pinCurrentThread(cpus);
}

/** A native DRAM page store (hash map) exposed both as a PageStore and as a C ABI handle. */
export class NativeTestTier extends BasePageStore {
  readonly #handle: NativePageStoreHandle;

  constructor(options: { pageSize?: number; name?: string } = {}) {
    super(options.name ?? 'native-test', options.pageSize ?? DEFAULT_PAGE_SIZE);
    this.#handle = uffdAddon().createTestStore(this.pageSize);
  }

  override get nativeHandle(): NativePageStoreHandle {
    return this.#handle;
  }

  /** Makes pages answer with a TS_E_* status (e.g. -5 = TS_E_CHECKSUM); 0 clears. */
  failPages(ns: string, pages: ArrayLike<number>, status: number): void {
    uffdAddon().testStoreOp(this.#handle, 'fail', namespaceId(ns), Float64Array.from(pages as ArrayLike<number>), undefined, status);
  }

  count(): number {
    return uffdAddon().testStoreOp(this.#handle, 'count') as number;
  }

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const tmp = Buffer.alloc(out.length);
    const st = uffdAddon().testStoreOp(this.#handle, 'get', namespaceId(ns), Float64Array.from(pages), tmp) as Int32Array;
    let hits = 0;
    for (let i = 0; i < pages.length; i++) {
      if (st[i] !== 1) continue;
      tmp.copy(out, i * this.pageSize, i * this.pageSize, (i + 1) * this.pageSize);
      found[i] = 1;
      hits++;
    }
    return hits;
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, _options: PutOptions): Promise<void> {
    uffdAddon().testStoreOp(this.#handle, 'put', namespaceId(ns), Float64Array.from(pages), data);
  }

  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    uffdAddon().testStoreOp(this.#handle, 'remove', namespaceId(ns), Float64Array.from(pages));
  }
}
