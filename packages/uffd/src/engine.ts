/**
 * UffdEngine: the userfaultfd front-end of a tier stack. It owns the native fault threads and
 * the stack's native client (core's StackClient: native tiers served on the fault threads, the
 * rest through one batched JS hand-off), and creates or adopts regions.
 */
import { EventEmitter } from 'node:events';
import {
  TierStackError,
  ErrorCode,
  badArgument,
  closedError,
  createJsPath,
  isLayeredStore,
  type TraceRecord,
  assertNamespace,
  silentLogger,
  type JsPath,
  type Logger,
  type MetricsRegistry,
  type PageStore,
} from '@tierstack/core';
import { uffdAddon, type NativeSharedRegion, type NativeEngine, type NativeEvent, type NativeFeatures, type NativeRegionConfig, type NativeSnapshot, type NativeSource } from './native.js';
import { UffdRegion, closeSource, type MissingPolicy, type PageErrorEvent, type RegionStats } from './region.js';
import { bindUffdMetrics } from './metrics.js';
import { SnapshotView } from './snapshot-view.js';
import type { SharedAdoptOptions } from './shared.js';

export interface UffdEngineOptions {
  /** The stack (or a single tier) regions are served from. */
  stack: PageStore;
  /** Native fault threads (default 2). */
  faultThreads?: number;
  /** Pin fault thread i to cpus[i % cpus.length] (sched_setaffinity). */
  cpus?: number[];
  /** Pages per JS-path hand-off (default 256). */
  maxBatchPages?: number;
  /** Pages waiting for the JS path before faulting threads wait for room (default 4096). */
  maxQueuedPages?: number;
  /** Export per-region metrics into this prom-client Registry. */
  registry?: MetricsRegistry;
  logger?: Logger;
}

export interface ManagedOptions {
  /** Pages allowed to stay resident; over it, pages are evicted (dirty ones written back first). */
  budgetPages: number;
  /** The stack holds nothing for this region yet (new swap space): a page this region never
   *  wrote back is zero-filled on first touch without asking the stack. Default false. */
  fresh?: boolean;
}

export interface RegionOptions {
  /** Bytes, a multiple of the stack's page size. */
  size: number;
  /** The stack namespace the region's pages belong to. */
  namespace: string;
  /** Stack page number of the region's first page (default 0). */
  pageOffset?: number;
  /** What a page no tier holds becomes: zero (sparse) or SIGBUS for the toucher (strict, default). */
  missing?: MissingPolicy;
  /** Pages per aligned block installed on a fault (1..64, default 1). */
  faultAround?: number;
  /** Faults in ranges the owner dropped (MADV_DONTNEED, balloon) get zero pages (default true). */
  zeroAfterRemove?: boolean;
  /** User-space swap: residency budget, dirty tracking with write-protect, eviction. */
  managed?: ManagedOptions;
  /** For stats and metrics (default: namespace@offset). */
  name?: string;
  /** The region restores a snapshot: zero pages, checksums and working-set recording are
   *  handled on the fault threads (see SnapshotView). */
  snapshot?: SnapshotView;
}

export interface AdoptedRegionOptions extends Omit<RegionOptions, 'managed'> {
  /** Start address of the range in the owner process. */
  base: bigint;
}

export interface AdoptOptions {
  /** The userfaultfd (received over a Unix socket); the engine owns it from now on. */
  fd: number;
  /** The owner process: its exit ends the adoption (watched with a pidfd). Without it the engine
   *  cannot notice the exit (a uffd reports nothing when its mm goes away): pass the pid that
   *  listenForUffd()/receiveUffd() report (SO_PEERCRED), or close() the adoption yourself. */
  pid?: number;
  /** The sender already did the UFFDIO_API handshake and registered the ranges (Firecracker
   *  does); default true. When false the engine negotiates and registers the regions itself. */
  apiDone?: boolean;
  /** Features the sender negotiated (informational when apiDone). */
  features?: bigint;
  regions: AdoptedRegionOptions[];
  /** Address ranges [start, length] an earlier handler of this uffd saw removed (REMOVE events it
   *  read): their next faults read zeros here too (regions with zeroAfterRemove). */
  removed?: ReadonlyArray<readonly [number, number]>;
  /** A descriptor (a SOCK_SEQPACKET socket; the engine keeps its own dup) that gets a record
   *  "REMOVED <tag> <start> <end>" for every removed range, from the fault thread as it reads the
   *  event: a keeper holds them for the next handler if this one dies. */
  removeSink?: { fd: number; tag: number };
}

/** An external uffd served by the engine: its regions, and its end when the owner exits. */
export class AdoptedUffd extends EventEmitter {
  #closed = false;
  readonly exited: Promise<void>;
  #resolveExit!: () => void;

  /** @internal */
  constructor(
    private readonly source: NativeSource,
    readonly regions: UffdRegion[],
    readonly pid: number,
    private readonly onClosed: () => void,
  ) {
    super();
    this.exited = new Promise((r) => (this.#resolveExit = r));
  }

  get closed(): boolean {
    return this.#closed;
  }

  stats(): RegionStats[] {
    return this.regions.map((r) => r.stats());
  }

  /** Stops serving and closes the descriptor. Threads of the owner still waiting are woken
   *  (and fault again into no handler: the owner should be gone by then). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const r of this.regions) r.markClosed();
    await closeSource(this.source);
    this.onClosed();
    this.#resolveExit();
  }

  /** @internal */
  ownerExited(ev: NativeEvent): void {
    this.emit('exit', { pid: this.pid, cause: ev.cause });
    void this.close();
  }
}

/**
 * An adopted shared region. close() (also run when the owner exits) stops serving it and then
 * removes every page it stored from the stack; `released` resolves with how many.
 */
export class SharedAdoption extends AdoptedUffd {
  readonly region: UffdRegion;
  readonly released: Promise<number>;
  #resolveReleased!: (n: number) => void;
  #rejectReleased!: (e: unknown) => void;
  #releasing = false;

  /** @internal */
  constructor(
    source: NativeSource,
    private readonly shared: NativeSharedRegion,
    region: UffdRegion,
    pid: number,
    onClosed: () => void,
  ) {
    super(source, [region], pid, onClosed);
    this.region = region;
    this.released = new Promise<number>((resolve, reject) => {
      this.#resolveReleased = resolve;
      this.#rejectReleased = reject;
    });
    this.released.catch(() => {}); // surfaced to whoever awaits it
  }

  /** The owner freed pages [first, first + count): dropped without write-back, removed from the stack. */
  forget(firstPage: number, count: number): Promise<number> {
    this.assertOpen();
    if (!Number.isInteger(firstPage) || !Number.isInteger(count) || firstPage < 0 || count < 0) {
      throw new TierStackError(ErrorCode.BadArgument, 'forget needs a page range');
    }
    return this.shared.forget(firstPage, count);
  }

  /** Writes every dirty page back to the stack (they stay resident and clean). */
  writeBackDirty(): Promise<number> {
    this.assertOpen();
    return this.shared.writeBackDirty();
  }

  /** Pages the region wrote to the stack and did not forget since, as a bitmap (64 pages a word). */
  storedBitmap(): Promise<BigUint64Array> {
    return this.shared.storedBitmap();
  }

  /** Marks pages as held by the stack (before the owner touches the region). */
  markStored(bitmap: BigUint64Array): void {
    this.assertOpen();
    this.shared.markStored(bitmap);
  }

  /** Resident pages by the region's own count. */
  residentPages(): number {
    return this.shared.residentPages();
  }

  override async close(): Promise<void> {
    await super.close();
    if (this.#releasing) return;
    this.#releasing = true;
    try {
      this.#resolveReleased(await this.shared.release());
    } catch (err) {
      this.#rejectReleased(err);
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new TierStackError(ErrorCode.Closed, 'the shared region is closed');
  }
}

const DEFAULT_FAULT_THREADS = 2;

export class UffdEngine extends EventEmitter {
  readonly pageSize: number;
  readonly stack: PageStore;
  private native: NativeEngine | undefined;
  private readonly jsPath: JsPath;
  private readonly log: Logger;
  private readonly regions = new Map<number, UffdRegion>();
  /** Adopted uffds by native source id (owner-exit events name the source). */
  private readonly sources = new Map<number, AdoptedUffd>();
  private readonly openRegions = new Set<UffdRegion>();
  private readonly adopted = new Set<AdoptedUffd>();
  private unbindMetrics: (() => void) | undefined;

  constructor(options: UffdEngineOptions) {
    super();
    if (!options || typeof options.stack !== 'object') throw badArgument('createUffdEngine needs { stack }');
    const threads = options.faultThreads ?? DEFAULT_FAULT_THREADS;
    if (!Number.isInteger(threads) || threads < 1 || threads > 64) throw badArgument('faultThreads must be in 1..64');
    this.stack = options.stack;
    this.pageSize = options.stack.pageSize;
    this.log = options.logger ?? silentLogger;
    this.jsPath = createJsPath(options.stack, { logger: this.log });
    const addon = uffdAddon();
    this.native = new addon.NativeEngine(
      this.jsPath,
      {
        faultThreads: threads,
        cpus: options.cpus,
        maxBatchPages: options.maxBatchPages ?? 256,
        maxQueuedPages: options.maxQueuedPages ?? 4096,
      },
      () => this.dispatchEvents(),
    );
    if (options.registry) this.unbindMetrics = bindUffdMetrics(options.registry, this);
  }

  /**
   * Starts recording one record per demand fault (the faulting page, read-to-answer latency, the
   * tier that served it) and per prefetch batch, in a bounded native ring (`capacity` records,
   * default 65536; the oldest are dropped, and counted, when it is not drained in time). Off by
   * default; costs a few stores per fault when on. Returns the capacity.
   */
  startTrace(capacity = 65536): number {
    return this.engine().traceEnable(capacity);
  }

  stopTrace(): void {
    this.native?.traceDisable();
  }

  /** The records since the last drain (core's TraceRecord shape, offsets in stack bytes), and how many were lost. */
  drainTrace(max = 1 << 20): { records: TraceRecord[]; lost: number } {
    const { records: raw, lost } = this.engine().traceDrain(max);
    const names = this.levelNames();
    const records: TraceRecord[] = [];
    for (let i = 0; i + 7 <= raw.length; i += 7) {
      const level = raw[i + 5]!;
      records.push({
        op: raw[i + 4] === 1 ? 'prefetch' : 'fault',
        offset: raw[i + 1]!,
        length: raw[i + 2]!,
        latencyUs: raw[i + 3]! / 1000,
        tier: level === LEVEL_ZERO ? 'zero' : level === LEVEL_MISS ? 'miss' : (names[level] ?? `level ${level}`),
        atUs: raw[i]! / 1000,
      });
    }
    return { records, lost };
  }

  /** Stack level → tier name: the native tiers, then the JS path. */
  private levelNames(): string[] {
    const tiers = isLayeredStore(this.stack) ? this.stack.tiers : [this.stack];
    const native = this.jsPath.chain.length;
    return [...tiers.slice(0, native).map((t) => t.name), ...(this.jsPath.hasJsTiers ? ['js'] : [])];
  }

  /** What the kernel's userfaultfd offers, and the JS thread id the engine guards. */
  features(): NativeFeatures {
    return this.engine().features();
  }

  /** Regions open now (in-process and adopted). */
  allRegions(): UffdRegion[] {
    return [...this.openRegions, ...[...this.adopted].flatMap((a) => a.regions)];
  }

  createRegion(options: RegionOptions): UffdRegion {
    const engine = this.engine();
    const cfg = this.regionConfig(options, 0n);
    const source = engine.createRegion(cfg);
    const region: UffdRegion = new UffdRegion(source, 0, this.describe(options, cfg), true, async () => {
      this.openRegions.delete(region);
      this.regions.delete(region.id);
      await closeSource(source);
    });
    this.regions.set(region.id, region);
    this.openRegions.add(region);
    return region;
  }

  /** Serves the regions of an external process's userfaultfd (see listenForUffd). */
  adopt(options: AdoptOptions): AdoptedUffd {
    const engine = this.engine();
    if (!Number.isInteger(options.fd) || options.fd < 0) throw badArgument('adopt needs the userfaultfd descriptor (fd)');
    if (!Array.isArray(options.regions) || options.regions.length === 0) throw badArgument('adopt needs at least one region');
    const cfgs = options.regions.map((r) => {
      if (typeof r.base !== 'bigint') throw badArgument('an adopted region needs its base address as a bigint');
      return this.regionConfig(r, r.base);
    });
    const removed = options.removed && options.removed.length > 0 ? Float64Array.from(options.removed.flat()) : undefined;
    const extra = removed || options.removeSink ? { removed, removeSink: options.removeSink?.fd, removeTag: options.removeSink?.tag } : undefined;
    const source = engine.adopt(options.fd, options.pid ?? 0, options.features ?? 0n, options.apiDone !== false, cfgs, extra);
    const regions = cfgs.map((cfg, i) => new UffdRegion(source, i, this.describe(options.regions[i]!, cfg), false, undefined));
    const sourceId = source.regionInfo(0).source;
    const adopted: AdoptedUffd = new AdoptedUffd(source, regions, options.pid ?? 0, () => {
      this.adopted.delete(adopted);
      this.sources.delete(sourceId);
      for (const r of regions) this.regions.delete(r.id);
    });
    for (const r of regions) this.regions.set(r.id, r);
    this.adopted.add(adopted);
    this.sources.set(sourceId, adopted);
    return adopted;
  }

  /**
   * Serves a managed region of another process whose memory is a memfd it maps MAP_SHARED (what
   * `tierstack run`'s interposer does): the engine maps the memfd too, so that it can evict pages
   * (read them through its own mapping, write dirty ones back, punch them out of the memfd). See
   * SharedAdoptOptions; the region is fresh (pages never written back are zero).
   */
  adoptShared(options: SharedAdoptOptions): SharedAdoption {
    const engine = this.engine();
    if (!Number.isInteger(options.uffd) || options.uffd < 0 || !Number.isInteger(options.memfd) || options.memfd < 0) {
      throw badArgument('adoptShared needs the owner\'s userfaultfd and memfd descriptors');
    }
    const r = options.region;
    if (!r || typeof r.base !== 'bigint') throw badArgument('a shared region needs its base address as a bigint');
    const cfg = this.regionConfig({ ...r, missing: 'strict', zeroAfterRemove: false, managed: { budgetPages: options.budgetPages, fresh: true } }, r.base);
    const { source, shared } = engine.adoptShared(options.uffd, options.memfd, options.fileOffset ?? 0n, options.pid ?? 0, cfg);
    const region = new UffdRegion(source, 0, this.describe(r, cfg), false, undefined);
    const sourceId = source.regionInfo(0).source;
    const adoption: SharedAdoption = new SharedAdoption(source, shared, region, options.pid ?? 0, () => {
      this.adopted.delete(adoption);
      this.sources.delete(sourceId);
      this.regions.delete(region.id);
    });
    this.regions.set(region.id, region);
    this.adopted.add(adoption);
    this.sources.set(sourceId, adoption);
    return adoption;
  }

  /** Closes every region, stops the fault threads and releases the stack client. */
  async close(): Promise<void> {
    if (!this.native) return;
    for (const r of [...this.openRegions]) await r.close();
    for (const a of [...this.adopted]) await a.close();
    this.unbindMetrics?.();
    this.native.close();
    this.native = undefined;
  }

  private engine(): NativeEngine {
    if (!this.native) throw closedError('uffd engine');
    return this.native;
  }

  private regionConfig(o: RegionOptions | AdoptedRegionOptions, base: bigint): NativeRegionConfig {
    if (!o || typeof o !== 'object') throw badArgument('region options expected');
    assertNamespace(o.namespace);
    const ps = this.pageSize;
    if (!Number.isSafeInteger(o.size) || o.size <= 0 || o.size % ps !== 0) throw badArgument(`size must be a positive multiple of ${ps}`, { size: o.size });
    const pageOffset = o.pageOffset ?? 0;
    if (!Number.isSafeInteger(pageOffset) || pageOffset < 0) throw badArgument('pageOffset must be a non-negative integer');
    const missing = o.missing ?? 'strict';
    if (missing !== 'zero' && missing !== 'strict') throw badArgument(`missing must be 'zero' or 'strict'`);
    const faultAround = o.faultAround ?? 1;
    if (!Number.isInteger(faultAround) || faultAround < 1 || faultAround > 64) throw badArgument('faultAround must be in 1..64');
    const managed = 'managed' in o ? o.managed : undefined;
    if (managed !== undefined) {
      if (!Number.isInteger(managed.budgetPages) || managed.budgetPages < 1) throw badArgument('managed.budgetPages must be a positive integer');
      if (!this.features().writeProtect) throw new TierStackError(ErrorCode.Unsupported, 'managed regions need userfaultfd write-protect (Linux >= 5.7)');
    }
    return {
      base,
      size: o.size,
      ns: this.jsPath.register(o.namespace),
      pageOffset,
      missing,
      faultAround,
      zeroAfterRemove: o.zeroAfterRemove !== false,
      managed: managed !== undefined,
      budgetPages: managed?.budgetPages ?? 0,
      fresh: managed?.fresh === true,
      ...(o.snapshot !== undefined ? { snapshot: this.snapshotOf(o.snapshot) } : {}),
    };
  }

  private snapshotOf(v: unknown): NativeSnapshot {
    if (!(v instanceof SnapshotView)) throw badArgument('region snapshot must be a SnapshotView');
    return v.native;
  }

  private describe(o: RegionOptions | AdoptedRegionOptions, cfg: NativeRegionConfig) {
    return {
      name: o.name ?? `${o.namespace}@${cfg.pageOffset}`,
      namespace: o.namespace,
      pageSize: this.pageSize,
      pageOffset: cfg.pageOffset,
      missing: cfg.missing,
      faultAround: cfg.faultAround,
      managed: cfg.managed,
      budgetPages: cfg.budgetPages,
    };
  }

  /** Delivered on the JS thread, batched: page errors and owner exits from the fault threads. */
  private dispatchEvents(): void {
    const events = this.native?.takeEvents() ?? [];
    for (const ev of events) {
      if (ev.kind === 'pageError') {
        const region = this.regions.get(ev.region);
        const e: PageErrorEvent = { region: region?.name ?? '?', address: ev.address, page: ev.page, code: ev.code, cause: ev.cause, tid: ev.tid };
        this.log.warn({ ...e, address: `0x${ev.address.toString(16)}` }, 'uffd page error');
        region?.emit('pageError', e);
        this.emit('pageError', e);
      } else {
        const adopted = this.sources.get(ev.source);
        this.log.info({ pid: adopted?.pid, cause: ev.cause }, 'uffd owner gone');
        adopted?.ownerExited(ev);
      }
    }
  }
}

/** Trace levels of pages answered without a tier (kit trace_ring.hpp). */
const LEVEL_ZERO = 253;
const LEVEL_MISS = 254;

export function createUffdEngine(options: UffdEngineOptions): UffdEngine {
  return new UffdEngine(options);
}
