/**
 * Reading snapshot pages back out of the stack with their checksums verified: the one path
 * export, the CRIU page server and the JS side of restores share.
 */
import { pageChecksums, ErrorCode, TierStackError, type PageStore } from '@tierstack/core';
import type { SnapshotManifest } from './manifest.js';

export interface BadPage {
  page: number;
  /** TS_ERR_CHECKSUM (bytes differ from the manifest) or TS_ERR_NOT_FOUND (a stored page is missing). */
  code: typeof ErrorCode.Checksum | typeof ErrorCode.NotFound;
}

export interface FetchResult {
  /** pages.length * pageSize bytes; zero pages are zeros, bad pages are zero-filled too. */
  data: Buffer;
  bad: BadPage[];
  /** Pages that had to be read from the stack (non-zero pages). */
  fetched: number;
}

/**
 * Fetches snapshot pages from the stack (zero pages are not asked for) and verifies each
 * against the manifest. Never throws for a bad page: the caller decides (poison, error, close).
 */
export async function fetchSnapshotPages(store: PageStore, m: SnapshotManifest, pages: ArrayLike<number>, out?: Buffer): Promise<FetchResult> {
  const ps = m.pageSize;
  const data = out ?? Buffer.alloc(pages.length * ps);
  const want: number[] = [];
  const slot: number[] = [];
  const bad: BadPage[] = [];
  for (let i = 0; i < pages.length; i++) {
    const p = pages[i]!;
    if (p < 0 || p >= m.pageCount) {
      bad.push({ page: p, code: ErrorCode.NotFound });
      if (out) data.fill(0, i * ps, (i + 1) * ps);
    } else if (!m.isZero(p)) {
      want.push(p);
      slot.push(i);
    } else if (out) {
      data.fill(0, i * ps, (i + 1) * ps);
    }
  }
  if (want.length === 0) return { data, bad, fetched: 0 };
  // No zero pages in the batch: the stack writes straight into the result (no extra copy).
  const direct = want.length === pages.length;
  const r = await store.get(m.namespace, want, direct ? { out: data } : {});
  const sums = pageChecksums(r.data.subarray(0, want.length * ps), ps); // one native call for the batch
  for (let k = 0; k < want.length; k++) {
    const page = r.data.subarray(k * ps, (k + 1) * ps);
    const code = !r.found[k] ? ErrorCode.NotFound : sums[k] !== m.checksum(want[k]!) ? ErrorCode.Checksum : undefined;
    if (code) {
      bad.push({ page: want[k]!, code });
      data.fill(0, slot[k]! * ps, (slot[k]! + 1) * ps);
    } else if (!direct) {
      page.copy(data, slot[k]! * ps);
    }
  }
  return { data, bad, fetched: want.length };
}

/** Turns the first bad page of a fetch into a typed error. */
export function badPageError(m: SnapshotManifest, bad: BadPage[]): TierStackError {
  const b = bad[0]!;
  const what =
    b.code === ErrorCode.Checksum ? `page ${b.page} of snapshot ${m.id} does not match its checksum` : `page ${b.page} of snapshot ${m.id} is missing from the stack`;
  return new TierStackError(b.code, `${what}${bad.length > 1 ? ` (and ${bad.length - 1} more bad pages)` : ''}`, {
    details: { id: m.id, pages: bad.slice(0, 16).map((x) => x.page) },
  });
}

/** Fetches and throws on any bad page. */
export async function readSnapshotPages(store: PageStore, m: SnapshotManifest, pages: ArrayLike<number>, out?: Buffer): Promise<Buffer> {
  const r = await fetchSnapshotPages(store, m, pages, out);
  if (r.bad.length > 0) throw badPageError(m, r.bad);
  return r.data;
}
