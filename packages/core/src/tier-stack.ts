/**
 * TierStack: tiers composed top (fastest) to bottom (most durable), itself a PageStore.
 *
 * Reads walk down until a tier has the page and promote hits into the tiers above. Writes go
 * to the top (write-back, the default), to every tier (write-through) or to the bottom only
 * (write-around). Dirty pages a cache tier evicts are queued per level and written to the tier
 * below in batches; until that write lands, reads are served from the queue, so a page is never
 * lost or read stale. Concurrent gets of the same missing page fetch it from below once.
 */
import { BasePageStore, isWriteBackCache, type EvictedPages, type PageStore, type PutOptions } from './page-store.js';
import { TierStackError, ErrorCode, badArgument } from './errors.js';
import { pageKey } from './keys.js';
import type { StoreStats } from './stats.js';
import type { NativePageStoreHandle } from './native.js';
import { silentLogger, type Logger } from './logger.js';
import { bindStackMetrics, type MetricsRegistry } from './metrics.js';

export type PromotionPolicy = 'inclusive' | 'exclusive' | 'none';
export type WritePolicy = 'write-back' | 'write-through' | 'write-around';

export interface TierStackPolicy {
  /** On a hit below the top: copy the page into every tier above (inclusive, default), move it
   *  to the top (exclusive; it stays in the bottom tier, the durable home), or leave it (none). */
  promotion?: PromotionPolicy;
  write?: WritePolicy;
  /** Pages per write-back batch sent to the tier below (default 256). */
  writebackBatchPages?: number;
}

export interface TierStackOptions {
  /** Top (fastest) first. All must share one page size. */
  tiers: PageStore[];
  policy?: TierStackPolicy;
  name?: string;
  /** A prom-client Registry to export per-tier metrics into (never the global one). */
  registry?: MetricsRegistry;
  /** A pino-compatible logger; silent when absent. */
  logger?: Logger;
  /** Close the tiers when the stack closes (default true). */
  closeTiers?: boolean;
}

export interface TierStackStats extends StoreStats {
  tiers: StoreStats[];
}

/** The native part of a stack for front-ends: see NativeChain in page_store.hpp. */
export interface NativeChainDescriptor {
  /** Handles of the tiers at the top of the stack that have one, in order. */
  handles: NativePageStoreHandle[];
  /** Index of the first tier without a native handle (= tiers.length when all have one).
   *  A page missed by every handle must be fetched with the stack's get(). */
  jsLevel: number;
  /**
   * Dirty pages may wait in the stack's JavaScript write-back queues (a write-back cache above
   * the bottom): a page no handle serves may still be there, so misses of the native chain must
   * also ask the stack's get() even when every tier has a handle. (Tiers below a queue hide their
   * older copies of queued pages from native readers: see PageStore.markPendingWrite.)
   */
  jsQueues: boolean;
}

interface InFlight {
  promise: Promise<Buffer | undefined>;
  /** Write epoch when the fetch started: a later get may join it only if the key was not written since. */
  since: number;
}

interface PendingPage {
  ns: string;
  page: number;
  data: Buffer;
}

export class TierStack extends BasePageStore {
  readonly tiers: readonly PageStore[];
  readonly promotion: PromotionPolicy;
  readonly writePolicy: WritePolicy;
  private readonly log: Logger;
  private readonly writebackBatch: number;
  private readonly closeTiers: boolean;
  private readonly inflight = new Map<string, InFlight>();
  /**
   * Write epochs guard promotions: a get remembers the epoch it started at, and bytes it fetched
   * from below are not promoted for keys written after that (a promotion must never overwrite a
   * newer page). Only kept while gets are running.
   */
  private epoch = 0;
  private readonly activeGets = new Map<number, number>();
  private readonly recentWrites = new Map<string, number>();
  /** pending[i]: dirty pages evicted from tier i, not yet written to tier i + 1. */
  private readonly pending: Map<string, PendingPage>[];
  private readonly draining: (Promise<void> | undefined)[];
  private readonly drainedWaiters: Array<() => void> = [];
  private counters = { promotions: 0, writebacks: 0, writebackErrors: 0, singleFlightJoins: 0 };
  private unbindMetrics: (() => void) | undefined;

  constructor(options: TierStackOptions) {
    const tiers = options.tiers;
    if (!Array.isArray(tiers) || tiers.length === 0) throw badArgument('a tier stack needs at least one tier');
    const pageSize = tiers[0]!.pageSize;
    super(options.name ?? 'stack', pageSize);
    for (const t of tiers) {
      if (t.pageSize !== pageSize) {
        throw new TierStackError(ErrorCode.PageSize, `tier ${t.name} has pages of ${t.pageSize} bytes, tier ${tiers[0]!.name} of ${pageSize}`);
      }
    }
    const policy = options.policy ?? {};
    this.promotion = policy.promotion ?? 'inclusive';
    this.writePolicy = policy.write ?? 'write-back';
    if (!['inclusive', 'exclusive', 'none'].includes(this.promotion)) throw badArgument(`unknown promotion policy ${String(this.promotion)}`);
    if (!['write-back', 'write-through', 'write-around'].includes(this.writePolicy)) throw badArgument(`unknown write policy ${String(this.writePolicy)}`);
    this.writebackBatch = policy.writebackBatchPages ?? 256;
    this.tiers = [...tiers];
    this.log = options.logger ?? silentLogger;
    this.closeTiers = options.closeTiers !== false;
    this.pending = tiers.map(() => new Map());
    this.draining = tiers.map(() => undefined);
    // Every cache tier but the bottom hands its dirty evictions to the level's queue.
    tiers.forEach((t, level) => {
      if (level < tiers.length - 1 && isWriteBackCache(t)) t.setEvictionSink((batch) => this.enqueueWriteback(level, batch));
    });
    if (options.registry) this.unbindMetrics = bindStackMetrics(options.registry, this);
  }

  get bottom(): PageStore {
    return this.tiers[this.tiers.length - 1]!;
  }

  /** The native handles at the top of the stack, for front-ends that serve pages from native threads. */
  nativeChain(): NativeChainDescriptor {
    const handles: NativePageStoreHandle[] = [];
    for (const t of this.tiers) {
      if (t.nativeHandle === undefined) break;
      handles.push(t.nativeHandle);
    }
    const dirtyAbove = this.writePolicy === 'write-back' || this.promotion === 'exclusive';
    const jsQueues = dirtyAbove && this.tiers.slice(0, -1).some((t) => isWriteBackCache(t));
    return { handles, jsLevel: handles.length, jsQueues };
  }

  /** Hint: bring these pages up into the top tier. Resolves to the number of pages found. */
  async prefetch(ns: string, pages: ArrayLike<number>): Promise<number> {
    const { hits } = await this.get(ns, pages);
    return hits;
  }

  // ---- reads ----

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const since = this.epoch;
    this.activeGets.set(since, (this.activeGets.get(since) ?? 0) + 1);
    try {
      return await this.getPages(ns, pages, out, found, since);
    } finally {
      const left = this.activeGets.get(since)! - 1;
      if (left > 0) this.activeGets.set(since, left);
      else this.activeGets.delete(since);
      if (this.activeGets.size === 0) this.recentWrites.clear();
      else if (this.recentWrites.size > 65536) {
        const oldest = Math.min(...this.activeGets.keys());
        for (const [k, e] of this.recentWrites) if (e <= oldest) this.recentWrites.delete(k);
      }
    }
  }

  private async getPages(ns: string, pages: number[], out: Buffer, found: Uint8Array, since: number): Promise<number> {
    const ps = this.pageSize;
    const top = await this.tiers[0]!.get(ns, pages);
    let hits = 0;
    const missed: number[] = [];
    for (let i = 0; i < pages.length; i++) {
      if (top.found[i]) {
        top.data.copy(out, i * ps, i * ps, (i + 1) * ps);
        found[i] = 1;
        hits++;
      } else {
        missed.push(i);
      }
    }
    if (missed.length === 0 || this.tiers.length === 1 && this.pending[0]!.size === 0) return hits;

    // Single flight: join fetches already under way, start one batch for the rest.
    const joins: Array<[number, Promise<Buffer | undefined>]> = [];
    const mine: number[] = [];
    const resolvers = new Map<string, (b: Buffer | undefined) => void>();
    for (const i of missed) {
      const key = pageKey(ns, pages[i]!);
      const f = this.inflight.get(key);
      if (f && (this.recentWrites.get(key) ?? 0) <= f.since) {
        joins.push([i, f.promise]);
        this.counters.singleFlightJoins++;
      } else if (f) {
        mine.push(i); // the running fetch may return bytes older than a write we must see
      } else if (!resolvers.has(key)) {
        let resolve!: (b: Buffer | undefined) => void;
        const promise = new Promise<Buffer | undefined>((r) => (resolve = r));
        this.inflight.set(key, { promise, since });
        resolvers.set(key, resolve);
        mine.push(i);
      } else {
        joins.push([i, this.inflight.get(key)!.promise]); // a duplicate within this batch
      }
    }

    const fetched = new Map<string, Buffer>();
    try {
      if (mine.length > 0) await this.fetchBelow(ns, mine.map((i) => pages[i]!), fetched, since);
    } finally {
      for (const [key, resolve] of resolvers) {
        this.inflight.delete(key);
        resolve(fetched.get(key));
      }
    }
    for (const i of mine) {
      const b = fetched.get(pageKey(ns, pages[i]!));
      if (b) {
        b.copy(out, i * ps);
        found[i] = 1;
        hits++;
      }
    }
    for (const [i, p] of joins) {
      const b = await p;
      if (b) {
        b.copy(out, i * ps);
        found[i] = 1;
        hits++;
      }
    }
    return hits;
  }

  /** Looks pages up below the top tier (and in the write-back queues), promoting hits. */
  private async fetchBelow(ns: string, pageList: number[], into: Map<string, Buffer>, since: number): Promise<void> {
    const ps = this.pageSize;
    let remaining = pageList;
    for (let level = 0; level < this.tiers.length && remaining.length > 0; level++) {
      if (level > 0) {
        const r = await this.tiers[level]!.get(ns, remaining);
        const hitPages: number[] = [];
        const hitBufs: Buffer[] = [];
        const still: number[] = [];
        remaining.forEach((p, k) => {
          if (r.found[k]) {
            hitPages.push(p);
            hitBufs.push(r.data.subarray(k * ps, (k + 1) * ps));
          } else {
            still.push(p);
          }
        });
        remaining = still;
        hitPages.forEach((p, k) => into.set(pageKey(ns, p), hitBufs[k]!));
        if (hitPages.length > 0) await this.promote(ns, level, level, hitPages, hitBufs, since);
      }
      // Pages evicted from this level and still on their way down: newer than anything below.
      const queue = this.pending[level]!;
      if (queue.size > 0 && remaining.length > 0) {
        const hitPages: number[] = [];
        const hitBufs: Buffer[] = [];
        const still: number[] = [];
        for (const p of remaining) {
          const e = queue.get(pageKey(ns, p));
          if (e) {
            hitPages.push(p);
            hitBufs.push(e.data);
            into.set(pageKey(ns, p), e.data);
          } else {
            still.push(p);
          }
        }
        remaining = still;
        // The queued write will land below, so the copy put back up is clean.
        if (hitPages.length > 0) await this.promote(ns, level + 1, level, hitPages, hitBufs, since);
      }
    }
  }

  /**
   * Promotes pages found at `source` into tiers[0 .. upTo - 1] (inclusive), or moves them to the
   * top (exclusive). Bytes that a put or remove overtook since the get began are skipped.
   */
  private async promote(ns: string, upTo: number, source: number, pages: number[], bufs: Buffer[], since: number): Promise<void> {
    if (this.promotion === 'none' || upTo === 0) return;
    const keep = pages.map((p) => (this.recentWrites.get(pageKey(ns, p)) ?? 0) <= since);
    const ps = pages.filter((_, k) => keep[k]);
    if (ps.length === 0) return;
    const data = Buffer.concat(bufs.filter((_, k) => keep[k]));
    try {
      if (this.promotion === 'inclusive') {
        await Promise.all(this.tiers.slice(0, upTo).map((t) => t.put(ns, ps, data, { promotion: true })));
      } else {
        // The page moves to the top as dirty (it may have been dirty where it was); the bottom
        // tier keeps its copy because it is the durable home.
        const top = this.tiers[0]!;
        await top.put(ns, ps, data, { dirty: isWriteBackCache(top) && this.tiers.length > 1 });
        if (source > 0 && source === upTo && source < this.tiers.length - 1) await this.tiers[source]!.remove(ns, ps);
      }
      this.counters.promotions += ps.length;
    } catch (err) {
      // A failed promotion costs a later miss, never correctness.
      this.log.warn({ err, ns, source }, 'promotion failed');
    }
  }

  // ---- writes ----

  /** Records a write for the promotion guard (see `epoch`). */
  private supersede(ns: string, pages: number[]): void {
    this.epoch++;
    if (this.activeGets.size === 0) return;
    for (const p of pages) this.recentWrites.set(pageKey(ns, p), this.epoch);
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, _options: PutOptions): Promise<void> {
    this.supersede(ns, pages);
    const top = this.tiers[0]!;
    switch (this.writePolicy) {
      case 'write-back':
        await top.put(ns, pages, data, { dirty: isWriteBackCache(top) && this.tiers.length > 1 });
        return;
      case 'write-through':
        await this.writebackIdle();
        await Promise.all(this.tiers.map((t) => t.put(ns, pages, data)));
        return;
      case 'write-around':
        await this.writebackIdle();
        await this.bottom.put(ns, pages, data);
        await Promise.all(this.tiers.slice(0, -1).map((t) => t.remove(ns, pages)));
        return;
    }
  }

  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    this.supersede(ns, pages);
    // Queued write-backs of these pages must land before the removal, or they would resurrect them.
    await this.writebackIdle();
    await Promise.all(this.tiers.map((t) => t.remove(ns, pages)));
  }

  /** Writes every dirty page down to the bottom tier, then flushes every tier. */
  protected override async doFlush(): Promise<void> {
    for (let level = 0; level < this.tiers.length - 1; level++) {
      const tier = this.tiers[level]!;
      if (isWriteBackCache(tier)) {
        await tier.flushDirty((batch) => this.writeDown(level, batch), { batchPages: this.writebackBatch });
      }
      await this.drain(level);
    }
    await Promise.all(this.tiers.map((t) => t.flush()));
  }

  private writeDown(level: number, batch: EvictedPages): Promise<void> {
    const below = this.tiers[level + 1]!;
    this.counters.writebacks += batch.pages.length;
    return below.put(batch.ns, batch.pages, batch.data, { dirty: isWriteBackCache(below) && level + 1 < this.tiers.length - 1 });
  }

  private enqueueWriteback(level: number, batch: EvictedPages): void {
    const ps = this.pageSize;
    const queue = this.pending[level]!;
    // The tier below holds an older copy (or none) until the write lands: its native readers must not serve it.
    this.tiers[level + 1]!.markPendingWrite?.(batch.ns, batch.pages);
    batch.pages.forEach((page, k) => {
      queue.set(pageKey(batch.ns, page), { ns: batch.ns, page, data: batch.data.subarray(k * ps, (k + 1) * ps) });
    });
    void this.drain(level);
  }

  /** Writes the level's queue to the tier below, one batch at a time, retrying failures. */
  private drain(level: number): Promise<void> {
    const running = this.draining[level];
    if (running) return running;
    const queue = this.pending[level]!;
    if (queue.size === 0) return Promise.resolve();
    const run = (async () => {
      let failures = 0;
      while (queue.size > 0) {
        const chunk = [...queue.entries()].slice(0, this.writebackBatch);
        const byNs = new Map<string, Array<[string, PendingPage]>>();
        for (const e of chunk) {
          const list = byNs.get(e[1].ns);
          if (list) list.push(e);
          else byNs.set(e[1].ns, [e]);
        }
        try {
          for (const [ns, list] of byNs) {
            await this.writeDown(level, { ns, pages: list.map(([, e]) => e.page), data: Buffer.concat(list.map(([, e]) => e.data)) });
            // Only the queued version that was written may leave the queue.
            for (const [key, e] of list) if (queue.get(key) === e) queue.delete(key);
            // Landed below: native readers of that tier may serve these pages again.
            const landed = list.filter(([key]) => !queue.has(key)).map(([, e]) => e.page);
            if (landed.length > 0) this.tiers[level + 1]!.clearPendingWrite?.(ns, landed);
          }
          failures = 0;
        } catch (err) {
          // Never drop a dirty page: keep it queued (reads still see it) and retry with backoff.
          this.counters.writebackErrors++;
          failures++;
          this.log.error({ err, level, queued: queue.size }, 'write-back to the tier below failed; retrying');
          if (this.isClosed && failures > 5) throw err;
          await new Promise((r) => setTimeout(r, Math.min(5000, 50 * 2 ** failures)));
        }
      }
    })();
    this.draining[level] = run;
    const done = (): void => {
      this.draining[level] = undefined;
      if (this.draining.every((d) => d === undefined)) for (const w of this.drainedWaiters.splice(0)) w();
    };
    run.then(done, done);
    return run;
  }

  /** Resolves when no write-back is queued or under way. */
  private async writebackIdle(): Promise<void> {
    for (let level = 0; level < this.pending.length; level++) if (this.pending[level]!.size > 0) await this.drain(level);
  }

  pendingWritebackCount(): number {
    return this.pending.reduce((n, q) => n + q.size, 0);
  }

  override stats(): TierStackStats {
    const base = super.stats();
    return { ...base, tiers: this.tiers.map((t) => t.stats()) };
  }

  protected override extraStats(): Record<string, number> {
    return { ...this.counters, pendingWriteback: this.pendingWritebackCount(), inflightFetches: this.inflight.size };
  }

  protected override async doClose(): Promise<void> {
    try {
      await this.doFlush();
    } finally {
      this.unbindMetrics?.();
      this.tiers.forEach((t) => isWriteBackCache(t) && t.setEvictionSink(undefined));
      if (this.closeTiers) await Promise.all(this.tiers.map((t) => t.close()));
    }
  }
}

export function createTierStack(options: TierStackOptions): TierStack {
  return new TierStack(options);
}
