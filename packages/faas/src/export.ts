/**
 * Export: writes a snapshot back out as a raw memory file, every stored page verified against
 * its checksum; zero pages are written as holes. The file appears under its name only when it
 * is complete (written to a temporary name, then renamed).
 */
import { open, rename, unlink } from 'node:fs/promises';
import { TierStackError, ErrorCode, isTierStackError } from '@tierstack/core';
import type { SnapshotCatalog } from './catalog.js';
import { readSnapshotPages } from './reader.js';
import { progressSink, type ProgressOptions } from './progress.js';

export interface ExportOptions extends ProgressOptions {
  batchPages?: number;
}

export interface ExportResult {
  bytes: number;
  pages: number;
  ms: number;
}

export async function exportSnapshot(catalog: SnapshotCatalog, id: string, outPath: string, opts: ExportOptions = {}): Promise<ExportResult> {
  const t0 = performance.now();
  const m = await catalog.get(id);
  const ps = m.pageSize;
  const batch = opts.batchPages ?? 256;
  const tmp = `${outPath}.tierstack-${process.pid}.tmp`;
  const fh = await open(tmp, 'w');
  const progress = progressSink(opts, `export ${id}`, m.pageCount);
  try {
    let stored = 0;
    for (let first = 0; first < m.pageCount; first += batch) {
      const n = Math.min(batch, m.pageCount - first);
      const pages = Array.from({ length: n }, (_, i) => first + i).filter((p) => !m.isZero(p));
      if (pages.length > 0) {
        const data = await readSnapshotPages(catalog.stack, m, pages);
        // Runs of consecutive stored pages are written with one call each.
        let k = 0;
        while (k < pages.length) {
          let j = k + 1;
          while (j < pages.length && pages[j] === pages[j - 1]! + 1) j++;
          const start = pages[k]! * ps;
          const len = Math.min((j - k) * ps, m.imageSize - start);
          await fh.write(data, k * ps, len, start);
          k = j;
        }
        stored += pages.length;
      }
      progress.update({ id, phase: 'export', done: first + n, total: m.pageCount, stored, zero: first + n - stored });
    }
    await fh.truncate(m.imageSize);
    await fh.sync();
    await fh.close();
    await rename(tmp, outPath);
    return { bytes: m.imageSize, pages: m.pageCount, ms: performance.now() - t0 };
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    if (isTierStackError(err)) throw err;
    throw new TierStackError(ErrorCode.Io, `export of ${id} to ${outPath} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    progress.stop();
  }
}
