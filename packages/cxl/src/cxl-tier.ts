/**
 * CxlTier: a page cache laid out inside one mapped region — a devdax device (CXL.mem), a file
 * (fsdax, hugetlbfs, tmpfs or any file) or a memfd (optionally bound to a NUMA node) — that
 * several processes can map and share. The cache itself (index, slots, CLOCK, dirty bits,
 * checksums, cross-process atomics) is native: see native/layout.hpp for the region layout.
 *
 * Every batch is one native call that copies straight between the region and the caller's
 * Buffer. A put that has to reclaim a dirty page copies that page out in the same call and
 * the tier hands it to its eviction sink (the stack writes it to the tier below) before the
 * put resolves. The C ABI handle (`nativeHandle`) lets front-end threads use the same region
 * with no JavaScript on the path; there, dirty victims are skipped instead.
 */
import {
  BasePageStore,
  TierStackError,
  ErrorCode,
  badArgument,
  errorFromNativeStatus,
  TsStatus,
  namespaceId,
  type EvictedPages,
  type EvictionSink,
  type NativePageStoreHandle,
  type PutOptions,
  type WriteBackCache,
} from '@tierstack/core';
import { cxlAddon, type CxlAddon, type EvictedRaw, type NativeOpenOptions, type NativeRegionInfo, type RegionHandle } from './native.js';
import { readDevdaxGeometry } from './devdax.js';

/** Where the region lives. */
export type CxlBacking =
  /** An anonymous memfd (the default: machines without CXL), optionally bound to a NUMA node. */
  | { kind: 'memfd'; size?: number; numaNode?: number }
  /** A file; `create` makes (and sizes to `size`) a missing or empty one. */
  | { kind: 'file'; path: string; size?: number; create?: boolean }
  /** A device DAX character device (/dev/daxX.Y); `size` may use only a prefix of it. */
  | { kind: 'devdax'; path: string; size?: number };

export interface CxlTierOptions {
  /** Default: a 64 MiB memfd. */
  backing?: CxlBacking;
  /** Bytes per page. Opening an existing region: must match it when given (else TS_ERR_PAGE_SIZE). */
  pageSize?: number;
  /** Slots per set of the set-associative index (4..64, default 16). Must match an existing region when given. */
  ways?: number;
  /** Entries of the region's namespace table (default 256). */
  namespaceEntries?: number;
  /** Format the region even if it holds a valid one (everything cached is dropped). */
  format?: boolean;
  name?: string;
  /** sysfs mount point, for tests of the devdax geometry checks (default /sys). */
  sysfsRoot?: string;
}

export interface CxlRegionInfo extends NativeRegionInfo {
  backing: CxlBacking;
  namespaces: { id: bigint; name: string }[];
}

export const DEFAULT_CXL_REGION_BYTES = 64 * 1024 * 1024;

/** Opens the native region for `options` (TierStackError with a TS_ERR_* code on failure). */
export function openRegion(options: CxlTierOptions): { addon: CxlAddon; handle: RegionHandle; backing: CxlBacking } {
  const backing: CxlBacking = options.backing ?? { kind: 'memfd' };
  const addon = cxlAddon();
  const native: NativeOpenOptions = {
    kind: backing.kind,
    format: options.format === true,
    name: options.name ?? 'cxl',
    ...(options.pageSize !== undefined ? { pageSize: positive(options.pageSize, 'pageSize') } : {}),
    ...(options.ways !== undefined ? { ways: positive(options.ways, 'ways') } : {}),
    ...(options.namespaceEntries !== undefined ? { nsEntries: positive(options.namespaceEntries, 'namespaceEntries') } : {}),
  };
  switch (backing.kind) {
    case 'memfd':
      native.size = positive(backing.size ?? DEFAULT_CXL_REGION_BYTES, 'size');
      if (backing.numaNode !== undefined) native.numaNode = nonNegative(backing.numaNode, 'numaNode');
      break;
    case 'file':
      if (typeof backing.path !== 'string' || backing.path === '') throw badArgument('a file backing needs a path');
      native.path = backing.path;
      native.create = backing.create === true;
      if (backing.size !== undefined) native.size = positive(backing.size, 'size');
      break;
    case 'devdax': {
      if (typeof backing.path !== 'string' || backing.path === '') throw badArgument('a devdax backing needs a path');
      const geo = readDevdaxGeometry(backing.path, options.sysfsRoot);
      native.path = backing.path;
      native.deviceSize = geo.size;
      native.deviceAlign = geo.align;
      if (backing.size !== undefined) native.size = positive(backing.size, 'size');
      break;
    }
    default:
      throw badArgument(`unknown backing kind ${String((backing as { kind?: unknown }).kind)}`);
  }
  try {
    return { addon, handle: addon.open(native), backing };
  } catch (err) {
    throw typed(err, `opening the CXL region (${describeBacking(backing)})`);
  }
}

export class CxlTier extends BasePageStore implements WriteBackCache {
  readonly backing: CxlBacking;
  readonly #addon: CxlAddon;
  readonly #region: RegionHandle;
  #handle: NativePageStoreHandle | undefined;
  #sink: EvictionSink | undefined;
  readonly #ids = new Map<string, bigint>();
  readonly #names = new Map<bigint, string>();
  #droppedDirty = 0;
  readonly #slots: number;

  private constructor(opened: { addon: CxlAddon; handle: RegionHandle; backing: CxlBacking }, info: NativeRegionInfo, name: string) {
    super(name, info.pageSize);
    this.#addon = opened.addon;
    this.#region = opened.handle;
    this.backing = opened.backing;
    this.#slots = info.slots;
  }

  /** Opens (formatting a new or blank backing) a CXL region as a tier. */
  static openSync(options: CxlTierOptions = {}): CxlTier {
    const opened = openRegion(options);
    const info = opened.addon.info(opened.handle);
    return new CxlTier(opened, info, options.name ?? 'cxl');
  }

  static async open(options: CxlTierOptions = {}): Promise<CxlTier> {
    return CxlTier.openSync(options);
  }

  /** The C ABI handle for front-end threads (page_store.h). */
  override get nativeHandle(): NativePageStoreHandle | undefined {
    if (this.isClosed) return undefined;
    this.#handle ??= this.#addon.nativeHandle(this.#region);
    return this.#handle;
  }

  /** Geometry, occupancy and the region's shared counters (a scan of the index: not for hot paths). */
  info(): CxlRegionInfo {
    this.assertOpen();
    return { ...this.#addon.info(this.#region), backing: this.backing, namespaces: this.#addon.namespaces(this.#region) };
  }

  /**
   * Names a namespace in the region's table, so that any process sharing the region can hand
   * dirty pages of it to a write-back sink. Done automatically for namespaces used through this
   * tier; call it for namespaces that front-ends write through the C ABI only.
   */
  registerNamespace(ns: string): bigint {
    return this.#id(ns);
  }

  setEvictionSink(sink: EvictionSink | undefined): void {
    this.#sink = sink;
  }

  /** Dirty pages in the region (an exact scan of the index flags). */
  dirtyCount(): number {
    return this.isClosed ? 0 : this.#addon.info(this.#region).dirtyPages;
  }

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const r = this.#addon.get(this.#region, this.#id(ns), Float64Array.from(pages), out, found);
    if (r.checksumErrors > 0) {
      const bad = pages.filter((_, i) => found[i] === 2);
      throw new TierStackError(ErrorCode.Checksum, `${r.checksumErrors} page(s) of ${ns} in ${this.name} failed their checksum`, {
        details: { ns, pages: bad },
      });
    }
    return r.hits;
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, options: PutOptions): Promise<void> {
    const r = this.#addon.put(this.#region, this.#id(ns), Float64Array.from(pages), data, options.dirty === true, options.promotion === true);
    if (r.evicted) this.#deliver(r.evicted);
    if (r.status < 0) {
      throw new TierStackError(
        r.status === TsStatus.NoSpace ? ErrorCode.NoSpace : errorFromNativeStatus(r.status, 'put').code,
        `${this.name}: some pages of ${ns} found no reclaimable slot (their sets hold only dirty pages that cannot be written back)`,
        { details: { ns, status: r.status } },
      );
    }
  }

  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    this.#addon.remove(this.#region, this.#id(ns), Float64Array.from(pages));
  }

  async flushDirty(write: (batch: EvictedPages) => Promise<void>, options: { batchPages?: number } = {}): Promise<number> {
    this.assertOpen();
    const limit = options.batchPages ?? 256;
    let cursor = 0;
    let written = 0;
    let unnamed = 0;
    let damaged = 0;
    for (;;) {
      const chunk = this.#addon.collectDirty(this.#region, cursor, limit);
      cursor = chunk.cursor;
      unnamed += chunk.unnamed;
      damaged += chunk.damaged;
      if (chunk.pages.length > 0) {
        for (const batch of this.#group(chunk)) await write(batch);
        // Clean only pages that were not rewritten while their copy was being written out.
        this.#addon.markClean(this.#region, chunk.slots, chunk.seqs);
        written += chunk.pages.length;
      }
      if (chunk.done) break;
    }
    // Never report a flush as complete while dirty pages stay behind.
    if (damaged > 0) {
      throw new TierStackError(ErrorCode.Checksum, `${this.name}: ${damaged} dirty page(s) failed their checksum and were not written back`, {
        details: { written, damaged },
      });
    }
    if (unnamed > 0) {
      throw new TierStackError(
        ErrorCode.NotFound,
        `${this.name}: ${unnamed} dirty page(s) belong to namespaces no process named in the region (written through the C ABI only); ` +
          'call registerNamespace(ns) so they can be written back',
        { details: { written, unnamed } },
      );
    }
    return written;
  }

  protected override extraStats(): Record<string, number> {
    if (this.isClosed) return { droppedDirty: this.#droppedDirty };
    // The region's counters (shared by every process using it), not a scan of the index.
    const c = this.#addon.counters(this.#region);
    return {
      residentPages: c.validPages,
      dirtyPages: c.dirtyPages,
      slots: this.#slots,
      regionHits: c.hits,
      regionMisses: c.misses,
      evictions: c.evictions,
      dirtyEvictions: c.dirtyEvictions,
      checksumErrors: c.checksumErrors,
      lockSteals: c.lockSteals,
      droppedDirty: this.#droppedDirty,
    };
  }

  protected override async doClose(): Promise<void> {
    this.#addon.close(this.#region);
    this.#handle = undefined;
  }

  #id(ns: string): bigint {
    let id = this.#ids.get(ns);
    if (id === undefined) {
      id = namespaceId(ns);
      // A full namespace table only means dirty pages of this namespace cannot be evicted.
      this.#addon.registerNamespace(this.#region, id, ns);
      this.#ids.set(ns, id);
      this.#names.set(id, ns);
    }
    return id;
  }

  #name(id: bigint): string | undefined {
    let name = this.#names.get(id);
    if (name === undefined) {
      name = this.#addon.namespaceName(this.#region, id);
      if (name !== undefined) this.#names.set(id, name);
    }
    return name;
  }

  /** Hands dirty victims to the sink, one batch per namespace (dropped when standalone, like MemoryTier). */
  #deliver(ev: EvictedRaw): void {
    if (this.#sink === undefined) {
      this.#droppedDirty += ev.pages.length;
      return;
    }
    for (const batch of this.#group(ev)) this.#sink(batch);
  }

  #group(ev: { ns: BigUint64Array; pages: Float64Array; data: Buffer }): EvictedPages[] {
    const ps = this.pageSize;
    const byNs = new Map<bigint, number[]>();
    for (let i = 0; i < ev.ns.length; i++) {
      const list = byNs.get(ev.ns[i]!);
      if (list) list.push(i);
      else byNs.set(ev.ns[i]!, [i]);
    }
    const out: EvictedPages[] = [];
    for (const [id, idx] of byNs) {
      const ns = this.#name(id);
      if (ns === undefined) continue; // the native side only hands out pages of named namespaces
      const data = byNs.size === 1 ? ev.data : Buffer.concat(idx.map((i) => ev.data.subarray(i * ps, (i + 1) * ps)));
      out.push({ ns, pages: idx.map((i) => ev.pages[i]!), data });
    }
    return out;
  }
}

function positive(v: number, what: string): number {
  if (!Number.isSafeInteger(v) || v <= 0) throw badArgument(`${what} must be a positive integer`, { [what]: v });
  return v;
}

function nonNegative(v: number, what: string): number {
  if (!Number.isSafeInteger(v) || v < 0) throw badArgument(`${what} must be a non-negative integer`, { [what]: v });
  return v;
}

export function describeBacking(b: CxlBacking): string {
  return b.kind === 'memfd' ? `memfd${b.numaNode !== undefined ? ` on node ${b.numaNode}` : ''}` : `${b.kind} ${b.path}`;
}

/** Native errors carry a TS_ERR_* code; give them the TierStackError shape with context. */
function typed(err: unknown, context: string): TierStackError {
  const e = err as { code?: string; message?: string; errno?: number };
  const code = typeof e?.code === 'string' && e.code.startsWith('TS_ERR_') ? (e.code as ErrorCode) : ErrorCode.Io;
  return new TierStackError(code, `${context}: ${e?.message ?? String(err)}`, {
    cause: err,
    ...(e?.errno !== undefined ? { details: { errno: e.errno } } : {}),
  });
}
