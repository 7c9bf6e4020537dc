/**
 * The restore hook: what a FaaS runtime calls around an instance's restore.
 *
 *   const hook = createRestoreHook(stack);
 *   const h = await hook.restore('fn-a', { kind: 'in-process' });      // or { kind: 'adopt', ... }
 *   ... the instance runs, faulting pages in lazily ...
 *   await h.close();   // the first restore's first-touch order is saved as the working set
 *
 * Every restore gets its own uffd engine over the stack itself, with the snapshot known natively
 * (a SnapshotView: zero pages installed without a fetch, stored pages verified against their
 * checksums on the fault thread, a bad copy re-read from the tiers below, a page with no good
 * copy poisoned alone in strict mode). With native tiers (CxlTier, FileTier, RdmaPoolTier) no
 * fault, prefetch or eager copy crosses into JavaScript; tiers without a native handle (Redis,
 * MemoryTier, user tiers) are reached through the engine's batched JS path.
 * The first restore (no working set yet) records first touches; later restores prefetch the
 * recorded working set (the latest or the union of the last N) in one bulk install — pages
 * installed without waking, one wake at the end — while other faults are served on demand.
 * `eager: true` installs every page before the restore returns (the baseline lazy restore beats).
 */
import { TierStackError, ErrorCode, silentLogger, type Logger, type PageStore, type StoreStats, type TraceRecord } from '@tierstack/core';
import {
  createUffdEngine,
  SnapshotView,
  type UffdRegion,
  type AdoptedUffd,
  type RegionStats,
  type MissingPolicy,
  type SnapshotViewStats,
} from '@tierstack/uffd';
import { SnapshotCatalog, DEFAULT_KEEP_WORKING_SETS } from './catalog.js';
import type { SnapshotManifest } from './manifest.js';
import type { GuestMapping } from './firecracker-handshake.js';
import { serveCriuPages, type CriuPageServer, type CriuPageServerOptions } from './criu-page-server.js';
import { serveFirecracker, type FirecrackerHandler, type FirecrackerHandlerOptions } from './firecracker.js';
import { acceptHandshake, adoptHandshake } from './handshake.js';

export type PrefetchMode = 'latest' | 'union' | 'none';

export interface RestoreHookOptions {
  /** The catalog (default: one over `stack` with default options). */
  catalog?: SnapshotCatalog;
  /** Record the first-touch order on restores that prefetch nothing (default true). */
  recordWorkingSet?: boolean;
  /** Trace every fault (latency, tier) of each restore into RestoreStats.trace at close: true,
   *  or the ring's capacity in records (default 65536). Off by default. */
  trace?: boolean | number;
  /** Which recorded working set later restores prefetch (default 'latest'). */
  prefetch?: PrefetchMode;
  /** Working sets kept in the manifest (default 4). */
  keepWorkingSets?: number;
  /** Longest working set recorded, in pages (default 2^20). */
  maxWorkingSetPages?: number;
  /** A page that cannot be produced: SIGBUS (strict, default) or zeros. */
  missing?: MissingPolicy;
  /** Pages installed per fault (aligned block, 1..64; default 16). */
  faultAround?: number;
  /** Pages per prefetch chunk (installed without waking, one wake each; default 2048). */
  prefetchChunkPages?: number;
  /** Regions prefetched at once (each on its own native thread; default 1). */
  prefetchConcurrency?: number;
  /** Fault threads per restore (default 1). */
  faultThreads?: number;
  logger?: Logger;
}

export interface RestoreOptions {
  /** Install every page before returning (eager restore). */
  eager?: boolean;
  /** Override the hook's prefetch mode for this restore. */
  prefetch?: PrefetchMode;
  /** Override the hook's recording for this restore. */
  recordWorkingSet?: boolean;
  /** Override the hook's fault trace for this restore (see RestoreHookOptions.trace). */
  trace?: boolean | number;
}

export type RestoreTarget =
  /** A region in this process, created by the hook and sized to the snapshot. */
  | { kind: 'in-process' }
  /** Another process's userfaultfd (received over a Unix socket) and its guest mappings. */
  | {
      kind: 'adopt';
      fd: number;
      pid?: number;
      mappings: GuestMapping[];
      features?: bigint;
      /** Ranges [address, length] an earlier handler of this uffd saw removed: zeros on their next fault. */
      removed?: ReadonlyArray<readonly [number, number]>;
      /** Where removed ranges are reported as they are read (a keeper channel): see AdoptOptions.removeSink. */
      removeSink?: { fd: number; tag: number };
    }
  /** Listen on a Unix socket for one sender of a uffd + JSON mappings (Firecracker's handshake). */
  | { kind: 'socket'; socketPath: string; timeoutMs?: number };

export interface TierFetchStats {
  tier: string;
  /** Pages this tier was asked for and had, during the restore. */
  hits: number;
  requested: number;
}

export interface RestoreStats {
  snapshotId: string;
  faults: number;
  /** Pages served per stack level (native tiers first, then the JS path; see jsPathPages). */
  pagesByLevel: number[];
  /** Pages that had to come through the JavaScript path (0 on an all-native stack). */
  jsPathPages: number;
  pagesInstalled: number;
  zeroPages: number;
  prefetched: number;
  poisoned: number;
  /** Pages the prefetch was asked to install. */
  prefetchRequested: number;
  /** Milliseconds from restore() to the end of the bulk prefetch / eager copy (0 if none). */
  prefetchMs: number;
  /** What the fault threads did with the snapshot: zero pages served without a tier, pages
   *  verified, bad copies seen and repaired from a lower tier, pages with no good copy. */
  snapshot: SnapshotViewStats;
  /** Per tier of the stack: pages asked for and served while this restore ran (hits are what each
   *  tier supplied; stack-wide counters, so concurrent restores on one stack are included). */
  tiers: TierFetchStats[];
  /** Pages in the working set saved on close (0 when nothing was recorded). */
  workingSetRecorded: number;
  /** With `trace`: one record per demand fault and per prefetch batch (core's TraceRecord shape,
   *  offsets in snapshot bytes, tier that served the page); `lost`: records the ring dropped.
   *  Filled in by close(). Summarize with summarizeTrace / formatTraceSummary (@tierstack/core). */
  trace?: { records: TraceRecord[]; lost: number };
}

export interface RestoreHandle {
  readonly snapshotId: string;
  readonly manifest: SnapshotManifest;
  /** In-process restores: the region (its buffer/address). */
  readonly region: UffdRegion | undefined;
  /** Adopted restores: the external uffd. */
  readonly adopted: AdoptedUffd | undefined;
  /** Resolves when the bulk prefetch (or eager copy) is done, with the pages installed. */
  readonly prefetched: Promise<number>;
  stats(): RestoreStats;
  /** Saves the recorded working set (if recording), stops serving, releases the engine. */
  close(): Promise<RestoreStats>;
}

function tierSnapshot(stack: PageStore): StoreStats[] {
  const s = stack.stats() as StoreStats & { tiers?: StoreStats[] };
  return s.tiers ?? [s];
}

function sumRegionStats(
  list: RegionStats[],
): Pick<RestoreStats, 'faults' | 'pagesInstalled' | 'zeroPages' | 'prefetched' | 'poisoned' | 'jsPathPages' | 'pagesByLevel'> {
  const out = { faults: 0, pagesInstalled: 0, zeroPages: 0, prefetched: 0, poisoned: 0, jsPathPages: 0, pagesByLevel: [] as number[] };
  for (const s of list) {
    out.jsPathPages += s.jsPathPages;
    s.pagesByLevel.forEach((n, i) => (out.pagesByLevel[i] = (out.pagesByLevel[i] ?? 0) + n));
    out.faults += s.faults;
    out.pagesInstalled += s.pagesInstalled;
    out.zeroPages += s.zeroPages;
    out.prefetched += s.prefetched;
    out.poisoned += s.poisoned;
  }
  return out;
}

export class RestoreHook {
  readonly catalog: SnapshotCatalog;
  readonly stack: PageStore;
  private readonly log: Logger;

  constructor(
    stack: PageStore,
    readonly options: RestoreHookOptions = {},
  ) {
    this.stack = stack;
    this.catalog = options.catalog ?? new SnapshotCatalog(stack, options.logger ? { logger: options.logger } : {});
    this.log = options.logger ?? silentLogger;
  }

  async restore(snapshotId: string, target: RestoreTarget = { kind: 'in-process' }, ro: RestoreOptions = {}): Promise<RestoreHandle> {
    if (target.kind === 'socket') return this.restoreFromSocket(snapshotId, target.socketPath, target.timeoutMs, ro);
    const t0 = performance.now();
    const m = await this.catalog.get(snapshotId);
    const o = this.options;
    const mode = ro.prefetch ?? o.prefetch ?? 'latest';
    const prefetchPages = ro.eager ? m.storedPageList() : mode === 'none' ? [] : m.prefetchSet(mode);
    const record = (ro.recordWorkingSet ?? o.recordWorkingSet ?? true) && prefetchPages.length === 0 && !ro.eager;
    const view = new SnapshotView({
      pageCount: m.pageCount,
      zeroBitmap: m.zeroBitmap,
      checksums: m.checksums,
      record,
      maxRecordPages: o.maxWorkingSetPages ?? 1 << 20,
    });
    const engine = createUffdEngine({ stack: this.stack, faultThreads: o.faultThreads ?? 1, logger: this.log });
    const trace = ro.trace ?? o.trace ?? false;
    if (trace !== false) engine.startTrace(trace === true ? undefined : trace);
    const before = tierSnapshot(this.stack);
    const regionOpts = {
      namespace: m.namespace,
      missing: o.missing ?? 'strict',
      faultAround: o.faultAround ?? 16,
      zeroAfterRemove: true,
      snapshot: view,
    } as const;

    let region: UffdRegion | undefined;
    let adopted: AdoptedUffd | undefined;
    /** Snapshot page → (region, index) for prefetch. */
    let regions: Array<{ r: UffdRegion; firstPage: number; pages: number }>;
    try {
      if (target.kind === 'in-process') {
        region = engine.createRegion({ ...regionOpts, size: m.pageCount * m.pageSize, pageOffset: 0, name: `snapshot:${m.id}` });
        regions = [{ r: region, firstPage: 0, pages: m.pageCount }];
      } else if (target.kind === 'adopt') {
        const ps = m.pageSize;
        adopted = engine.adopt({
          fd: target.fd,
          ...(target.pid !== undefined ? { pid: target.pid } : {}),
          apiDone: true,
          ...(target.features !== undefined ? { features: target.features } : {}),
          ...(target.removed !== undefined ? { removed: target.removed } : {}),
          ...(target.removeSink !== undefined ? { removeSink: target.removeSink } : {}),
          regions: target.mappings.map((g, i) => ({ ...regionOpts, base: BigInt(g.base), size: g.size, pageOffset: g.offset / ps, name: `snapshot:${m.id}#${i}` })),
        });
        regions = adopted.regions.map((r, i) => ({ r, firstPage: target.mappings[i]!.offset / ps, pages: target.mappings[i]!.size / ps }));
      } else {
        throw new TierStackError(ErrorCode.BadArgument, `unknown restore target ${(target as { kind?: string }).kind}`);
      }
    } catch (err) {
      await engine.close().catch(() => undefined);
      throw err;
    }

    // Bulk prefetch in first-touch order, one native job per region: chunks (2048 pages by
    // default) are installed without waking and woken once each, so the instance runs on the
    // first chunks while later ones are fetched; faults outside the set are served on demand
    // meanwhile by the fault threads. No JavaScript per chunk or page.
    let prefetchMs = 0;
    let prefetchRequested = 0;
    const chunkPages = ro.eager ? 4096 : (o.prefetchChunkPages ?? 2048);
    const prefetched = (async () => {
      if (prefetchPages.length === 0) return 0;
      const jobs: Array<{ r: UffdRegion; idx: number[] }> = [];
      for (const g of regions) {
        const idx = prefetchPages.filter((p) => p >= g.firstPage && p < g.firstPage + g.pages).map((p) => p - g.firstPage);
        prefetchRequested += idx.length;
        if (idx.length > 0) jobs.push({ r: g.r, idx });
      }
      let n = 0;
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < jobs.length) {
          const j = jobs[next++]!;
          n += await j.r.prefetch(j.idx, { chunkPages });
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, o.prefetchConcurrency ?? 1) }, () => worker()));
      prefetchMs = performance.now() - t0;
      return n;
    })();
    prefetched.catch((err) => this.log.warn({ err, id: m.id }, 'working-set prefetch failed'));
    if (ro.eager) {
      try {
        await prefetched;
      } catch (err) {
        await engine.close().catch(() => undefined);
        throw err;
      }
    }

    let closed: RestoreStats | undefined;
    let workingSetRecorded = 0;
    // Region stats vanish with the region: keep the last reading (an adopted uffd closes itself
    // when its owner exits; its 'exit' event comes just before).
    const lastRegionStats = new Map<UffdRegion, RegionStats>();
    const readRegions = (): RegionStats[] =>
      regions.map((g) => {
        if (!g.r.closed) {
          try {
            lastRegionStats.set(g.r, g.r.stats());
          } catch {
            // closed meanwhile
          }
        }
        return lastRegionStats.get(g.r);
      }).filter((x): x is RegionStats => x !== undefined);
    adopted?.on('exit', () => readRegions());
    const stats = (): RestoreStats => {
      if (closed) return closed;
      const after = tierSnapshot(this.stack);
      const regionStats = readRegions();
      return {
        snapshotId: m.id,
        ...sumRegionStats(regionStats),
        prefetchRequested,
        prefetchMs,
        snapshot: view.stats(),
        tiers: after.map((t, i) => ({
          tier: t.name,
          hits: t.ops.get.hits - (before[i]?.ops.get.hits ?? 0),
          requested: t.ops.get.pages - (before[i]?.ops.get.pages ?? 0),
        })),
        workingSetRecorded,
      };
    };
    const keep = o.keepWorkingSets ?? DEFAULT_KEEP_WORKING_SETS;
    let closing: Promise<RestoreStats> | undefined;
    const close = (): Promise<RestoreStats> =>
      (closing ??= (async () => {
        await prefetched.catch(() => undefined);
        const final = stats();
        let traced: RestoreStats['trace'];
        try {
          if (region) await region.close();
          if (adopted) await adopted.close();
          if (trace !== false) traced = engine.drainTrace();
        } finally {
          await engine.close();
        }
        const ws = view.workingSet();
        if (record && ws.length > 0) {
          try {
            await this.catalog.addWorkingSet(m.id, ws, keep);
            workingSetRecorded = ws.length;
          } catch (err) {
            // The snapshot may have been removed meanwhile: the restore itself went fine.
            this.log.warn({ err, id: m.id }, 'could not save the recorded working set');
          }
        }
        closed = { ...final, snapshot: view.stats(), workingSetRecorded, ...(traced ? { trace: traced } : {}) };
        return closed;
      })());
    return { snapshotId: m.id, manifest: m, region, adopted, prefetched, stats, close };
  }

  /** A Firecracker UFFD handler on `socketPath` serving `snapshotId` through this hook. */
  serveFirecracker(opts: FirecrackerHandlerOptions<RestoreOptions, RestoreHandle>): Promise<FirecrackerHandler<RestoreHandle>> {
    return serveFirecracker(this, opts);
  }

  /** A CRIU lazy-pages page server for `snapshotId` from this hook's catalog. */
  serveCriuPages(opts: CriuPageServerOptions): Promise<CriuPageServer> {
    return serveCriuPages(this.catalog, opts);
  }

  /** Waits for one sender on `socketPath` (JSON mappings + uffd), checks it, and serves it. */
  private async restoreFromSocket(snapshotId: string, socketPath: string, timeoutMs: number | undefined, ro: RestoreOptions): Promise<RestoreHandle> {
    const m = await this.catalog.get(snapshotId);
    // The same accept → check (a real userfaultfd) → parse as the Firecracker handler.
    const got = await acceptHandshake(socketPath, { manifest: m, timeoutMs, logger: this.log });
    // Once adopted the engine owns the descriptor; a failed adoption is cleaned up by adoptHandshake.
    const h = await adoptHandshake(got, (target) => this.restore(snapshotId, target, ro));
    return {
      ...h,
      close: async () => {
        const s = await h.close();
        got.closeConnection();
        return s;
      },
    };
  }
}

export function createRestoreHook(stack: PageStore, options: RestoreHookOptions = {}): RestoreHook {
  return new RestoreHook(stack, options);
}
