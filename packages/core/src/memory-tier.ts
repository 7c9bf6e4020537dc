/**
 * MemoryTier: process-local DRAM on lru-cache, bounded by a byte budget.
 *
 * It can sit at the top of a write-back stack: a dirty page that lru-cache evicts is handed to
 * the eviction sink (the stack writes it to the tier below) before it is gone. lru-cache's
 * dispose callback is synchronous, so evictions are only collected there and delivered as one
 * batch per namespace when the put that caused them finishes; nothing awaits inside dispose.
 */
import { LRUCache } from 'lru-cache';
import { BasePageStore, DEFAULT_PAGE_SIZE, type EvictedPages, type EvictionSink, type PutOptions, type WriteBackCache } from './page-store.js';
import { badArgument } from './errors.js';
import { pageKey } from './keys.js';

export interface MemoryTierOptions {
  /** Byte budget for page data (required: a DRAM tier without a bound is a leak). */
  maxSize: number;
  pageSize?: number;
  name?: string;
}

interface Entry {
  readonly ns: string;
  readonly page: number;
  readonly data: Buffer;
  dirty: boolean;
}

export class MemoryTier extends BasePageStore implements WriteBackCache {
  private readonly cache: LRUCache<string, Entry>;
  private sink: EvictionSink | undefined;
  private evictedDirty: Entry[] = [];
  private dirty = 0;
  private evictions = 0;

  constructor(options: MemoryTierOptions) {
    super(options.name ?? 'memory', options.pageSize ?? DEFAULT_PAGE_SIZE);
    if (!Number.isFinite(options.maxSize) || options.maxSize < this.pageSize) {
      throw badArgument(`maxSize must be at least one page (${this.pageSize} bytes)`, { maxSize: options.maxSize });
    }
    this.cache = new LRUCache<string, Entry>({
      maxSize: options.maxSize,
      sizeCalculation: () => this.pageSize,
      dispose: (entry, _key, reason) => {
        if (entry.dirty) {
          this.dirty--;
          // 'set' is an overwrite and 'delete' a removal: the old bytes are obsolete then.
          if (reason === 'evict') this.evictedDirty.push(entry);
        }
        if (reason === 'evict') this.evictions++;
      },
    });
  }

  setEvictionSink(sink: EvictionSink | undefined): void {
    this.sink = sink;
  }

  dirtyCount(): number {
    return this.dirty;
  }

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    let hits = 0;
    for (let i = 0; i < pages.length; i++) {
      const e = this.cache.get(pageKey(ns, pages[i]!));
      if (e === undefined) continue;
      e.data.copy(out, i * this.pageSize);
      found[i] = 1;
      hits++;
    }
    return hits;
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, options: PutOptions): Promise<void> {
    const dirty = options.dirty === true;
    const ps = this.pageSize;
    try {
      for (let i = 0; i < pages.length; i++) {
        const copy = Buffer.allocUnsafeSlow(ps);
        data.copy(copy, 0, i * ps, (i + 1) * ps);
        this.cache.set(pageKey(ns, pages[i]!), { ns, page: pages[i]!, data: copy, dirty });
        if (dirty) this.dirty++;
      }
    } finally {
      this.deliverEvictions();
    }
  }

  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    for (const p of pages) this.cache.delete(pageKey(ns, p));
  }

  /** Hands dirty evictions to the sink, one batch per namespace. */
  private deliverEvictions(): void {
    if (this.evictedDirty.length === 0) return;
    const evicted = this.evictedDirty;
    this.evictedDirty = [];
    if (this.sink === undefined) return; // standalone: nothing below to write to
    for (const batch of groupByNamespace(evicted, this.pageSize)) this.sink(batch);
  }

  async flushDirty(write: (batch: EvictedPages) => Promise<void>, options: { batchPages?: number } = {}): Promise<number> {
    const limit = options.batchPages ?? 256;
    const dirty: Entry[] = [];
    for (const e of this.cache.values()) if (e.dirty) dirty.push(e);
    let written = 0;
    for (let i = 0; i < dirty.length; i += limit) {
      const chunk = dirty.slice(i, i + limit);
      for (const batch of groupByNamespace(chunk, this.pageSize)) await write(batch);
      for (const e of chunk) {
        // Only an entry that is still the cached one is clean now; a newer put replaced it.
        if (e.dirty && this.cache.peek(pageKey(e.ns, e.page)) === e) {
          e.dirty = false;
          this.dirty--;
        }
      }
      written += chunk.length;
    }
    return written;
  }

  protected override extraStats(): Record<string, number> {
    return { residentPages: this.cache.size, residentBytes: this.cache.calculatedSize, dirtyPages: this.dirty, evictions: this.evictions };
  }

  protected override async doClose(): Promise<void> {
    this.cache.clear();
  }
}

function groupByNamespace(entries: Entry[], pageSize: number): EvictedPages[] {
  const byNs = new Map<string, Entry[]>();
  for (const e of entries) {
    const list = byNs.get(e.ns);
    if (list) list.push(e);
    else byNs.set(e.ns, [e]);
  }
  return [...byNs].map(([ns, list]) => ({
    ns,
    pages: list.map((e) => e.page),
    data: Buffer.concat(list.map((e) => e.data), list.length * pageSize),
  }));
}
