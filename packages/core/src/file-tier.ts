/**
 * FileTier: pages in sparse files on local disk — the durable tier of a single machine and the
 * backup of remote tiers.
 *
 * Layout of a tier directory:
 *   tierstack-file.json      {format, version, pageSize}: checked on open
 *   <ns>/<segment>.pages     page p of the segment at offset p * pageSize (sparse: holes cost nothing)
 *   <ns>/<segment>.meta      8 bytes per page: u32 CRC-32 of the page, u32 PRESENT marker
 * (<ns> is the namespace, percent-encoded to a safe file name; a segment holds 2^18 pages, so
 * any page number up to 2^53 maps to a file of at most 1 GiB at 4 KiB pages.)
 *
 * A batch is sorted and cut into runs of consecutive pages of one segment; each run is one
 * pread/pwrite of the data file and one of the meta file. Data is written before its meta entry, so a crash between
 * the two leaves a page whose checksum does not match: reported as TS_ERR_CHECKSUM, never as
 * wrong bytes. A meta entry pointing past the end of the data file is TS_ERR_CORRUPT.
 *
 * Native read path. With core's addon built (native/file_store.cc), `nativeHandle` is a page-store
 * C ABI handle that reads and verifies pages of this layout from any native thread (uffd fault
 * threads, ublk queues): a stack whose tiers all have handles serves pages with no JavaScript.
 * Native code names namespaces by 64-bit id; the tier registers every namespace found in its
 * directory at open, every namespace it reads or writes, and any `registerNamespace(name)`
 * (createJsPath().register calls it on every tier of a stack). Writes stay in JavaScript: put and
 * remove through the handle answer TS_E_NO_SPACE ("take the JS path"), and `nativeReadOnly` tells
 * createJsPath so.
 *
 * Space. remove() clears the meta entries and then punches holes in the data file for the removed
 * pages (fallocate PUNCH_HOLE | KEEP_SIZE through the addon); a segment with no page left is dropped
 * (both files unlinked), and removeNamespace() deletes a namespace's directory. Without the addon
 * JavaScript cannot punch holes: removed pages keep their blocks until their whole segment is
 * dropped. diskUsage() reports the blocks actually allocated.
 */
import { mkdir, open, readFile, readdir, lstat, rm, rmdir, writeFile, unlink, type FileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join, resolve } from 'node:path';
import { LRUCache } from 'lru-cache';
import { BasePageStore, DEFAULT_PAGE_SIZE, type PutOptions } from './page-store.js';
import { TierStackError, ErrorCode, hasCode } from './errors.js';
import { pageChecksums } from './checksum.js';
import { assertNamespace, namespaceId } from './keys.js';
import type { NativePageStoreHandle } from './native.js';
import { coreAddon, type CoreAddon } from './core-addon.js';

export interface FileTierOptions {
  /** Directory holding the tier's files (created if missing). */
  dir: string;
  pageSize?: number;
  name?: string;
  /** Open data files with O_DIRECT (bypass the page cache; I/O goes through aligned staging buffers). */
  direct?: boolean;
  /** fsync data and meta files on flush() (default true). */
  fsync?: boolean;
  /**
   * Give the tier a native read path (`nativeHandle`) and punch holes for removed pages when
   * core's addon is built (default true). false: JavaScript only.
   */
  native?: boolean;
}

const FORMAT = 'tierstack-file';
const VERSION = 1;
const META_BYTES = 8;
const PRESENT = 0x50535431; // "1TSP" little-endian: a present page
const STAGING_BYTES = 1 << 20;

const SEGMENT_PAGES = 2 ** 18;
const OPEN_SEGMENTS = 256; // segment files kept open (LRU); busy ones are closed when idle
const NATIVE_OPEN_SEGMENTS = 128; // segments the native reader keeps open

interface SegmentFiles {
  data: FileHandle;
  meta: FileHandle;
  /** The meta file's contents: reads consult it instead of issuing a second pread. */
  metaCache: Buffer;
  /** Pages marked PRESENT in metaCache. */
  present: number;
  /** The data file's filesystem block size (holes smaller than a block free nothing). */
  blockSize: number;
  dirty: boolean;
  users: number;
  evicted: boolean;
  closing?: Promise<void>;
}

interface Run {
  /** First page number of the run. */
  start: number;
  /** For page start+k, the indexes into the caller's batch that ask for it (ascending). */
  idx: number[][];
  count: number;
}

export class FileTier extends BasePageStore {
  private readonly dir: string;
  private readonly direct: boolean;
  private readonly fsync: boolean;
  private readonly segments: LRUCache<string, Promise<SegmentFiles | undefined>>;
  private readonly closingSegments = new Set<Promise<void>>();
  private ready: Promise<void>;
  private staging: Buffer[] = [];
  private stagingWaiters: Array<(b: Buffer) => void> = [];
  /** Whole-namespace operations (segment drops, removeNamespace) exclude the namespace's other calls. */
  private readonly gate = new NamespaceGate();
  /** Per segment: puts share it, removes (meta clear + hole punch) hold it alone. */
  private readonly segmentLocks = new Map<string, AsyncRwLock>();
  readonly #addon: CoreAddon | undefined;
  readonly #handle: NativePageStoreHandle | undefined;
  /** Namespaces named to the native reader (id -> directory). */
  readonly #registered = new Set<string>();
  #punchUnsupported = false;
  #space = { holesPunched: 0, punchErrors: 0, segmentsDropped: 0, namespacesRemoved: 0 };

  constructor(options: FileTierOptions) {
    super(options.name ?? 'file', options.pageSize ?? DEFAULT_PAGE_SIZE);
    this.dir = options.dir;
    this.direct = options.direct === true;
    this.fsync = options.fsync !== false;
    this.segments = new LRUCache<string, Promise<SegmentFiles | undefined>>({
      max: OPEN_SEGMENTS,
      dispose: (p) => {
        void p.then(
          (f) => {
            if (f === undefined) return;
            f.evicted = true;
            if (f.users === 0) void this.closeSegment(f);
          },
          () => {},
        );
      },
    });
    // Without the addon (not built) the tier works in JavaScript alone.
    this.#addon = options.native === false ? undefined : coreAddon();
    this.#handle = this.#addon?.fileStoreCreate(resolve(this.dir), this.pageSize, this.name, NATIVE_OPEN_SEGMENTS);
    this.ready = this.init();
    this.ready.catch(() => {}); // surfaced by the first call
  }

  /**
   * The C ABI handle of the native read path (see include/tierstack/page_store.h), or undefined
   * when core's addon is not built (or `native: false`) or the tier is closed. Reads only: its
   * put/remove answer TS_E_NO_SPACE, so callers write through JavaScript.
   */
  override get nativeHandle(): NativePageStoreHandle | undefined {
    return this.isClosed ? undefined : this.#handle;
  }

  /** The native handle serves reads only (createJsPath routes writes through JavaScript). */
  get nativeReadOnly(): boolean {
    return true;
  }

  /**
   * Names a namespace for the native reader, which sees only 64-bit ids (namespaceId(ns)); returns
   * the id. Namespaces found in the directory at open and those this tier reads or writes are
   * registered automatically; a native front-end reading a namespace JS never touched in this
   * process needs this (createJsPath().register does it for every tier of a stack).
   */
  registerNamespace(ns: string): bigint {
    assertNamespace(ns);
    this.#register(ns);
    return namespaceId(ns);
  }

  #register(ns: string): void {
    if (this.#handle === undefined || this.#registered.has(ns)) return;
    this.#addon!.fileStoreRegister(this.#handle, namespaceId(ns), nsDirName(ns));
    this.#registered.add(ns);
  }

  /**
   * Pages a stack above queued for writing into this tier (TierStack write-back): until
   * clearPendingWrite(), the native reader answers them as misses, so a native front-end asks the
   * stack's JavaScript path (which serves the queued, newer copy) instead of reading an older one here.
   */
  markPendingWrite(ns: string, pages: readonly number[]): void {
    if (this.#handle === undefined || pages.length === 0 || this.isClosed) return;
    this.#addon!.fileStorePending(this.#handle, namespaceId(ns), Float64Array.from(pages), true);
  }

  clearPendingWrite(ns: string, pages: readonly number[]): void {
    if (this.#handle === undefined || pages.length === 0 || this.isClosed) return;
    this.#addon!.fileStorePending(this.#handle, namespaceId(ns), Float64Array.from(pages), false);
  }

  /** Opens (or creates) a FileTier and checks its directory header. */
  static async open(options: FileTierOptions): Promise<FileTier> {
    const tier = new FileTier(options);
    await tier.ready;
    return tier;
  }

  private async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const headerPath = join(this.dir, 'tierstack-file.json');
    let text: string | undefined;
    try {
      text = await readFile(headerPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(err, headerPath);
    }
    if (text === undefined) {
      await writeFile(headerPath, JSON.stringify({ format: FORMAT, version: VERSION, pageSize: this.pageSize }) + '\n');
    } else {
      let header: { format?: unknown; version?: unknown; pageSize?: unknown };
      try {
        header = JSON.parse(text);
      } catch (err) {
        throw new TierStackError(ErrorCode.Corrupt, `${headerPath} is not valid JSON`, { cause: err });
      }
      if (header.format !== FORMAT || header.version !== VERSION) {
        throw new TierStackError(ErrorCode.Corrupt, `${headerPath} is not a tierstack file tier (v${VERSION}) header`);
      }
      if (header.pageSize !== this.pageSize) {
        throw new TierStackError(ErrorCode.PageSize, `${this.dir} holds pages of ${String(header.pageSize)} bytes, not ${this.pageSize}`);
      }
    }
    if (this.direct) await this.initStaging();
    // Name every namespace already stored here to the native reader.
    if (this.#handle !== undefined) {
      for (const e of await readdir(this.dir, { withFileTypes: true })) {
        if (!e.isDirectory()) continue;
        let ns: string;
        try {
          ns = decodeURIComponent(e.name);
          assertNamespace(ns);
        } catch {
          continue; // not a directory this tier made
        }
        if (nsDirName(ns) === e.name) this.#register(ns);
      }
    }
  }

  /**
   * O_DIRECT needs buffers aligned to the device's logical block; JS cannot ask for an aligned
   * Buffer, so we over-allocate and find an aligned offset by probing a real O_DIRECT write.
   */
  private async initStaging(): Promise<void> {
    const probePath = join(this.dir, '.direct-probe');
    let fh: FileHandle;
    try {
      fh = await open(probePath, constants.O_RDWR | constants.O_CREAT | constants.O_DIRECT, 0o600);
    } catch (err) {
      throw new TierStackError(ErrorCode.Unsupported, `O_DIRECT is not supported in ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
    try {
      for (let n = 0; n < 2; n++) {
        const raw = Buffer.alloc(STAGING_BYTES + 4096);
        let aligned: Buffer | undefined;
        // Allocations are at least 16-byte aligned; try each 16-byte step within one 4 KiB page.
        for (let off = 0; off < 4096 && aligned === undefined; off += 16) {
          try {
            await fh.write(raw, off, 4096, 0);
            aligned = raw.subarray(off, off + STAGING_BYTES);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw ioError(err, probePath);
          }
        }
        if (aligned === undefined) throw new TierStackError(ErrorCode.Unsupported, `no aligned buffer works for O_DIRECT in ${this.dir}`);
        this.staging.push(aligned);
      }
    } finally {
      await fh.close();
      await unlink(probePath).catch(() => {});
    }
  }

  private async takeStaging(): Promise<Buffer> {
    const b = this.staging.pop();
    if (b) return b;
    return new Promise((resolve) => this.stagingWaiters.push(resolve));
  }

  private giveStaging(b: Buffer): void {
    const w = this.stagingWaiters.shift();
    if (w) w(b);
    else this.staging.push(b);
  }

  private nsDir(ns: string): string {
    return join(this.dir, nsDirName(ns));
  }

  /**
   * Opens (or finds) the files of one segment and counts the caller as a user. With create false
   * a segment that has no files yet resolves to undefined (nothing stored: reads miss, removes
   * have nothing to do) and none are created.
   */
  private async acquire(ns: string, segment: number, create: boolean): Promise<SegmentFiles | undefined> {
    const key = segKey(ns, segment);
    for (;;) {
      let p = this.segments.get(key);
      if (p === undefined) {
        p = this.openSegment(ns, segment, create);
        const mine = p;
        p.then(
          (f) => {
            if (f === undefined && this.segments.peek(key) === mine) this.segments.delete(key);
          },
          () => {
            if (this.segments.peek(key) === mine) this.segments.delete(key);
          },
        );
        this.segments.set(key, p);
      }
      const f = await p.catch((err) => {
        throw ioError(err, this.dir);
      });
      if (f !== undefined) {
        f.users++;
        return f;
      }
      if (!create) return undefined;
      // A reader's open found no files; this writer creates them.
      if (this.segments.peek(key) === p) this.segments.delete(key);
    }
  }

  private async openSegment(ns: string, segment: number, create: boolean): Promise<SegmentFiles | undefined> {
    await this.ready;
    this.#register(ns);
    const nsDir = this.nsDir(ns);
    const base = join(nsDir, String(segment));
    if (create) {
      await mkdir(nsDir, { recursive: true });
    } else {
      try {
        await lstat(base + '.meta');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
        throw err;
      }
    }
    const flags = constants.O_RDWR | constants.O_CREAT;
    const data = await open(base + '.pages', this.direct ? flags | constants.O_DIRECT : flags, 0o600);
    const meta = await open(base + '.meta', flags, 0o600).catch(async (err) => {
      await data.close();
      throw err;
    });
    let metaCache: Buffer;
    let blockSize: number;
    try {
      metaCache = Buffer.alloc((await meta.stat()).size);
      await readFully(meta, metaCache, 0);
      blockSize = (await data.stat()).blksize || 4096;
    } catch (err) {
      await Promise.allSettled([data.close(), meta.close()]);
      throw err;
    }
    return { data, meta, metaCache, present: countPresent(metaCache), blockSize, dirty: false, users: 0, evicted: false };
  }

  private release(f: SegmentFiles): void {
    if (--f.users === 0 && f.evicted) void this.closeSegment(f);
  }

  /** Closes a segment's files once (later calls return the same promise). */
  private closeSegment(f: SegmentFiles): Promise<void> {
    if (f.closing) return f.closing;
    const done = (async () => {
      if (f.dirty && this.fsync) await Promise.all([f.data.datasync(), f.meta.datasync()]).catch(() => {});
      await Promise.allSettled([f.data.close(), f.meta.close()]);
    })();
    f.closing = done;
    this.closingSegments.add(done);
    void done.then(() => this.closingSegments.delete(done));
    return done;
  }

  /** Runs `fn` with the namespace's shared gate held (see NamespaceGate). */
  private async shared<T>(ns: string, fn: () => Promise<T>): Promise<T> {
    const wait = this.gate.enter(ns);
    if (wait) await wait;
    try {
      return await fn();
    } finally {
      this.gate.leave(ns);
    }
  }

  private segmentLock(key: string): AsyncRwLock {
    let l = this.segmentLocks.get(key);
    if (l === undefined) {
      l = new AsyncRwLock(() => this.segmentLocks.delete(key));
      this.segmentLocks.set(key, l);
    }
    return l;
  }

  /** Runs `fn` for each run of the batch with its segment's files held open (skipping segments
   *  that have no files when `create` is false). */
  private forEachRun(
    ns: string,
    pages: number[],
    create: boolean,
    fn: (f: SegmentFiles, run: Run, first: number, segment: number) => Promise<void>,
  ): Promise<unknown> {
    return Promise.all(
      toRuns(pages).map(async (run) => {
        const segment = Math.floor(run.start / SEGMENT_PAGES);
        const f = await this.acquire(ns, segment, create);
        if (f === undefined) return;
        try {
          await fn(f, run, run.start - segment * SEGMENT_PAGES, segment);
        } finally {
          this.release(f);
        }
      }),
    );
  }

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const ps = this.pageSize;
    let hits = 0;
    await this.shared(ns, () =>
      this.forEachRun(ns, pages, false, async (f, run, first) => {
        const meta = f.metaCache.subarray(first * META_BYTES, (first + run.count) * META_BYTES);
        const metaRead = meta.length;
        const data = Buffer.allocUnsafe(run.count * ps);
        const dataRead = await this.readData(f.data, data, first * ps);
        const sums = pageChecksums(data.subarray(0, Math.min(run.count * ps, Math.floor(dataRead / ps) * ps)), ps);
        for (let k = 0; k < run.count; k++) {
          const at = k * META_BYTES;
          if (at + META_BYTES > metaRead || meta.readUInt32LE(at + 4) !== PRESENT) continue; // a miss
          const page = run.start + k;
          if ((k + 1) * ps > dataRead) {
            throw new TierStackError(ErrorCode.Corrupt, `page ${page} of ${ns} is recorded but its data file is truncated`, {
              details: { ns, page },
            });
          }
          const bytes = data.subarray(k * ps, (k + 1) * ps);
          if (sums[k] !== meta.readUInt32LE(at)) {
            throw new TierStackError(ErrorCode.Checksum, `page ${page} of ${ns} fails its checksum`, { details: { ns, page } });
          }
          for (const i of run.idx[k]!) {
            bytes.copy(out, i * ps);
            found[i] = 1;
            hits++;
          }
        }
      }),
    );
    return hits;
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, _options: PutOptions): Promise<void> {
    const ps = this.pageSize;
    await this.shared(ns, () =>
      this.forEachRun(ns, pages, true, (f, run, first, segment) =>
        this.segmentLock(segKey(ns, segment)).read(async () => {
          f.dirty = true;
          const buf = Buffer.allocUnsafe(run.count * ps);
          const meta = Buffer.alloc(run.count * META_BYTES);
          for (let k = 0; k < run.count; k++) {
            // With duplicate page numbers in one batch, the last one wins (as for a sequence of puts).
            const i = run.idx[k]!.at(-1)!;
            const src = data.subarray(i * ps, (i + 1) * ps);
            src.copy(buf, k * ps);
            meta.writeUInt32LE(PRESENT, k * META_BYTES + 4);
          }
          const sums = pageChecksums(buf, ps);
          for (let k = 0; k < run.count; k++) meta.writeUInt32LE(sums[k]!, k * META_BYTES);
          await this.writeData(f.data, buf, first * ps);
          await writeFully(f.meta, meta, first * META_BYTES);
          setMeta(f, meta, first);
        }),
      ),
    );
  }

  /**
   * Clears the meta entries of the removed pages, then gives their data blocks back: holes are
   * punched for them (with the addon) and a segment left with no page is dropped. Meta first, so
   * a concurrent reader sees the page absent (native readers that already saw it present find the
   * hole, fail the checksum, re-read and see it absent).
   */
  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    const ps = this.pageSize;
    const emptied = new Set<number>();
    await this.shared(ns, () =>
      this.forEachRun(ns, pages, false, (f, run, first, segment) =>
        this.segmentLock(segKey(ns, segment)).write(async () => {
          // Only entries that are present: removing absent pages writes nothing (and never grows the meta file).
          const holes: number[] = [];
          let lo = -1;
          let hi = -1;
          for (let k = 0; k < run.count; k++) {
            if (!isPresent(f, first + k)) continue;
            if (lo < 0) lo = k;
            if (hi === k - 1 && holes.length > 0) holes[holes.length - 1]! += ps;
            else holes.push((first + k) * ps, ps);
            hi = k;
          }
          if (lo >= 0) {
            f.dirty = true;
            const cleared = Buffer.alloc((hi - lo + 1) * META_BYTES);
            await writeFully(f.meta, cleared, (first + lo) * META_BYTES);
            setMeta(f, cleared, first + lo);
            await this.punch(f, widenHoles(f, holes, ps));
          }
          if (f.present === 0) emptied.add(segment);
        }),
      ),
    );
    for (const segment of emptied) await this.dropSegmentIfEmpty(ns, segment);
  }

  /** Punches holes for [offset, length] pairs of a data file. Failures cost space, never data. */
  private async punch(f: SegmentFiles, ranges: number[]): Promise<void> {
    // Without the addon JavaScript has no fallocate: the blocks stay until the segment is dropped.
    if (this.#addon === undefined || this.#punchUnsupported || ranges.length === 0) return;
    try {
      await this.#addon.punchHoles(f.data.fd, Float64Array.from(ranges));
      this.#space.holesPunched += ranges.length / 2;
    } catch (err) {
      if (hasCode(err, ErrorCode.Unsupported)) this.#punchUnsupported = true; // this filesystem cannot
      else this.#space.punchErrors++;
    }
  }

  /**
   * Deletes a segment's files if none of its pages is present, with the namespace's other calls
   * held off. The native reader's cached files of the segment are dropped before the unlink (so it
   * stops reading them) and again after it (a reader that opened them in between does not cache them).
   */
  private async dropSegmentIfEmpty(ns: string, segment: number): Promise<void> {
    await this.gate.exclusive(ns, async () => {
      const key = segKey(ns, segment);
      const base = join(this.nsDir(ns), String(segment));
      const p = this.segments.peek(key);
      const f = p && (await p.catch(() => undefined));
      if (f !== undefined) {
        if (f.present > 0) return;
        f.dirty = false; // nothing worth syncing in files about to go
        this.segments.delete(key);
        await this.closeSegment(f);
      } else {
        const meta = await readFile(base + '.meta').catch(() => undefined);
        if (meta === undefined || countPresent(meta) > 0) return;
      }
      const id = namespaceId(ns);
      if (this.#handle !== undefined) this.#addon!.fileStoreInvalidate(this.#handle, id, segment);
      await Promise.all([unlinkIfPresent(base + '.pages'), unlinkIfPresent(base + '.meta')]);
      if (this.#handle !== undefined) this.#addon!.fileStoreInvalidate(this.#handle, id, segment);
      this.#space.segmentsDropped++;
      await rmdir(this.nsDir(ns)).catch(() => {}); // the namespace's last segment: its directory goes too
    });
  }

  /**
   * Forgets every page of a namespace and deletes its directory, giving all its space back. Calls
   * on the namespace that started before wait for it to finish first; later ones wait for it.
   */
  removeNamespace(ns: string): Promise<void> {
    return this.track(async () => {
      assertNamespace(ns);
      await this.ready;
      await this.gate.exclusive(ns, async () => {
        const prefix = `${ns}\0`;
        for (const key of [...this.segments.keys()]) {
          if (!key.startsWith(prefix)) continue;
          const p = this.segments.peek(key);
          this.segments.delete(key);
          const f = await p?.catch(() => undefined);
          if (f !== undefined) {
            f.dirty = false;
            await this.closeSegment(f);
          }
        }
        const id = namespaceId(ns);
        if (this.#handle !== undefined) this.#addon!.fileStoreInvalidate(this.#handle, id, -1);
        try {
          await rm(this.nsDir(ns), { recursive: true, force: true });
        } catch (err) {
          throw ioError(err, this.nsDir(ns));
        }
        if (this.#handle !== undefined) this.#addon!.fileStoreInvalidate(this.#handle, id, -1);
        this.#space.namespacesRemoved++;
      });
    });
  }

  /**
   * Bytes of disk actually allocated (st_blocks * 512, as `du` counts them, directories included)
   * by one namespace, or by the whole tier directory when `ns` is absent.
   */
  diskUsage(ns?: string): Promise<number> {
    return this.track(async () => {
      await this.ready;
      if (ns !== undefined) assertNamespace(ns);
      return allocatedBytes(ns === undefined ? this.dir : this.nsDir(ns));
    });
  }

  protected override async doFlush(): Promise<void> {
    if (!this.fsync) return;
    await Promise.all([...this.closingSegments]);
    for (const p of [...this.segments.values()]) {
      const f = await p.catch(() => undefined);
      if (f === undefined || !f.dirty || f.closing) continue; // closing segments sync themselves
      f.dirty = false;
      await Promise.all([f.data.datasync(), f.meta.datasync()]).catch((err) => {
        if (!f.closing) throw err; // dropped meanwhile: nothing left to sync
      });
    }
  }

  protected override async doClose(): Promise<void> {
    await this.doFlush().catch(() => {});
    this.segments.clear(); // dispose closes each segment's files
    await new Promise((r) => setImmediate(r));
    await Promise.all([...this.closingSegments]);
    if (this.#handle !== undefined) this.#addon!.fileStoreClose(this.#handle);
  }

  protected override extraStats(): Record<string, number> {
    const native = this.#handle !== undefined ? this.#addon!.fileStoreStats(this.#handle) : {};
    return {
      openSegments: this.segments.size,
      direct: this.direct ? 1 : 0,
      native: this.#handle !== undefined ? 1 : 0,
      ...this.#space,
      ...native,
    };
  }

  /** Reads at `pos` into `buf`; returns the bytes read (short at end of file). */
  private async readData(fh: FileHandle, buf: Buffer, pos: number): Promise<number> {
    if (!this.direct) return readFully(fh, buf, pos);
    let total = 0;
    for (let off = 0; off < buf.length; off += STAGING_BYTES) {
      const len = Math.min(STAGING_BYTES, buf.length - off);
      const stage = await this.takeStaging();
      try {
        const n = await readFully(fh, stage.subarray(0, len), pos + off);
        stage.copy(buf, off, 0, n);
        total += n;
        if (n < len) break;
      } finally {
        this.giveStaging(stage);
      }
    }
    return total;
  }

  private async writeData(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
    if (!this.direct) return writeFully(fh, buf, pos);
    for (let off = 0; off < buf.length; off += STAGING_BYTES) {
      const len = Math.min(STAGING_BYTES, buf.length - off);
      const stage = await this.takeStaging();
      try {
        buf.copy(stage, 0, off, off + len);
        await writeFully(fh, stage.subarray(0, len), pos + off);
      } finally {
        this.giveStaging(stage);
      }
    }
  }
}

/** Mirrors a meta write into the segment's cache (growing it as the file grew) and its present count. */
function setMeta(f: SegmentFiles, meta: Buffer, first: number): void {
  const end = (first + meta.length / META_BYTES) * META_BYTES;
  if (end > f.metaCache.length) {
    const grown = Buffer.alloc(Math.min(SEGMENT_PAGES * META_BYTES, Math.max(end, f.metaCache.length * 2)));
    f.metaCache.copy(grown);
    f.metaCache = grown;
  }
  const at = first * META_BYTES;
  for (let k = 0; k < meta.length; k += META_BYTES) {
    const was = f.metaCache.readUInt32LE(at + k + 4) === PRESENT;
    const now = meta.readUInt32LE(k + 4) === PRESENT;
    if (was !== now) f.present += now ? 1 : -1;
  }
  meta.copy(f.metaCache, at);
}

function isPresent(f: SegmentFiles, page: number): boolean {
  const at = page * META_BYTES;
  return at + META_BYTES <= f.metaCache.length && f.metaCache.readUInt32LE(at + 4) === PRESENT;
}

/**
 * Pages smaller than a filesystem block: widens each hole over absent neighbours to the block
 * boundaries around it (their bytes are garbage), so blocks whose pages are all gone are freed even
 * when their pages were removed by different calls. Merges holes that touch.
 */
function widenHoles(f: SegmentFiles, holes: number[], ps: number): number[] {
  const block = f.blockSize;
  if (ps >= block || block % ps !== 0) return holes;
  const absent = (from: number, to: number): boolean => {
    for (let off = from; off < to; off += ps) if (isPresent(f, off / ps)) return false;
    return true;
  };
  const out: number[] = [];
  for (let i = 0; i < holes.length; i += 2) {
    let start = holes[i]!;
    let end = start + holes[i + 1]!;
    const down = Math.floor(start / block) * block;
    if (down < start && absent(down, start)) start = down;
    const up = Math.ceil(end / block) * block;
    if (up > end && absent(end, up)) end = up;
    const last = out.length - 2;
    if (last >= 0 && out[last]! + out[last + 1]! >= start) out[last + 1] = Math.max(out[last]! + out[last + 1]!, end) - out[last]!;
    else out.push(start, end - start);
  }
  return out;
}

function countPresent(meta: Buffer): number {
  let n = 0;
  for (let at = 0; at + META_BYTES <= meta.length; at += META_BYTES) if (meta.readUInt32LE(at + 4) === PRESENT) n++;
  return n;
}

/** A namespace's directory name: percent-encoded, dots too (no ".", "..", hidden names). */
function nsDirName(ns: string): string {
  return encodeURIComponent(ns).replace(/\./g, '%2E');
}

const segKey = (ns: string, segment: number): string => `${ns}\0${segment}`;

async function unlinkIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(err, path);
  }
}

/** st_blocks * 512 of a file or directory tree (du -s --block-size=1). */
async function allocatedBytes(path: string): Promise<number> {
  let st;
  try {
    st = await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw ioError(err, path);
  }
  let total = st.blocks * 512;
  if (st.isDirectory()) {
    const names = await readdir(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[];
      throw ioError(err, path);
    });
    for (const name of names) total += await allocatedBytes(join(path, name));
  }
  return total;
}

/**
 * Per-namespace gate: ordinary calls share it, whole-namespace operations (dropping a segment's
 * files, removeNamespace) hold it alone. An exclusive section waits for the calls under way and
 * holds off new ones until it is done.
 */
class NamespaceGate {
  readonly #active = new Map<string, number>();
  readonly #exclusive = new Map<string, Promise<void>>();
  readonly #idle = new Map<string, () => void>();

  /** Counts a shared user of `ns`; returns a promise to await first when an exclusive section runs. */
  enter(ns: string): Promise<void> | undefined {
    if (!this.#exclusive.has(ns)) {
      this.#active.set(ns, (this.#active.get(ns) ?? 0) + 1);
      return undefined;
    }
    return (async () => {
      while (this.#exclusive.has(ns)) await this.#exclusive.get(ns);
      this.#active.set(ns, (this.#active.get(ns) ?? 0) + 1);
    })();
  }

  leave(ns: string): void {
    const n = (this.#active.get(ns) ?? 1) - 1;
    if (n > 0) {
      this.#active.set(ns, n);
      return;
    }
    this.#active.delete(ns);
    const idle = this.#idle.get(ns);
    if (idle) {
      this.#idle.delete(ns);
      idle();
    }
  }

  async exclusive<T>(ns: string, fn: () => Promise<T>): Promise<T> {
    while (this.#exclusive.has(ns)) await this.#exclusive.get(ns);
    let release!: () => void;
    this.#exclusive.set(ns, new Promise<void>((r) => (release = r)));
    try {
      if (this.#active.has(ns)) await new Promise<void>((r) => this.#idle.set(ns, r));
      return await fn();
    } finally {
      this.#exclusive.delete(ns);
      release();
    }
  }
}

/** A small async readers-writer lock (FIFO: a waiting writer holds off later readers). */
class AsyncRwLock {
  #readers = 0;
  #writer = false;
  readonly #waiting: Array<{ write: boolean; go: () => void }> = [];
  constructor(private readonly onIdle: () => void) {}

  async read<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#writer || this.#waiting.length > 0) await new Promise<void>((go) => this.#waiting.push({ write: false, go }));
    else this.#readers++;
    try {
      return await fn();
    } finally {
      this.#readers--;
      this.#next();
    }
  }

  async write<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#writer || this.#readers > 0 || this.#waiting.length > 0) await new Promise<void>((go) => this.#waiting.push({ write: true, go }));
    else this.#writer = true;
    try {
      return await fn();
    } finally {
      this.#writer = false;
      this.#next();
    }
  }

  /** Admits waiters (counting them in before they run); reports idleness to the owner. */
  #next(): void {
    while (this.#waiting.length > 0) {
      const w = this.#waiting[0]!;
      if (w.write) {
        if (this.#writer || this.#readers > 0) return;
        this.#waiting.shift();
        this.#writer = true;
        w.go();
        return;
      }
      if (this.#writer) return;
      this.#waiting.shift();
      this.#readers++;
      w.go();
    }
    if (!this.#writer && this.#readers === 0) this.onIdle();
  }
}

/** Sorts a batch by page number and cuts it into runs of consecutive pages. */
function toRuns(pages: number[]): Run[] {
  const order = pages.map((_, i) => i).sort((a, b) => pages[a]! - pages[b]!);
  const runs: Run[] = [];
  let cur: Run | undefined;
  for (const i of order) {
    const p = pages[i]!;
    const sameSegment = cur !== undefined && Math.floor(p / SEGMENT_PAGES) === Math.floor(cur.start / SEGMENT_PAGES);
    if (cur && p === cur.start + cur.count - 1) {
      cur.idx[cur.count - 1]!.push(i); // a duplicate of the last page (the sort is stable)
    } else if (cur && sameSegment && p === cur.start + cur.count) {
      cur.idx.push([i]);
      cur.count++;
    } else {
      cur = { start: p, idx: [[i]], count: 1 };
      runs.push(cur);
    }
  }
  return runs;
}

async function readFully(fh: FileHandle, buf: Buffer, pos: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, pos + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

async function writeFully(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, pos + done);
    done += bytesWritten;
  }
}

function ioError(err: unknown, path: string): TierStackError {
  const e = err as NodeJS.ErrnoException;
  return new TierStackError(ErrorCode.Io, `${path}: ${e.message}`, { cause: err, details: { errno: e.code, path } });
}
