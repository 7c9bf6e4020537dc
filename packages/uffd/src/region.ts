/**
 * UffdRegion: one address range whose pages come from a namespace of the engine's stack on
 * first touch. In-process regions expose the memory as a Buffer; adopted regions live in
 * another process (only their address is meaningful here).
 */
import { EventEmitter } from 'node:events';
import { TierStackError, ErrorCode, badArgument, closedError, type LatencySummary } from '@tierstack/core';
import type { NativeRegionStats, NativeSource } from './native.js';
import { summarizeBuckets } from './latency.js';

export type MissingPolicy = 'zero' | 'strict';

/** The engine's counters for a region (pagesByLevel[i]: pages served by stack level i, the
 *  native tiers first, then the JS path) plus its identity and a fault service-time summary. */
export interface RegionStats extends Omit<NativeRegionStats, 'latencyBuckets' | 'latencySumNs' | 'latencyMaxNs'> {
  name: string;
  namespace: string;
  pages: number;
  /** Pages installed now (per the engine's bitmap). */
  residentPages: number;
  /** Fault service time: from reading the fault to waking the faulting thread. */
  latency: LatencySummary;
}

/** A page that could not be served: the faulting thread got SIGBUS (strict) or an error. */
export interface PageErrorEvent {
  region: string;
  address: bigint;
  /** Stack page number. */
  page: number;
  code: string;
  cause: string;
  /** Faulting thread id (in-process regions), 0 when unknown. */
  tid: number;
}

export interface RegionDescription {
  name: string;
  namespace: string;
  pageSize: number;
  pageOffset: number;
  missing: MissingPolicy;
  faultAround: number;
  managed: boolean;
  budgetPages: number;
}

export class UffdRegion extends EventEmitter {
  readonly address: bigint;
  readonly size: number;
  readonly pages: number;
  readonly id: number;
  #buffer: Buffer | undefined;
  #closed = false;

  /** @internal */
  constructor(
    private readonly source: NativeSource,
    private readonly index: number,
    readonly description: RegionDescription,
    private readonly inProcess: boolean,
    private readonly onClose: (() => Promise<void>) | undefined,
  ) {
    super();
    const info = source.regionInfo(index);
    this.address = info.address;
    this.size = info.size;
    this.pages = info.pages;
    this.id = info.id;
  }

  get name(): string {
    return this.description.name;
  }
  get namespace(): string {
    return this.description.namespace;
  }
  get pageSize(): number {
    return this.description.pageSize;
  }
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * The region's memory (in-process regions). Touching a page that only the JS path can serve
   * from the JS thread cannot work (the thread would wait for itself): such a fault is failed
   * (SIGBUS) and reported as TS_ERR_DEADLOCK. Use read(), prefetch() or another thread.
   */
  get buffer(): Buffer {
    this.assertOpen();
    if (!this.inProcess) throw new TierStackError(ErrorCode.Unsupported, 'an adopted region lives in another process');
    this.#buffer ??= Buffer.from(this.source.buffer(this.index));
    return this.#buffer;
  }

  /**
   * Installs the given pages (region page indexes, in the order they should arrive) on a native
   * thread: chunk by chunk (`chunkPages`, default all at once), each installed without waking
   * anyone and then woken once, so a toucher runs on the first chunks while later ones arrive.
   * Demand faults keep being served meanwhile. Resolves with the pages installed.
   */
  async prefetch(pages: ArrayLike<number>, options: { chunkPages?: number } = {}): Promise<number> {
    this.assertOpen();
    const list = Float64Array.from(pages as ArrayLike<number>);
    for (const p of list) if (!Number.isInteger(p) || p < 0 || p >= this.pages) throw badArgument(`page ${p} is outside the region (0..${this.pages - 1})`);
    const chunk = options.chunkPages ?? 0;
    if (!Number.isInteger(chunk) || chunk < 0) throw badArgument('chunkPages must be a non-negative integer');
    return this.source.prefetch(this.index, list, chunk);
  }

  /**
   * Makes pages [first, first + count) resident from the JS thread, using native tiers only.
   * Throws TS_ERR_DEADLOCK when a page needs the JS path, and the tier's error when a page
   * cannot be produced — never hangs and never poisons.
   */
  ensureResident(first: number, count: number): number {
    this.assertOpen();
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0 || first + count > this.pages) {
      throw badArgument('page range outside the region');
    }
    return this.source.ensure(this.index, first, count);
  }

  /** Reads bytes safely from the JS thread (see ensureResident). */
  read(offset: number, length: number): Buffer {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw badArgument('byte range outside the region');
    }
    if (length === 0) return Buffer.alloc(0);
    const ps = this.pageSize;
    const first = Math.floor(offset / ps);
    this.ensureResident(first, Math.floor((offset + length - 1) / ps) - first + 1);
    return Buffer.from(this.buffer.subarray(offset, offset + length));
  }

  /** Managed regions: writes every dirty page back to the stack (then flushes the stack). */
  flush(): Promise<void> {
    this.assertOpen();
    return this.source.flush(this.index);
  }

  /** In-process regions: drops resident pages [first, first + count) (default: all; managed
   *  regions write dirty pages back first); the next touch faults again. */
  discard(first = 0, count = this.pages - first): void {
    this.assertOpen();
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0 || first + count > this.pages) {
      throw badArgument('page range outside the region');
    }
    this.source.discard(this.index, first, count);
  }

  stats(): RegionStats {
    this.assertOpen();
    const s = this.source.stats(this.index);
    return {
      name: this.name,
      namespace: this.namespace,
      pages: this.pages,
      residentPages: this.source.residentPages(this.index),
      faults: s.faults,
      wpFaults: s.wpFaults,
      pagesInstalled: s.pagesInstalled,
      zeroPages: s.zeroPages,
      poisoned: s.poisoned,
      alreadyPresent: s.alreadyPresent,
      eagainRetries: s.eagainRetries,
      prefetched: s.prefetched,
      jsPathPages: s.jsPathPages,
      deadlocks: s.deadlocks,
      evictions: s.evictions,
      writebacks: s.writebacks,
      writebackErrors: s.writebackErrors,
      removedPages: s.removedPages,
      pagesByLevel: trimZeros(s.pagesByLevel),
      latency: summarizeBuckets(s.latencyBuckets, s.latencySumNs, s.latencyMaxNs),
    };
  }

  /**
   * Stops serving the region. In-process regions: managed dirty pages are written back first,
   * then the memory is unregistered and unmapped (the Buffer is detached).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    if (this.inProcess && this.description.managed) await this.source.flush(this.index).catch(() => undefined);
    this.#closed = true;
    this.#buffer = undefined;
    await this.onClose?.();
  }

  /** @internal */
  markClosed(): void {
    this.#closed = true;
    this.#buffer = undefined;
  }

  private assertOpen(): void {
    if (this.#closed) throw closedError(`region ${this.name}`);
  }
}

function trimZeros(xs: number[]): number[] {
  let n = xs.length;
  while (n > 0 && xs[n - 1] === 0) n--;
  return xs.slice(0, n);
}

/** Stops the native source and waits until no fault thread uses it, then releases it. */
export async function closeSource(source: NativeSource): Promise<void> {
  source.beginClose();
  // A fault thread may be waiting for the JS path: keep the event loop turning until it is done.
  while (source.busy()) await new Promise((r) => setTimeout(r, 1));
  source.finishClose();
}
