/**
 * RdmaPoolTier: pages in the RAM of memd donors, read and written with one-sided libfabric RMA.
 *
 * - A namespace's page space is cut into slabs (slab = namespace id + slab index, slab size set
 *   by the donors). A new slab goes to `replicas` distinct donors, each chosen by power of two
 *   choices on free memory.
 * - The page -> slab -> replica map and a CRC-32C per page live in native memory (native/pool.cc):
 *   a JavaScript batch is one crossing into native code, and the native handle (page-store C
 *   ABI) serves front-end threads with no JavaScript at all. A page whose bytes fail their
 *   checksum is read from the next replica, else reported TS_ERR_CHECKSUM.
 * - Donor loss (control connection closed, RMA error, timeout) marks its replicas dead; reads go
 *   to survivors, and a background repair re-creates replicas on other donors. A slab that lost
 *   every replica is re-created empty with its pages marked lost (TS_ERR_UNAVAILABLE), then
 *   refilled from the backup tier when there is one.
 * - Evict notices (donor short of memory) move the named replicas to other donors before the
 *   donor's grace period ends.
 * - An optional backup tier (any PageStore, e.g. FileTier) receives every write and serves the
 *   pages no replica can.
 *
 * This file is the tier itself (the data path and what ties the parts together); the control
 * plane is in donor-set.ts (donors, loss, reconnection), slab-placer.ts (where new slabs go)
 * and repair.ts (re-replication, eviction, lost slabs).
 */
import { readFileSync } from 'node:fs';
import {
  BasePageStore,
  DEFAULT_PAGE_SIZE,
  ErrorCode,
  TierStackError,
  TsStatus,
  hasCode,
  namespaceId,
  silentLogger,
  isTierStackError,
  type Logger,
  type NativePageStoreHandle,
  type PageStore,
  type PutOptions,
} from '@tierstack/core';
import { parseDonorAddress, type DonorAddress } from './donor-client.js';
import { DonorSet } from './donor-set.js';
import { rdmaAddon, type NativePool } from './native.js';
import { Repair } from './repair.js';
import { SlabPlacer } from './slab-placer.js';

export interface RdmaPoolTierOptions {
  /** Donor control addresses ("host:port" or {host, port}). */
  donors?: Array<string | DonorAddress>;
  /** A file with one donor address per line (# comments allowed), read at open. */
  donorsFile?: string;
  /** Token the donors expect. */
  token?: string;
  /** Copies of each slab on distinct donors (default 1, at most 4). */
  replicas?: number;
  /** libfabric provider; must match the donors' (default: what the first donor says). */
  provider?: string;
  pageSize?: number;
  name?: string;
  /** Receives every write and serves pages no replica has left. Not closed by this tier. */
  backup?: PageStore;
  logger?: Logger;
  /** An RMA batch waiting this long on a donor gives it up (default 5000 ms). */
  opTimeoutMs?: number;
  /** How often free memory is asked from the donors (default 1000 ms). */
  statsIntervalMs?: number;
  /** How often slab activity is reported to donors (default 1000 ms). */
  activityIntervalMs?: number;
  /**
   * Small batches (at most syncMaxBytes) are posted and polled on the JS thread for up to
   * syncWaitUs plus syncWaitPerPageUs per further page before a worker thread takes over: a quick
   * donor then answers with no thread hop (defaults 150 and 0; syncWaitUs 0 = always a worker).
   * Longer polls suit a process whose JS thread has nothing else to do (they block it).
   */
  syncWaitUs?: number;
  syncWaitPerPageUs?: number;
  /** Largest batch polled on the JS thread (default 64 KiB). */
  syncMaxBytes?: number;
  /** How often a lost or unreachable donor is tried again (default 1000 ms; 0 = never). */
  reconnectMs?: number;
  /** Random source for placement (tests). */
  random?: () => number;
}

const MAX_REPLICAS = 4;

/** The C ABI's put flags (page_store.h TS_PUT_DIRTY, TS_PUT_PROMOTION) of a JavaScript put. */
const putFlags = (o: PutOptions): number => (o.dirty ? 1 : 0) | (o.promotion ? 2 : 0);

export interface ReplicaReport {
  slabs: number;
  /** Slabs with fewer active replicas than asked for. */
  underReplicated: number;
  /** Active replicas per donor index. */
  perDonor: Record<number, number>;
  /** Donor indexes that are up. */
  donorsUp: number[];
}

export class RdmaPoolTier extends BasePageStore {
  private native!: NativePool;
  private donors!: DonorSet;
  private placer!: SlabPlacer;
  private repair!: Repair;
  private readonly replicas: number;
  private readonly backup: PageStore | undefined;
  /** The backup has a native handle: the C ABI writes through to it, and restores read it by id. */
  private nativeBackup = false;
  private readonly log: Logger;
  private readonly random: () => number;
  private slabPages = 0;
  private slabBytes = 0;
  private lastDegraded = 0;
  private readonly timers: NodeJS.Timeout[] = [];
  private handleCache: NativePageStoreHandle | undefined;
  /** Names of the namespaces seen (put, registerNamespace), by id: a JavaScript backup is keyed by name. */
  private readonly nsNames = new Map<bigint, string>();
  private readonly syncWaitUs: number;
  private readonly syncWaitPerPageUs: number;
  private readonly syncMaxBytes: number;

  private constructor(
    private readonly options: RdmaPoolTierOptions,
    pageSize: number,
  ) {
    super(options.name ?? 'rdma', pageSize);
    this.replicas = options.replicas ?? 1;
    if (!Number.isInteger(this.replicas) || this.replicas < 1 || this.replicas > MAX_REPLICAS) {
      throw new TierStackError(ErrorCode.BadArgument, `replicas must be an integer in [1, ${MAX_REPLICAS}]`);
    }
    this.backup = options.backup;
    if (this.backup && this.backup.pageSize !== this.pageSize) {
      throw new TierStackError(ErrorCode.PageSize, `backup tier page size ${this.backup.pageSize} differs from ${this.pageSize}`);
    }
    this.log = options.logger ?? silentLogger;
    this.random = options.random ?? Math.random;
    this.syncWaitUs = options.syncWaitUs ?? 150;
    this.syncWaitPerPageUs = options.syncWaitPerPageUs ?? 0;
    this.syncMaxBytes = options.syncMaxBytes ?? 64 * 1024;
  }

  /** Connects to the donors (at least one must answer) and returns the tier. */
  static async open(options: RdmaPoolTierOptions): Promise<RdmaPoolTier> {
    const tier = new RdmaPoolTier(options, options.pageSize ?? DEFAULT_PAGE_SIZE);
    try {
      await tier.init();
    } catch (err) {
      await tier.close().catch(() => {}); // stops reconnect attempts, closes what was opened
      throw err;
    }
    return tier;
  }

  private async init(): Promise<void> {
    const specs = [...(this.options.donors ?? [])];
    if (this.options.donorsFile) {
      for (const line of readFileSync(this.options.donorsFile, 'utf8').split('\n')) {
        const t = line.replace(/#.*/, '').trim();
        if (t) specs.push(t);
      }
    }
    if (specs.length === 0) throw new TierStackError(ErrorCode.BadArgument, 'RdmaPoolTier needs at least one donor');
    const addrs = specs.map(parseDonorAddress);
    const timeoutMs = this.options.opTimeoutMs ?? 5000;
    this.donors = new DonorSet({
      token: this.options.token,
      clientName: this.name,
      timeoutMs,
      reconnectMs: this.options.reconnectMs ?? 1000,
      log: this.log,
      isClosed: () => this.isClosed,
      onChange: () => this.repair.schedule(),
      onEvict: (d, n) => this.repair.onEvict(d, n),
    });
    const { clients, first } = await this.donors.hello(addrs);
    const hello = first.hello;
    this.slabBytes = Number(hello.slabSize);
    if (this.slabBytes % this.pageSize !== 0) {
      for (const c of clients) if (c.status === 'fulfilled') c.value.close();
      throw new TierStackError(ErrorCode.PageSize, `donor slab size ${this.slabBytes} is not a multiple of the page size ${this.pageSize}`);
    }
    this.slabPages = this.slabBytes / this.pageSize;
    const provider = this.options.provider ?? hello.provider;
    // Provider defaults before this process's first libfabric use (the user's env wins).
    const settings = rdmaAddon().providerDefaults(provider);
    this.log.debug({ provider, libfabricEnv: settings }, 'libfabric settings');
    this.native = new (rdmaAddon().Pool)({ provider, pageSize: this.pageSize, slabPages: this.slabPages, opTimeoutMs: timeoutMs, name: this.name });
    if (this.backup) this.native.setBackup(this.backup.nativeHandle ?? null);
    this.nativeBackup = this.backup?.nativeHandle !== undefined;
    this.placer = new SlabPlacer({
      donors: this.donors,
      native: this.native,
      replicas: this.replicas,
      slabBytes: this.slabBytes,
      slabPages: this.slabPages,
      random: this.random,
      log: this.log,
      onShort: () => this.repair.schedule(),
    });
    this.repair = new Repair({
      native: this.native,
      donors: this.donors,
      placer: this.placer,
      replicas: this.replicas,
      log: this.log,
      isClosed: () => this.isClosed,
      restore: (nsId, pages) => this.restoreFromBackup(nsId, pages),
    });
    await this.donors.attachAll(this.native, this.slabBytes, provider, addrs, clients);
    if (!this.donors.all.some((d) => d.up)) throw new TierStackError(ErrorCode.Unavailable, 'no donor could be connected');
    const every = (ms: number, fn: () => void): void => {
      const t = setInterval(fn, ms);
      t.unref();
      this.timers.push(t);
    };
    every(this.options.statsIntervalMs ?? 1000, () => void this.donors.refreshStats());
    every(this.options.activityIntervalMs ?? 1000, () => this.donors.reportActivity());
    every(200, () => {
      const ev = this.native.degradedEvents();
      if (ev !== this.lastDegraded) {
        this.lastDegraded = ev;
        this.repair.schedule();
      }
    });
  }

  override get nativeHandle(): NativePageStoreHandle | undefined {
    if (this.isClosed) return undefined;
    this.handleCache ??= this.native.handle();
    return this.handleCache;
  }

  /** Slab size in pages (set by the donors). */
  get pagesPerSlab(): number {
    return this.slabPages;
  }

  // ------------------------------------------------------------------ data path

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const nsId = namespaceId(ns);
    const status = await this.native.get(nsId, Float64Array.from(pages), out, this.syncBudget(pages.length));
    let hits = 0;
    const failed: number[] = [];
    for (let i = 0; i < status.length; i++) {
      if (status[i] === TsStatus.PageFound) {
        found[i] = 1;
        hits++;
      } else if (status[i]! < 0) failed.push(i);
    }
    if (failed.length === 0) return hits;
    // Pages no replica could serve: the backup tier has every write.
    if (this.backup) {
      const r = await this.backup.get(ns, failed.map((i) => pages[i]!));
      const still: number[] = [];
      failed.forEach((i, k) => {
        if (r.found[k]) {
          r.data.copy(out, i * this.pageSize, k * this.pageSize, (k + 1) * this.pageSize);
          found[i] = 1;
          hits++;
        } else still.push(i);
      });
      if (still.length === 0) return hits;
      failed.splice(0, failed.length, ...still);
    }
    const checksum = failed.some((i) => status[i] === TsStatus.Checksum);
    throw new TierStackError(
      checksum ? ErrorCode.Checksum : ErrorCode.Unavailable,
      `${failed.length} page(s) of namespace ${ns} could not be read from any replica${checksum ? ' (checksum mismatch)' : ' (donor lost)'}`,
      { details: { ns, pages: failed.slice(0, 32).map((i) => pages[i]) } },
    );
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, options: PutOptions): Promise<void> {
    const nsId = namespaceId(ns);
    const backupWrite = this.backup?.put(ns, pages, data, options);
    const list = Float64Array.from(pages);
    let poolErr: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      await this.placer.ensure(nsId, pages);
      try {
        await this.native.put(nsId, list, data, this.syncBudget(pages.length), putFlags(options));
        poolErr = undefined;
        break;
      } catch (err) {
        poolErr = err;
        // A slab dropped meanwhile (NO_SPACE) or a donor lost mid-write: place again.
        if (!hasCode(err, ErrorCode.NoSpace) && !hasCode(err, ErrorCode.Unavailable)) break;
        this.repair.schedule();
        if (hasCode(err, ErrorCode.Unavailable)) await this.repair.done();
      }
    }
    if (backupWrite) await backupWrite;
    if (poolErr !== undefined) {
      if (this.backup && hasCode(poolErr, ErrorCode.Unavailable)) {
        this.log.warn({ ns, err: (poolErr as Error).message }, 'pages reached no replica; the backup tier holds them');
        return;
      }
      throw isTierStackError(poolErr) ? poolErr : new TierStackError(ErrorCode.Io, String(poolErr), { cause: poolErr });
    }
  }

  private syncBudget(pages: number): number {
    if (this.syncWaitUs <= 0 || pages * this.pageSize > this.syncMaxBytes) return 0;
    return this.syncWaitUs + (pages - 1) * this.syncWaitPerPageUs;
  }

  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    const nsId = namespaceId(ns);
    this.native.remove(nsId, Float64Array.from(pages));
    // Slabs left with no page go back to their donors.
    const freed: Promise<void>[] = [];
    for (const index of new Set(pages.map((p) => Math.floor(p / this.slabPages)))) {
      for (const r of await this.native.dropEmptySlab(nsId, index)) freed.push(this.donors.free(r.conn, r.slabId));
    }
    if (this.backup) await this.backup.remove(ns, pages);
    await Promise.all(freed);
  }

  protected override async doFlush(): Promise<void> {
    if (this.backup) await this.backup.flush();
  }

  protected override async doClose(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    await this.repair?.settle();
    if (this.native) await this.native.close();
    this.donors?.closeAll();
  }

  protected override extraStats(): Record<string, number> {
    const rep = this.replicaReport();
    // What the JS thread left to job threads rather than wait on a donor (README: threads).
    const c = this.native ? this.native.counters() : { postsDeferred: 0, locksDeferred: 0 };
    return {
      slabs: rep.slabs,
      underReplicated: rep.underReplicated,
      donorsUp: rep.donorsUp.length,
      repairs: this.repair?.count ?? 0,
      postsDeferred: c.postsDeferred,
      locksDeferred: c.locksDeferred,
    };
  }

  /** Resolves when no repair is running or pending (tests, and callers that want full redundancy). */
  async repaired(): Promise<void> {
    await this.repair?.done();
  }

  // ------------------------------------------------------------------ namespaces and the backup

  private async restoreFromBackup(nsId: bigint, pages: Float64Array): Promise<void> {
    if (!this.backup) return;
    // A native backup is read by namespace id: that covers namespaces written only through the
    // C ABI, whose names this tier never saw (it used to skip them, and their pages stayed lost).
    if (this.nativeBackup) {
      const n = await this.native.restoreFromBackup(nsId, pages);
      this.log.info({ ns: String(nsId), pages: pages.length, restored: n }, 'lost pages restored from the backup tier');
      return;
    }
    // A JavaScript-only backup is keyed by name. Every write reached this tier through JavaScript
    // then (the C ABI refuses writes: TS_E_NO_SPACE), so put() or registerNamespace() named it.
    const ns = this.nsNames.get(nsId);
    if (!ns) {
      this.log.error({ ns: String(nsId), pages: pages.length }, 'lost pages of a namespace never named: cannot restore them from the backup');
      return;
    }
    const list = [...pages];
    for (let i = 0; i < list.length; i += 256) {
      const chunk = list.slice(i, i + 256);
      const r = await this.backup.get(ns, chunk);
      const have = chunk.filter((_, k) => r.found[k]);
      if (!have.length) continue;
      const data = Buffer.concat(chunk.flatMap((_, k) => (r.found[k] ? [r.data.subarray(k * this.pageSize, (k + 1) * this.pageSize)] : [])));
      await this.native.put(nsId, Float64Array.from(have), data);
    }
  }

  /** Names a namespace (createJsPath does it for native front-ends); returns its id. */
  registerNamespace(ns: string): bigint {
    const id = namespaceId(ns);
    if (!this.nsNames.has(id)) this.nsNames.set(id, ns);
    return id;
  }

  /**
   * Places the slabs holding `pages` of a namespace (by name or by id) without writing anything,
   * so that the C ABI can write them natively from the first write on (it cannot place a slab:
   * that is the control plane's job, and a write into an unplaced slab answers TS_E_NO_SPACE).
   * For a native front-end whose range is known up front (a ublk device, a uffd region).
   */
  async reserveSlabs(ns: string | bigint, pages: ArrayLike<number>): Promise<void> {
    this.assertOpen();
    const id = typeof ns === 'bigint' ? ns : this.registerNamespace(ns);
    await this.placer.ensure(id, Array.from(pages));
  }

  override put(ns: string, pages: ArrayLike<number>, data: Uint8Array, options?: PutOptions): Promise<void> {
    if (typeof ns === 'string' && ns.length > 0 && ns.length < 1024 && !ns.includes('\0')) {
      try {
        this.registerNamespace(ns);
      } catch {
        /* validated (and rejected) by the base class */
      }
    }
    return super.put(ns, pages, data, options);
  }

  /** Replica placement and health, for tests and `tierstack monitor`. */
  replicaReport(): ReplicaReport {
    if (!this.native) return { slabs: 0, underReplicated: 0, perDonor: {}, donorsUp: [] };
    const ACTIVE = rdmaAddon().kReplicaActive;
    const perDonor: Record<number, number> = {};
    let under = 0;
    let slabs = 0;
    if (!this.isClosed) {
      for (const s of this.native.slabs()) {
        slabs++;
        const act = s.replicas.filter((r) => r.state === ACTIVE && this.native.connUp(r.conn));
        if (act.filter((r) => !this.repair.isEvicting(r)).length < this.replicas) under++;
        for (const r of act) {
          const idx = this.donors.ofConn(r.conn)?.idx ?? -1;
          perDonor[idx] = (perDonor[idx] ?? 0) + 1;
        }
      }
    }
    return { slabs, underReplicated: under, perDonor, donorsUp: this.donors.all.filter((d) => d.up).map((d) => d.idx) };
  }
}
