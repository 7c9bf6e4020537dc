/**
 * The PageStore interface: batch-first get/put/remove of pages of one namespace.
 *
 * Every tier and the TierStack itself implement it. One call moves many pages because every
 * tier below DRAM pays per round trip. A miss is not an error: `get` reports which pages were
 * found in a mask.
 */
import { TierStackError, ErrorCode, badArgument, closedError } from './errors.js';
import { assertNamespace, MAX_PAGE_NUMBER } from './keys.js';
import { StatsRecorder, type StoreStats } from './stats.js';
import type { NativePageStoreHandle } from './native.js';

export const DEFAULT_PAGE_SIZE = 4096;

/** Page numbers of one batch: any array-like of non-negative safe integers. */
export type PageNumbers = ArrayLike<number>;

export interface GetOptions {
  /** Where to write the pages (n * pageSize bytes); a fresh zeroed Buffer when absent. */
  out?: Buffer;
}

export interface GetResult {
  /** n * pageSize bytes in the order of the request; pages not found are zero-filled. */
  data: Buffer;
  /** found[i] is 1 when page i was found, 0 on a miss. */
  found: Uint8Array;
  /** How many pages were found. */
  hits: number;
}

export interface PutOptions {
  /**
   * The data is newer than anything below this store (write-back). A cache tier must not drop
   * a dirty page: it hands it to its eviction sink first. Stores without caching ignore it.
   */
  dirty?: boolean;
  /**
   * The data is a copy from a tier below (a promotion): a store that holds a dirty copy of the
   * page keeps it (it is newer). Stores that can be written behind the stack's back (native tiers
   * written through the C ABI) must honor it.
   */
  promotion?: boolean;
}

export interface PageStore {
  /** A short name for stats, metrics and logs. */
  readonly name: string;
  /** Bytes per page; every batch buffer is a multiple of it. */
  readonly pageSize: number;
  get(ns: string, pages: PageNumbers, options?: GetOptions): Promise<GetResult>;
  put(ns: string, pages: PageNumbers, data: Uint8Array, options?: PutOptions): Promise<void>;
  remove(ns: string, pages: PageNumbers): Promise<void>;
  /** Makes everything written so far durable (or written down, for a stack). */
  flush(): Promise<void>;
  stats(): StoreStats;
  /** Waits for in-flight calls, releases resources; later calls fail with TS_ERR_CLOSED. */
  close(): Promise<void>;
  /** The C ABI handle of a native tier (see include/tierstack/page_store.h). */
  readonly nativeHandle?: NativePageStoreHandle | undefined;

  // ---- optional capabilities (duck-typed; see the helpers below) ----

  /**
   * The native handle serves reads only: its put/remove answer TS_E_NO_SPACE and writes must take
   * the JavaScript path (FileTier). createJsPath routes them accordingly.
   */
  readonly nativeReadOnly?: boolean;
  /** Names a namespace for the tier's native side (which sees 64-bit ids only); returns the id. */
  registerNamespace?(ns: string): bigint;
  /**
   * Forgets every page of a namespace and gives its storage back (FileTier: deletes its directory;
   * RedisTier: deletes its keys and resolves to how many). The resolved value is tier-specific.
   */
  removeNamespace?(ns: string): Promise<unknown>;
  /** Bytes of storage allocated for one namespace, or for the whole store (FileTier: st_blocks * 512). */
  diskUsage?(ns?: string): Promise<number>;
  /**
   * Pages a stack above has queued for writing into this store (TierStack write-back queues):
   * until cleared, the store's native handle must not serve an older copy of them (FileTier
   * answers them as misses, sending native readers to the stack's JavaScript path).
   */
  markPendingWrite?(ns: string, pages: readonly number[]): void;
  clearPendingWrite?(ns: string, pages: readonly number[]): void;
}

/** A store that can drop a whole namespace (and give its space back). */
export function canRemoveNamespace(store: PageStore): store is PageStore & { removeNamespace(ns: string): Promise<unknown> } {
  return typeof store.removeNamespace === 'function';
}

/** A store that reports the storage it allocates. */
export function hasDiskUsage(store: PageStore): store is PageStore & { diskUsage(ns?: string): Promise<number> } {
  return typeof store.diskUsage === 'function';
}

/** Pages that leave a cache tier while dirty; the receiver owns `data` from then on. */
export interface EvictedPages {
  ns: string;
  pages: number[];
  /** pages.length * pageSize bytes. */
  data: Buffer;
}

/** Receives dirty evictions synchronously; it must take the data and not throw. */
export type EvictionSink = (batch: EvictedPages) => void;

/**
 * A tier that can hold dirty pages (the top of a write-back stack). It never drops a dirty page
 * silently: evictions go to the sink, and flushDirty() writes dirty pages out and marks them
 * clean only if they did not change meanwhile.
 */
export interface WriteBackCache extends PageStore {
  setEvictionSink(sink: EvictionSink | undefined): void;
  flushDirty(write: (batch: EvictedPages) => Promise<void>, options?: { batchPages?: number }): Promise<number>;
  /** Number of dirty pages held now. */
  dirtyCount(): number;
}

export function isWriteBackCache(store: PageStore): store is WriteBackCache {
  const s = store as Partial<WriteBackCache>;
  return typeof s.setEvictionSink === 'function' && typeof s.flushDirty === 'function';
}

/** Checks a page-number batch and returns it as a plain number array. */
export function checkPages(pages: PageNumbers): number[] {
  if (pages === null || typeof pages !== 'object' || typeof pages.length !== 'number') {
    throw badArgument('pages must be an array of page numbers');
  }
  const out = new Array<number>(pages.length);
  for (let i = 0; i < pages.length; i++) {
    const p = pages[i];
    if (typeof p !== 'number' || !Number.isInteger(p) || p < 0 || p > MAX_PAGE_NUMBER) {
      throw badArgument(`page number at index ${i} is not an integer in [0, 2^53)`, { index: i, page: p });
    }
    out[i] = p;
  }
  return out;
}

/** Checks that `data` holds exactly `count` pages of `pageSize` bytes. */
export function checkData(data: unknown, count: number, pageSize: number): Buffer {
  if (!(data instanceof Uint8Array)) throw badArgument('data must be a Buffer or Uint8Array');
  if (data.byteLength % pageSize !== 0) {
    throw new TierStackError(ErrorCode.PageSize, `data length ${data.byteLength} is not a multiple of the page size ${pageSize}`, {
      details: { length: data.byteLength, pageSize },
    });
  }
  if (data.byteLength !== count * pageSize) {
    throw badArgument(`data holds ${data.byteLength / pageSize} pages but ${count} page numbers were given`);
  }
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** Returns (or checks) the output buffer of a get. */
export function outputBuffer(out: Buffer | undefined, count: number, pageSize: number): Buffer {
  if (out === undefined) return Buffer.alloc(count * pageSize);
  if (!Buffer.isBuffer(out) || out.byteLength !== count * pageSize) {
    throw badArgument(`out must be a Buffer of ${count * pageSize} bytes`);
  }
  return out;
}

export function checkPageSize(pageSize: number): number {
  if (!Number.isInteger(pageSize) || pageSize < 512 || (pageSize & (pageSize - 1)) !== 0 || pageSize > 1 << 30) {
    throw new TierStackError(ErrorCode.PageSize, `page size ${pageSize} is not a power of two in [512, 1 GiB]`);
  }
  return pageSize;
}

/**
 * Shared plumbing for stores: argument checks, the closed state, waiting for in-flight calls
 * on close, and stats. Subclasses implement the do* methods on already-validated input.
 */
export abstract class BasePageStore implements PageStore {
  readonly pageSize: number;
  protected readonly recorder: StatsRecorder;
  // ES private fields: subclasses (tiers written by anyone) cannot collide with them.
  #closed = false;
  #closing: Promise<void> | undefined;
  readonly #calls = new Set<Promise<unknown>>();

  constructor(
    readonly name: string,
    pageSize: number = DEFAULT_PAGE_SIZE,
  ) {
    this.pageSize = checkPageSize(pageSize);
    this.recorder = new StatsRecorder(name);
  }

  get nativeHandle(): NativePageStoreHandle | undefined {
    return undefined;
  }

  /** Copies found pages into `out` (page i at i * pageSize), sets found[i] = 1, returns the hit
   *  count. Must not write the slots of missing pages. */
  protected abstract doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number>;
  protected abstract doPut(ns: string, pages: number[], data: Buffer, options: PutOptions): Promise<void>;
  protected abstract doRemove(ns: string, pages: number[]): Promise<void>;
  protected async doFlush(): Promise<void> {}
  protected async doClose(): Promise<void> {}
  /** Tier-specific figures merged into stats() (occupancy, dirty pages, ...). */
  protected extraStats(): Record<string, number> {
    return {};
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  protected assertOpen(): void {
    if (this.#closed) throw closedError(`store ${this.name}`);
  }

  /** Runs `fn` as an in-flight call that close() waits for. */
  protected track<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(closedError(`store ${this.name}`));
    const p = fn();
    this.#calls.add(p);
    const done = (): void => void this.#calls.delete(p);
    p.then(done, done);
    return p;
  }

  get(ns: string, pages: PageNumbers, options: GetOptions = {}): Promise<GetResult> {
    return this.track(async () => {
      assertNamespace(ns);
      const list = checkPages(pages);
      const data = outputBuffer(options.out, list.length, this.pageSize);
      const found = new Uint8Array(list.length);
      const t0 = process.hrtime.bigint();
      let hits = 0;
      try {
        hits = list.length === 0 ? 0 : await this.doGet(ns, list, data, found);
      } catch (err) {
        this.recorder.error('get');
        throw err;
      }
      this.recorder.record('get', t0, list.length, hits, hits * this.pageSize);
      // A caller's buffer may hold old bytes: zero the misses (doGet writes found pages only).
      if (options.out !== undefined && hits < list.length) {
        for (let i = 0; i < list.length; i++) if (!found[i]) data.fill(0, i * this.pageSize, (i + 1) * this.pageSize);
      }
      return { data, found, hits };
    });
  }

  put(ns: string, pages: PageNumbers, data: Uint8Array, options: PutOptions = {}): Promise<void> {
    return this.track(async () => {
      assertNamespace(ns);
      const list = checkPages(pages);
      const buf = checkData(data, list.length, this.pageSize);
      if (list.length === 0) return;
      const t0 = process.hrtime.bigint();
      try {
        await this.doPut(ns, list, buf, options);
      } catch (err) {
        this.recorder.error('put');
        throw err;
      }
      this.recorder.record('put', t0, list.length, list.length, buf.byteLength);
    });
  }

  remove(ns: string, pages: PageNumbers): Promise<void> {
    return this.track(async () => {
      assertNamespace(ns);
      const list = checkPages(pages);
      if (list.length === 0) return;
      const t0 = process.hrtime.bigint();
      try {
        await this.doRemove(ns, list);
      } catch (err) {
        this.recorder.error('remove');
        throw err;
      }
      this.recorder.record('remove', t0, list.length, list.length, 0);
    });
  }

  flush(): Promise<void> {
    return this.track(() => this.doFlush());
  }

  stats(): StoreStats {
    return this.recorder.snapshot(this.extraStats());
  }

  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    this.#closing = (async () => {
      await Promise.allSettled([...this.#calls]);
      await this.doClose();
    })();
    return this.#closing;
  }
}
