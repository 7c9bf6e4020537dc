/**
 * RdmaPoolTier: pages in the RAM of memd donors, read and written with one-sided libfabric RMA.
 *
 * - A namespace's page space is cut into slabs (slab = namespace id + slab index, slab size set
 *   by the donors). A new slab goes to `replicas` distinct donors, each chosen by power of two
 *   choices on free memory.
 * - The page -> slab -> replica map and a CRC-32C per page live in native memory (native/pool.cpp):
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
import { DonorClient, parseDonorAddress, type DonorAddress } from './donor-client.js';
import { rdmaAddon, type NativePool, type NativeReplica, type NativeSlabView } from './native.js';
import { pickDistinct, pickTwoChoices } from './placement.js';
import type { EvictNotice, SlabGrant } from './protocol.js';

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

interface DonorState {
  /** Position in the donor list (stable; what replicaReport() and logs use). */
  idx: number;
  /** The native connection of the current session with this donor (-1: none yet). A donor that
   *  comes back after a loss gets a new connection: replicas of the old one are never reused. */
  conn: number;
  address: DonorAddress;
  client?: DonorClient;
  freeBytes: number;
  up: boolean;
}

const MAX_REPLICAS = 4;
/** Slabs repaired at once: up to 3, leaving at least one libuv worker to the data path. */
const REPAIR_LANES = Math.max(1, Math.min(3, (Number(process.env.UV_THREADPOOL_SIZE) || 4) - 1));

const slabKey = (ns: bigint, index: number): string => `${ns}:${index}`;

/** A slab left the map while it was being repaired (all its pages were removed). */
class SlabGone extends Error {}

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
  private readonly donors: DonorState[] = [];
  private readonly replicas: number;
  private readonly backup: PageStore | undefined;
  private readonly log: Logger;
  private readonly random: () => number;
  private slabPages = 0;
  private slabBytes = 0;
  private readonly allocating = new Map<string, Promise<void>>();
  /** Donor replicas (conn:slabId) announced for eviction. */
  private readonly evicting = new Set<string>();
  private repairRunning: Promise<void> | undefined;
  private repairAgain = false;
  private lastDegraded = 0;
  private readonly timers: NodeJS.Timeout[] = [];
  private handleCache: NativePageStoreHandle | undefined;
  private repairs = 0;
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
    const clients = await Promise.allSettled(
      addrs.map((a) => DonorClient.connect(a, { ...(this.options.token ? { token: this.options.token } : {}), clientName: this.name, timeoutMs: this.options.opTimeoutMs ?? 5000 })),
    );
    const first = clients.find((c): c is PromiseFulfilledResult<DonorClient> => c.status === 'fulfilled');
    if (!first) {
      const errs = clients.map((c) => (c as PromiseRejectedResult).reason as Error);
      const perm = errs.find((e) => hasCode(e, ErrorCode.Permission));
      throw perm ?? new TierStackError(ErrorCode.Unavailable, `no donor answered: ${errs.map((e) => e.message).join('; ')}`);
    }
    const hello = first.value.hello;
    this.slabBytes = Number(hello.slabSize);
    if (this.slabBytes % this.pageSize !== 0) {
      for (const c of clients) if (c.status === 'fulfilled') c.value.close();
      throw new TierStackError(ErrorCode.PageSize, `donor slab size ${this.slabBytes} is not a multiple of the page size ${this.pageSize}`);
    }
    this.slabPages = this.slabBytes / this.pageSize;
    const provider = this.options.provider ?? hello.provider;
    this.native = new (rdmaAddon().Pool)({
      provider,
      pageSize: this.pageSize,
      slabPages: this.slabPages,
      opTimeoutMs: this.options.opTimeoutMs ?? 5000,
      name: this.name,
    });
    if (this.backup) this.native.setBackup(this.backup.nativeHandle ?? null);
    this.provider = provider;
    this.nextConn = addrs.length;
    addrs.forEach((address, idx) => this.donors.push({ idx, conn: -1, address, freeBytes: 0, up: false }));
    await Promise.all(
      this.donors.map(async (d) => {
        const r = clients[d.idx]!;
        if (r.status === 'rejected') {
          this.log.warn({ donor: `${d.address.host}:${d.address.port}`, err: (r.reason as Error).message }, 'donor unavailable at open');
          this.scheduleReconnect(d);
          return;
        }
        await this.attach(d, r.value, d.idx);
      }),
    );
    if (!this.donors.some((d) => d.up)) throw new TierStackError(ErrorCode.Unavailable, 'no donor could be connected');
    const every = (ms: number, fn: () => void): void => {
      const t = setInterval(fn, ms);
      t.unref();
      this.timers.push(t);
    };
    every(this.options.statsIntervalMs ?? 1000, () => void this.refreshStats());
    every(this.options.activityIntervalMs ?? 1000, () => this.reportActivity());
    every(200, () => {
      const ev = this.native.degradedEvents();
      if (ev !== this.lastDegraded) {
        this.lastDegraded = ev;
        this.scheduleRepair();
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
      await this.ensureSlabs(nsId, pages);
      try {
        await this.native.put(nsId, list, data, this.syncBudget(pages.length));
        poolErr = undefined;
        break;
      } catch (err) {
        poolErr = err;
        // A slab dropped meanwhile (NO_SPACE) or a donor lost mid-write: place again.
        if (!hasCode(err, ErrorCode.NoSpace) && !hasCode(err, ErrorCode.Unavailable)) break;
        this.scheduleRepair();
        if (hasCode(err, ErrorCode.Unavailable)) await this.repaired();
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
      for (const r of this.native.dropEmptySlab(nsId, index)) {
        const d = this.byConn.get(r.conn);
        if (d?.up && d.conn === r.conn) freed.push(d.client!.freeSlab(r.slabId).catch(() => {}));
      }
    }
    if (this.backup) await this.backup.remove(ns, pages);
    await Promise.all(freed);
  }

  protected override async doFlush(): Promise<void> {
    if (this.backup) await this.backup.flush();
  }

  protected override async doClose(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    await this.repairRunning?.catch(() => {});
    if (this.native) await this.native.close();
    for (const d of this.donors) d.client?.close();
  }

  protected override extraStats(): Record<string, number> {
    const rep = this.replicaReport();
    return { slabs: rep.slabs, underReplicated: rep.underReplicated, donorsUp: rep.donorsUp.length, repairs: this.repairs };
  }

  // ------------------------------------------------------------------ slabs and placement

  /** Connects the data path of a donor whose control connection said hello; false if unusable. */
  private async attach(d: DonorState, c: DonorClient, conn: number): Promise<boolean> {
    const where = `${d.address.host}:${d.address.port}`;
    if (Number(c.hello.slabSize) !== this.slabBytes || c.hello.provider !== this.provider) {
      this.log.warn({ donor: where }, 'donor has a different slab size or provider: not used');
      c.close();
      return false;
    }
    try {
      await this.native.connect(conn, c.hello.dataNode, c.hello.dataService, Buffer.from(c.hello.dataAddr ?? []));
    } catch (err) {
      this.log.warn({ donor: where, err: (err as Error).message }, 'libfabric connect failed');
      c.close();
      this.scheduleReconnect(d);
      return false;
    }
    d.client = c;
    d.conn = conn;
    d.up = true;
    this.byConn.set(conn, d);
    d.freeBytes = Number((await c.stats().catch(() => ({ freeBytes: '0' }))).freeBytes);
    c.on('close', () => this.donorLost(d, 'control connection closed'));
    c.on('evict', (n) => this.onEvict(d, n));
    return true;
  }

  private scheduleReconnect(d: DonorState): void {
    const ms = this.options.reconnectMs ?? 1000;
    if (ms <= 0 || this.isClosed) return;
    const t = setTimeout(() => void this.reconnect(d), ms);
    t.unref();
  }

  private async reconnect(d: DonorState): Promise<void> {
    if (this.isClosed || d.up || !this.native) return;
    if (this.nextConn >= 256) {
      this.log.error({ donor: d.idx }, 'no native connection slots left: not reconnecting');
      return;
    }
    let c: DonorClient;
    try {
      c = await DonorClient.connect(d.address, { ...(this.options.token ? { token: this.options.token } : {}), clientName: this.name, timeoutMs: this.options.opTimeoutMs ?? 5000 });
    } catch {
      this.scheduleReconnect(d);
      return;
    }
    if (this.isClosed) {
      c.close();
      return;
    }
    if (await this.attach(d, c, this.nextConn++)) {
      this.log.info({ donor: `${d.address.host}:${d.address.port}`, conn: d.conn }, 'donor connected again');
      this.scheduleRepair();
    }
  }

  private upDonors(exclude: Set<number> = new Set()): DonorState[] {
    return this.donors.filter((d) => d.up && !exclude.has(d.idx) && this.native.connUp(d.conn));
  }

  /** Donor positions holding the given replicas. */
  private donorsOf(reps: Array<{ conn: number }>): Set<number> {
    const out = new Set<number>();
    for (const r of reps) {
      const d = this.byConn.get(r.conn);
      if (d) out.add(d.idx);
    }
    return out;
  }

  /** Allocates one slab on a donor picked by two choices among the others; undefined if none can. */
  private async allocOn(exclude: Set<number>, tag: string): Promise<{ donor: DonorState; grant: SlabGrant } | undefined> {
    const tried = new Set(exclude);
    for (;;) {
      const cands = this.upDonors(tried);
      const roomy = cands.filter((d) => d.freeBytes >= this.slabBytes);
      const d = pickTwoChoices(roomy.length ? roomy : cands, this.random);
      if (!d) return undefined;
      try {
        const grant = await d.client!.allocSlab(tag);
        d.freeBytes = Math.max(0, d.freeBytes - this.slabBytes);
        return { donor: d, grant };
      } catch (err) {
        this.log.debug({ donor: d.idx, err: (err as Error).message }, 'slab allocation refused');
        d.freeBytes = 0;
        tried.add(d.idx);
      }
    }
  }

  private replicaOf(d: DonorState, g: SlabGrant): NativeReplica {
    return { conn: d.conn, addr: BigInt(g.remoteAddr), rkey: BigInt(g.rkey), slabId: BigInt(g.slabId) };
  }

  private ensureSlabs(nsId: bigint, pages: number[]): Promise<void> {
    const missing = new Set<number>();
    for (const p of pages) {
      const index = Math.floor(p / this.slabPages);
      if (!missing.has(index) && !this.native.hasSlab(nsId, index)) missing.add(index);
    }
    if (missing.size === 0) return Promise.resolve();
    return Promise.all([...missing].map((index) => this.allocSlab(nsId, index))).then(() => {});
  }

  private allocSlab(nsId: bigint, index: number): Promise<void> {
    const key = slabKey(nsId, index);
    let p = this.allocating.get(key);
    if (p) return p;
    p = (async () => {
      if (this.native.hasSlab(nsId, index)) return;
      const first = pickDistinct(this.upDonors().filter((d) => d.freeBytes >= this.slabBytes), this.replicas, this.random);
      const reps: NativeReplica[] = [];
      const used = new Set<number>();
      const grants = await Promise.all(
        first.map((d) => d.client!.allocSlab(key).then((g) => ({ d, g }), () => undefined)),
      );
      for (const x of grants) {
        if (!x) continue;
        x.d.freeBytes = Math.max(0, x.d.freeBytes - this.slabBytes);
        reps.push(this.replicaOf(x.d, x.g));
        used.add(x.d.idx);
      }
      while (reps.length < this.replicas) {
        const got = await this.allocOn(used, key);
        if (!got) break;
        reps.push(this.replicaOf(got.donor, got.grant));
        used.add(got.donor.idx);
      }
      if (reps.length === 0) throw new TierStackError(ErrorCode.NoSpace, 'no donor has room for a new slab');
      if (reps.length < this.replicas) this.log.warn({ slab: key, replicas: reps.length }, 'slab placed with fewer replicas than asked');
      this.native.addSlab(nsId, index, reps);
      if (reps.length < this.replicas) this.scheduleRepair();
    })().finally(() => this.allocating.delete(key));
    this.allocating.set(key, p);
    return p;
  }

  private async refreshStats(): Promise<void> {
    await Promise.all(
      this.donors
        .filter((d) => d.up)
        .map(async (d) => {
          try {
            d.freeBytes = Number((await d.client!.stats()).freeBytes);
          } catch {
            /* a lost donor is handled by its close event */
          }
        }),
    );
  }

  private reportActivity(): void {
    const byConn = new Map<number, string[]>();
    for (const [conn, slabId] of this.native.takeTouched()) {
      const list = byConn.get(conn) ?? [];
      list.push(String(slabId));
      byConn.set(conn, list);
    }
    for (const [conn, ids] of byConn) {
      const d = this.byConn.get(conn);
      if (d?.up && d.conn === conn) d.client?.send({ slabActivity: { slabIds: ids } });
    }
  }

  // ------------------------------------------------------------------ failures, eviction, repair

  private donorLost(d: DonorState, why: string): void {
    if (!d.up) return;
    d.up = false;
    this.log.warn({ donor: `${d.address.host}:${d.address.port}`, why }, 'donor lost');
    if (!this.isClosed) {
      this.native.killConn(d.conn);
      this.scheduleRepair();
      this.scheduleReconnect(d);
    }
  }

  private onEvict(d: DonorState, n: EvictNotice): void {
    this.log.info({ donor: d.idx, slabs: n.slabIds, graceMs: n.graceMs, reason: n.reason }, 'evict notice');
    for (const id of n.slabIds) this.evicting.add(`${d.conn}:${id}`);
    d.freeBytes = 0;
    this.scheduleRepair();
  }

  /** Starts (or re-runs) the background repair; never runs two at once. */
  private scheduleRepair(): void {
    if (this.isClosed) return;
    if (this.repairRunning) {
      this.repairAgain = true;
      return;
    }
    this.repairRunning = (async () => {
      do {
        this.repairAgain = false;
        try {
          await this.repairOnce();
        } catch (err) {
          this.log.warn({ err: (err as Error).message }, 'repair pass failed; retrying');
          await new Promise((r) => setTimeout(r, 200));
          this.repairAgain = !this.isClosed;
        }
      } while (this.repairAgain && !this.isClosed);
    })().finally(() => {
      this.repairRunning = undefined;
    });
  }

  /** Resolves when no repair is running or pending (tests, and callers that want full redundancy). */
  async repaired(): Promise<void> {
    while (this.repairRunning) await this.repairRunning;
  }

  private async repairOnce(): Promise<void> {
    const A = rdmaAddon();
    const slabs = this.native.slabs();
    let next = 0;
    let failed: { err: unknown } | undefined;
    // A few slabs at a time (a donor loss leaves many to copy). Each copy holds a libuv worker
    // while it waits for puts to its slab, and those puts need a worker to finish: at least
    // one worker is always left to them.
    const lane = async (): Promise<void> => {
      while (next < slabs.length && !failed && !this.isClosed) {
        const s = slabs[next++]!;
        try {
          await this.repairSlab(s, A.kReplicaActive, A.kReplicaSyncing, A.kReplicaDead);
        } catch (err) {
          if (!(err instanceof SlabGone)) failed ??= { err };
        }
      }
    };
    await Promise.all(Array.from({ length: REPAIR_LANES }, lane));
    if (failed) throw failed.err;
  }

  private async repairSlab(s: NativeSlabView, ACTIVE: number, SYNCING: number, DEAD: number): Promise<void> {
    const isEvicting = (r: { conn: number; slabId: bigint }): boolean => this.evicting.has(`${r.conn}:${r.slabId}`);
    const key = slabKey(s.ns, s.index);
    // 1. Forget replicas that died; give their slabs back to donors still up.
    for (const r of s.replicas) {
      if (r.state !== DEAD) continue;
      this.native.dropReplica(s.ns, s.index, r.slot);
      this.evicting.delete(`${r.conn}:${r.slabId}`);
      const d = this.byConn.get(r.conn);
      if (d?.up && d.conn === r.conn) await d.client!.freeSlab(r.slabId).catch(() => {});
    }
    const live = (): NativeSlabView => {
      const v = this.native.slabs().find((x) => x.ns === s.ns && x.index === s.index);
      // Given back meanwhile (all its pages removed): nothing to repair.
      if (!v) throw new SlabGone();
      return v;
    };
    let cur: NativeSlabView;
    try {
      cur = live();
    } catch {
      return;
    }
    let active = cur.replicas.filter((r) => r.state === ACTIVE && this.native.connUp(r.conn));
    // 2. Nothing left to copy from: start over on a new donor, pages lost unless the backup has them.
    if (active.length === 0 && !cur.replicas.some((r) => r.state === SYNCING)) {
      const got = await this.allocOn(new Set(), key);
      if (!got) throw new TierStackError(ErrorCode.NoSpace, `no donor can take slab ${key}`);
      const lost = this.native.replaceLost(s.ns, s.index, this.replicaOf(got.donor, got.grant));
      this.repairs++;
      this.log.warn({ slab: key, lostPages: lost.length }, 'slab lost every replica; re-created');
      if (lost.length && this.backup) await this.restoreFromBackup(s.ns, lost);
      cur = live();
      active = cur.replicas.filter((r) => r.state === ACTIVE && this.native.connUp(r.conn));
    }
    // 3. Top up to `replicas` copies that are not being evicted.
    const staying = () => active.filter((r) => !isEvicting(r));
    while (staying().length < this.replicas) {
      const exclude = this.donorsOf(cur.replicas.filter((r) => r.state === ACTIVE || r.state === SYNCING));
      const got = await this.allocOn(exclude, key);
      if (!got) {
        if (active.some(isEvicting)) this.log.warn({ slab: key }, 'no donor can take an evicted slab');
        break;
      }
      const rep = this.replicaOf(got.donor, got.grant);
      const slot = this.native.addReplica(s.ns, s.index, rep);
      if (slot < 0) {
        await got.donor.client!.freeSlab(rep.slabId).catch(() => {});
        break;
      }
      try {
        await this.native.copyReplica(s.ns, s.index, slot);
        this.repairs++;
      } catch (err) {
        this.log.warn({ slab: key, err: (err as Error).message }, 'replica copy failed');
        this.native.dropReplica(s.ns, s.index, slot);
        await got.donor.client!.freeSlab(rep.slabId).catch(() => {});
        throw err;
      }
      cur = live();
      active = cur.replicas.filter((r) => r.state === ACTIVE && this.native.connUp(r.conn));
    }
    // 4. Evicted replicas that now have enough stand-ins go back to their donor.
    for (const r of active.filter(isEvicting)) {
      if (staying().length < this.replicas) break;
      this.native.dropReplica(s.ns, s.index, r.slot);
      this.evicting.delete(`${r.conn}:${r.slabId}`);
      const d = this.byConn.get(r.conn);
      if (d?.up && d.conn === r.conn) await d.client!.freeSlab(r.slabId).catch(() => {});
      active = active.filter((x) => x !== r);
    }
  }

  private async restoreFromBackup(nsId: bigint, pages: Float64Array): Promise<void> {
    // The backup is keyed by namespace name; this tier keeps the names it has seen.
    const ns = this.nsNames.get(nsId);
    if (!ns || !this.backup) return;
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

  private readonly nsNames = new Map<bigint, string>();
  private readonly byConn = new Map<number, DonorState>();
  private nextConn = 0;
  private provider = 'tcp';

  override put(ns: string, pages: ArrayLike<number>, data: Uint8Array, options?: PutOptions): Promise<void> {
    if (typeof ns === 'string' && ns.length > 0 && ns.length < 1024 && !ns.includes('\0')) {
      try {
        const id = namespaceId(ns);
        if (!this.nsNames.has(id)) this.nsNames.set(id, ns);
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
        if (act.filter((r) => !this.evicting.has(`${r.conn}:${r.slabId}`)).length < this.replicas) under++;
        for (const r of act) {
          const idx = this.byConn.get(r.conn)?.idx ?? -1;
          perDonor[idx] = (perDonor[idx] ?? 0) + 1;
        }
      }
    }
    return { slabs, underReplicated: under, perDonor, donorsUp: this.donors.filter((d) => d.up).map((d) => d.idx) };
  }
}
