/**
 * Firecracker memory files: guest memory regions laid end to end. The caller describes the
 * regions (an array or a small JSON file); without a description the file is one region.
 *
 * Accepted region fields (Firecracker's own names and ours): `size` (bytes, required),
 * `offset` | `file_offset` (default: cumulative), `base` | `guest_phys_addr` | `base_address`
 * (guest-physical base, optional), `name`.
 */
import { readFile } from 'node:fs/promises';
import { TierStackError, ErrorCode } from '@tierstack/core';
import type { RegionInfo } from './manifest.js';
import type { SnapshotCatalog } from './catalog.js';
import { importImage, fileSize, type ImportOptions, type ImportResult } from './import.js';

export type RegionDescription = Record<string, unknown>;

const bad = (msg: string): TierStackError => new TierStackError(ErrorCode.BadArgument, `Firecracker regions: ${msg}`);

function num(v: unknown, what: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'string' && /^0x[0-9a-f]+$/i.test(v) ? Number.parseInt(v, 16) : Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw bad(`${what} is not a non-negative integer`);
  return n;
}

/** Checks a region description against a memory file of `fileBytes` bytes. */
export function parseFirecrackerRegions(desc: unknown, fileBytes: number, pageSize: number): RegionInfo[] {
  const list = Array.isArray(desc) ? desc : (desc as { regions?: unknown })?.regions;
  if (!Array.isArray(list) || list.length === 0) throw bad('expected a non-empty array of regions (or {"regions": [...]})');
  let cursor = 0;
  const regions = list.map((r: RegionDescription, i) => {
    if (typeof r !== 'object' || r === null) throw bad(`region ${i} is not an object`);
    const size = num(r.size, `region ${i} size`);
    if (!size) throw bad(`region ${i} has no size`);
    const fileOffset = num(r.offset ?? r.file_offset, `region ${i} offset`) ?? cursor;
    const base = num(r.base ?? r.guest_phys_addr ?? r.base_address, `region ${i} base`) ?? 0;
    if (size % pageSize || fileOffset % pageSize) throw bad(`region ${i} is not aligned to ${pageSize}-byte pages`);
    cursor = fileOffset + size;
    return { name: typeof r.name === 'string' ? r.name : `region${i}`, size, fileOffset, base, pid: 0 };
  });
  const sorted = [...regions].sort((a, b) => a.fileOffset - b.fileOffset);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i - 1]!.fileOffset + sorted[i - 1]!.size > sorted[i]!.fileOffset) throw bad(`regions ${sorted[i - 1]!.name} and ${sorted[i]!.name} overlap`);
  }
  const end = Math.max(...regions.map((r) => r.fileOffset + r.size));
  if (end > fileBytes) {
    throw new TierStackError(ErrorCode.Corrupt, `the memory file is truncated: the regions need ${end} bytes, the file has ${fileBytes}`);
  }
  return regions;
}

export interface FirecrackerImportOptions extends ImportOptions {
  /** Regions as an array, or the path of a JSON file holding them. */
  regions?: RegionDescription[] | string;
}

export async function importFirecracker(catalog: SnapshotCatalog, id: string, memPath: string, opts: FirecrackerImportOptions = {}): Promise<ImportResult> {
  const size = await fileSize(memPath);
  let desc: unknown = opts.regions;
  if (typeof desc === 'string') {
    try {
      desc = JSON.parse(await readFile(desc, 'utf8'));
    } catch (err) {
      throw bad(`cannot read ${opts.regions as string}: ${(err as Error).message}`);
    }
  }
  const regions = desc === undefined ? undefined : parseFirecrackerRegions(desc, size, catalog.pageSize);
  return importImage(catalog, id, { kind: 'firecracker', source: memPath, segments: [{ path: memPath, length: size }], ...(regions ? { regions } : {}) }, opts);
}
