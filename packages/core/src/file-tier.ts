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
 */
import { mkdir, open, readFile, writeFile, unlink, type FileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';
import { LRUCache } from 'lru-cache';
import { BasePageStore, DEFAULT_PAGE_SIZE, type PutOptions } from './page-store.js';
import { TierStackError, ErrorCode } from './errors.js';
import { pageChecksum } from './checksum.js';

export interface FileTierOptions {
  /** Directory holding the tier's files (created if missing). */
  dir: string;
  pageSize?: number;
  name?: string;
  /** Open data files with O_DIRECT (bypass the page cache; I/O goes through aligned staging buffers). */
  direct?: boolean;
  /** fsync data and meta files on flush() (default true). */
  fsync?: boolean;
}

const FORMAT = 'tierstack-file';
const VERSION = 1;
const META_BYTES = 8;
const PRESENT = 0x50535431; // "1TSP" little-endian: a present page
const STAGING_BYTES = 1 << 20;

const SEGMENT_PAGES = 2 ** 18;
const OPEN_SEGMENTS = 256; // segment files kept open (LRU); busy ones are closed when idle

interface SegmentFiles {
  data: FileHandle;
  meta: FileHandle;
  /** The meta file's contents: reads consult it instead of issuing a second pread. */
  metaCache: Buffer;
  dirty: boolean;
  users: number;
  evicted: boolean;
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
  private readonly segments: LRUCache<string, Promise<SegmentFiles>>;
  private readonly closingSegments = new Set<Promise<void>>();
  private ready: Promise<void>;
  private staging: Buffer[] = [];
  private stagingWaiters: Array<(b: Buffer) => void> = [];

  constructor(options: FileTierOptions) {
    super(options.name ?? 'file', options.pageSize ?? DEFAULT_PAGE_SIZE);
    this.dir = options.dir;
    this.direct = options.direct === true;
    this.fsync = options.fsync !== false;
    this.segments = new LRUCache<string, Promise<SegmentFiles>>({
      max: OPEN_SEGMENTS,
      dispose: (p) => {
        void p.then(
          (f) => {
            f.evicted = true;
            if (f.users === 0) this.closeSegment(f);
          },
          () => {},
        );
      },
    });
    this.ready = this.init();
    this.ready.catch(() => {}); // surfaced by the first call
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

  /** Opens (or finds) the files of one segment and counts the caller as a user. */
  private async acquire(ns: string, segment: number): Promise<SegmentFiles> {
    const key = `${ns}\0${segment}`;
    let p = this.segments.get(key);
    if (p === undefined) {
      p = (async () => {
        await this.ready;
        const nsDir = join(this.dir, encodeURIComponent(ns).replace(/\./g, '%2E'));
        await mkdir(nsDir, { recursive: true });
        const base = join(nsDir, String(segment));
        const flags = constants.O_RDWR | constants.O_CREAT;
        const data = await open(base + '.pages', this.direct ? flags | constants.O_DIRECT : flags, 0o600);
        const meta = await open(base + '.meta', flags, 0o600).catch(async (err) => {
          await data.close();
          throw err;
        });
        const metaCache = Buffer.alloc((await meta.stat()).size);
        await readFully(meta, metaCache, 0);
        return { data, meta, metaCache, dirty: false, users: 0, evicted: false };
      })();
      p.catch(() => this.segments.delete(key));
      this.segments.set(key, p);
    }
    const f = await p.catch((err) => {
      throw ioError(err, this.dir);
    });
    f.users++;
    return f;
  }

  private release(f: SegmentFiles): void {
    if (--f.users === 0 && f.evicted) this.closeSegment(f);
  }

  private closeSegment(f: SegmentFiles): void {
    const done = (async () => {
      if (f.dirty && this.fsync) await Promise.all([f.data.datasync(), f.meta.datasync()]).catch(() => {});
      await Promise.allSettled([f.data.close(), f.meta.close()]);
    })();
    this.closingSegments.add(done);
    void done.then(() => this.closingSegments.delete(done));
  }

  /** Runs `fn` for each run of the batch with its segment's files held open. */
  private forEachRun(ns: string, pages: number[], fn: (f: SegmentFiles, run: Run, first: number) => Promise<void>): Promise<unknown> {
    return Promise.all(
      toRuns(pages).map(async (run) => {
        const segment = Math.floor(run.start / SEGMENT_PAGES);
        const f = await this.acquire(ns, segment);
        try {
          await fn(f, run, run.start - segment * SEGMENT_PAGES);
        } finally {
          this.release(f);
        }
      }),
    );
  }

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const ps = this.pageSize;
    let hits = 0;
    await this.forEachRun(ns, pages, async (f, run, first) => {
        const meta = f.metaCache.subarray(first * META_BYTES, (first + run.count) * META_BYTES);
        const metaRead = meta.length;
        const data = Buffer.allocUnsafe(run.count * ps);
        const dataRead = await this.readData(f.data, data, first * ps);
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
          if (pageChecksum(bytes) !== meta.readUInt32LE(at)) {
            throw new TierStackError(ErrorCode.Checksum, `page ${page} of ${ns} fails its checksum`, { details: { ns, page } });
          }
          for (const i of run.idx[k]!) {
            bytes.copy(out, i * ps);
            found[i] = 1;
            hits++;
          }
        }
    });
    return hits;
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, _options: PutOptions): Promise<void> {
    const ps = this.pageSize;
    await this.forEachRun(ns, pages, async (f, run, first) => {
        f.dirty = true;
        const buf = Buffer.allocUnsafe(run.count * ps);
        const meta = Buffer.alloc(run.count * META_BYTES);
        for (let k = 0; k < run.count; k++) {
          // With duplicate page numbers in one batch, the last one wins (as for a sequence of puts).
          const i = run.idx[k]!.at(-1)!;
          const src = data.subarray(i * ps, (i + 1) * ps);
          src.copy(buf, k * ps);
          meta.writeUInt32LE(pageChecksum(src), k * META_BYTES);
          meta.writeUInt32LE(PRESENT, k * META_BYTES + 4);
        }
        await this.writeData(f.data, buf, first * ps);
        await writeFully(f.meta, meta, first * META_BYTES);
        setMeta(f, meta, first);
    });
  }

  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    // Clearing the meta entry is the removal; the data bytes become unreachable garbage.
    await this.forEachRun(ns, pages, async (f, run, first) => {
      f.dirty = true;
      const cleared = Buffer.alloc(run.count * META_BYTES);
      await writeFully(f.meta, cleared, first * META_BYTES);
      setMeta(f, cleared, first);
    });
  }

  protected override async doFlush(): Promise<void> {
    if (!this.fsync) return;
    await Promise.all([...this.closingSegments]);
    for (const p of [...this.segments.values()]) {
      const f = await p.catch(() => undefined);
      if (f === undefined) continue;
      if (!f.dirty) continue;
      f.dirty = false;
      await Promise.all([f.data.datasync(), f.meta.datasync()]);
    }
  }

  protected override async doClose(): Promise<void> {
    await this.doFlush().catch(() => {});
    this.segments.clear(); // dispose closes each segment's files
    await new Promise((r) => setImmediate(r));
    await Promise.all([...this.closingSegments]);
  }

  protected override extraStats(): Record<string, number> {
    return { openSegments: this.segments.size, direct: this.direct ? 1 : 0 };
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

/** Mirrors a meta write into the segment's cache, growing it as the file grew. */
function setMeta(f: SegmentFiles, meta: Buffer, first: number): void {
  const end = (first + meta.length / META_BYTES) * META_BYTES;
  if (end > f.metaCache.length) {
    const grown = Buffer.alloc(Math.min(SEGMENT_PAGES * META_BYTES, Math.max(end, f.metaCache.length * 2)));
    f.metaCache.copy(grown);
    f.metaCache = grown;
  }
  meta.copy(f.metaCache, first * META_BYTES);
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
