/**
 * SnapshotReader: snapshot pages read from a stack in batches by core's addon, off the JS thread,
 * each copy verified against the snapshot's CRC-32 (a bad copy is dropped from the cache tier
 * that served it and read again from below). Pages in native tiers never touch JavaScript; pages
 * below them come through the stack's JS path (createJsPath). Servers that answer page requests
 * over a socket (the CRIU page server) read with it; the uffd engine does the same on its fault
 * threads.
 *
 * Needs core's addon (`coreAddon()`); `SnapshotReader.open` returns undefined without it.
 */
import { coreAddon, type CoreAddon } from './core-addon.js';
import { badArgument, TsStatus } from './errors.js';
import { createJsPath, type JsPath } from './js-path.js';
import type { Logger } from './logger.js';
import type { PageStore } from './page-store.js';

export interface SnapshotPagesInfo {
  /** Pages in the snapshot (stack pages 0..pageCount-1 of its namespace). */
  pageCount: number;
  /** Bit p (LSB first) set: page p is zero and never stored. */
  zeroBitmap: Uint8Array;
  /** CRC-32 (pageChecksum) of each stored page, in page order. */
  checksums: Uint32Array;
}

export interface SnapshotReadResult {
  /** Per page: TsStatus.PageFound or a negative TS_E_* status (NotFound, Checksum, ...). */
  status: Int32Array;
  /** Per page: the stack level that served it (255: a zero page, answered without a tier). */
  level: Uint8Array;
  /** Indexes of the pages that could not be read (their bytes in `out` are zeros). */
  bad: number[];
}

export interface SnapshotReaderStats {
  zeroServed: number;
  verified: number;
  badCopies: number;
  repaired: number;
  unrecoverable: number;
  /** Pages that came through the stack's JavaScript path (0 when native tiers held them all). */
  jsPathPages: number;
}

type NativeReader = InstanceType<CoreAddon['SnapshotReader']>;

export class SnapshotReader {
  private constructor(
    private readonly native: NativeReader,
    private readonly jsPath: JsPath,
    readonly pageSize: number,
  ) {}

  /** A reader of namespace `ns` of `stack`, or undefined when core's addon is not built. */
  static open(stack: PageStore, ns: string, info: SnapshotPagesInfo, options: { logger?: Logger } = {}): SnapshotReader | undefined {
    const addon = coreAddon();
    if (!addon) return undefined;
    if (!(info.zeroBitmap instanceof Uint8Array) || !(info.checksums instanceof Uint32Array)) throw badArgument('SnapshotReader needs zeroBitmap and checksums');
    const jsPath = createJsPath(stack, options);
    const id = jsPath.register(ns);
    return new SnapshotReader(new addon.SnapshotReader(jsPath, id, info), jsPath, stack.pageSize);
  }

  /** Reads `pages` into `out` (page i at i * pageSize). Never rejects for a bad page: see `bad`. */
  async read(pages: ArrayLike<number>, out: Buffer): Promise<SnapshotReadResult> {
    const n = pages.length;
    if (out.length < n * this.pageSize) throw badArgument(`SnapshotReader.read: out holds ${out.length} bytes, ${n} pages need ${n * this.pageSize}`);
    const list = pages instanceof Float64Array ? pages : Float64Array.from(pages);
    const status = new Int32Array(n);
    const level = new Uint8Array(n);
    const notRead = await this.native.read(list, out, status, level);
    const bad: number[] = [];
    for (let i = 0; notRead > 0 && i < n; i++) if (status[i] !== TsStatus.PageFound) bad.push(i);
    return { status, level, bad };
  }

  stats(): SnapshotReaderStats {
    return { ...this.native.stats(), jsPathPages: this.jsPath.stats().pages };
  }

  /** Reads in flight finish; later reads throw TS_ERR_CLOSED. */
  close(): void {
    this.native.close();
  }
}
