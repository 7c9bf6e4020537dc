/**
 * Import: reads a memory image (one or more files forming the raw image, in order) page by page,
 * elides zero pages, checksums the rest and writes them in batches to the stack's bottom tier
 * under a fresh namespace; the manifest is published last. On any failure the pages written so
 * far are removed again and nothing becomes visible.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { TierStackError, ErrorCode, pageChecksums, isTierStackError } from '@tierstack/core';
import { SnapshotManifest, assertSnapshotId, type RegionInfo, type SourceKind } from './manifest.js';
import { removeSnapshotPages, type SnapshotCatalog } from './catalog.js';
import { progressSink, type ProgressOptions } from './progress.js';

/** One file (or part of one) contributing bytes to the raw image. */
export interface ImageSegment {
  path: string;
  /** Where in the file the segment starts (default 0). */
  offset?: number;
  /** Bytes the segment must provide; a shorter file is TS_ERR_CORRUPT (truncated). */
  length: number;
}

export interface ImageSource {
  kind: SourceKind;
  /** Shown by `info` (a path). */
  source: string;
  segments: ImageSegment[];
  /** Regions over the raw image (default: one region covering it). */
  regions?: RegionInfo[];
}

export interface ImportOptions extends ProgressOptions {
  /** Overwrite an existing snapshot of this id (default: refuse with TS_ERR_EXISTS). */
  replace?: boolean;
  /** Pages per write batch (default 256). */
  batchPages?: number;
}

export interface ImportResult {
  manifest: SnapshotManifest;
  storedPages: number;
  zeroPages: number;
  bytes: number;
  ms: number;
}

const range = (start: number, n: number): number[] => Array.from({ length: n }, (_, i) => start + i);

/** Reads exactly `len` bytes at `pos` unless the file ends: returns the bytes read. */
async function readFully(fh: FileHandle, buf: Buffer, len: number, pos: number): Promise<number> {
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

export async function importImage(catalog: SnapshotCatalog, id: string, src: ImageSource, opts: ImportOptions = {}): Promise<ImportResult> {
  const t0 = performance.now();
  assertSnapshotId(id);
  await catalog.assertImportable(id, opts.replace === true);
  const ps = catalog.pageSize;
  const imageSize = src.segments.reduce((n, s) => n + s.length, 0);
  const pageCount = Math.ceil(imageSize / ps);
  if (pageCount >= 2 ** 32) throw new TierStackError(ErrorCode.Unsupported, `an image of ${pageCount} pages is larger than a manifest can describe (2^32 pages)`);
  const regions = src.regions ?? [{ name: 'memory', size: pageCount * ps, fileOffset: 0, base: 0, pid: 0 }];
  for (const r of regions) {
    if (r.size % ps !== 0 || r.fileOffset % ps !== 0 || r.fileOffset + r.size > pageCount * ps) {
      throw new TierStackError(ErrorCode.BadArgument, `region ${r.name} (offset ${r.fileOffset}, ${r.size} bytes) is not page-aligned or does not fit the ${imageSize}-byte image`);
    }
  }
  const batchPages = opts.batchPages ?? 256;
  const target = catalog.imageStore;
  const ns = `snapshot/${id}/${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
  const zeroBitmap = new Uint8Array(Math.ceil(pageCount / 8));
  const checksums = new Uint32Array(pageCount);
  const zeroPage = Buffer.alloc(ps);
  let stored = 0;
  const written: number[] = [];
  const progress = progressSink(opts, `import ${id}`, pageCount);
  const handles: FileHandle[] = [];

  try {
    for (const s of src.segments) {
      try {
        handles.push(await open(s.path, 'r'));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code === 'ENOENT' ? ErrorCode.NotFound : ErrorCode.Io;
        throw new TierStackError(code, `cannot open ${s.path}: ${(err as Error).message}`, { cause: err, details: { path: s.path } });
      }
    }
    // The image as a sequence of (segment, position) reads; batches may straddle segments.
    let seg = 0;
    let segPos = 0;
    const readBatch = async (firstPage: number): Promise<Buffer> => {
      const n = Math.min(batchPages, pageCount - firstPage);
      const buf = Buffer.alloc(n * ps);
      let filled = 0;
      const want = Math.min(n * ps, imageSize - firstPage * ps);
      while (filled < want) {
        const s = src.segments[seg]!;
        const take = Math.min(want - filled, s.length - segPos);
        const got = await readFully(handles[seg]!, buf.subarray(filled), take, (s.offset ?? 0) + segPos);
        if (got < take) {
          throw new TierStackError(ErrorCode.Corrupt, `${s.path} is truncated: expected ${s.length} bytes from offset ${s.offset ?? 0}, it ends after ${segPos + got}`, {
            details: { path: s.path },
          });
        }
        filled += got;
        segPos += got;
        if (segPos === s.length) {
          seg++;
          segPos = 0;
        }
      }
      return buf;
    };

    let next = pageCount > 0 ? readBatch(0) : undefined;
    for (let first = 0; first < pageCount; first += batchPages) {
      const buf = await next!;
      const n = buf.length / ps;
      // Read ahead while this batch is checked and written.
      next = first + n < pageCount ? readBatch(first + n) : undefined;
      next?.catch(() => undefined);
      const pages: number[] = [];
      let data = buf;
      const sums = pageChecksums(buf.subarray(0, n * ps), ps); // one native call for the batch
      for (let k = 0; k < n; k++) {
        const page = buf.subarray(k * ps, (k + 1) * ps);
        const p = first + k;
        if (page.equals(zeroPage)) {
          zeroBitmap[p >>> 3]! |= 1 << (p & 7);
        } else {
          checksums[p] = sums[k]!;
          pages.push(p);
        }
      }
      if (pages.length > 0) {
        if (pages.length < n) data = Buffer.concat(pages.map((p) => buf.subarray((p - first) * ps, (p - first + 1) * ps)));
        // Registered (durably) before its first page: gc() can always reclaim an interrupted import.
        if (written.length === 0) await catalog.registerImport(ns);
        written.push(...pages);
        await target.put(ns, pages, data);
        stored += pages.length;
      }
      progress.update({ id, phase: 'import', done: first + n, total: pageCount, stored, zero: first + n - stored });
    }
    await target.flush();

    const manifest = new SnapshotManifest({
      id,
      pageSize: ps,
      regions,
      pageCount,
      imageSize,
      zeroBitmap,
      checksums: Uint32Array.from(range(0, pageCount).filter((p) => (zeroBitmap[p >>> 3]! & (1 << (p & 7))) === 0).map((p) => checksums[p]!)),
      workingSets: [],
      sourceKind: src.kind,
      source: src.source,
      createdAt: Date.now(),
      namespace: ns,
    });
    const old = await catalog.commit(manifest, opts.replace === true);
    if (old && old.namespace !== ns) {
      await removeSnapshotPages(catalog.stack, old.namespace, old.storedPageList()).catch((err) => {
        catalog.log.warn({ err, id, ns: old.namespace }, 'could not remove the pages of the replaced snapshot');
      });
    }
    return { manifest, storedPages: stored, zeroPages: pageCount - stored, bytes: imageSize, ms: performance.now() - t0 };
  } catch (err) {
    // Nothing half-written may stay behind: the manifest was not published, drop the pages and
    // give the namespace's space back (gc() does it later if this fails).
    if (written.length > 0) {
      await removeSnapshotPages(target, ns, written)
        .then(() => catalog.discardImport(ns))
        .catch((e) => catalog.log.warn({ err: e, id, ns }, 'cleanup after a failed import failed'));
    }
    if (isTierStackError(err)) throw err;
    throw new TierStackError(ErrorCode.Io, `import of ${id} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    progress.stop();
    await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
  }
}

/** A raw memory file: one region covering the file. */
export async function importRawFile(catalog: SnapshotCatalog, id: string, path: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const size = await fileSize(path);
  return importImage(catalog, id, { kind: 'raw', source: path, segments: [{ path, length: size }] }, opts);
}

export async function fileSize(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code === 'ENOENT' ? ErrorCode.NotFound : ErrorCode.Io;
    throw new TierStackError(code, `cannot stat ${path}: ${(err as Error).message}`, { cause: err, details: { path } });
  }
}
