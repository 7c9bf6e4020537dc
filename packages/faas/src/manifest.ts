/**
 * SnapshotManifest: the decoded manifest of one snapshot with the lookups restore paths need
 * (is page p zero, what is its checksum, which region holds an address).
 */
import { TierStackError, ErrorCode, badArgument } from '@tierstack/core';
import { protoTypes, toNumber } from './proto.js';

export type SourceKind = 'raw' | 'firecracker' | 'criu' | 'unknown';

export interface RegionInfo {
  name: string;
  /** Bytes (a multiple of the page size). */
  size: number;
  /** Offset in the raw memory image. */
  fileOffset: number;
  /** Guest / virtual base address where known (0 otherwise). */
  base: number;
  /** CRIU pid (0 otherwise). */
  pid: number;
}

export interface WorkingSetInfo {
  pages: number[];
  recordedAt: number;
}

export interface ManifestFields {
  id: string;
  pageSize: number;
  regions: RegionInfo[];
  pageCount: number;
  imageSize: number;
  zeroBitmap: Uint8Array;
  checksums: Uint32Array;
  workingSets: WorkingSetInfo[];
  sourceKind: SourceKind;
  source: string;
  createdAt: number;
  namespace: string;
}

const KIND_TO_ENUM: Record<SourceKind, number> = { unknown: 0, raw: 1, firecracker: 2, criu: 3 };
const ENUM_TO_KIND: SourceKind[] = ['unknown', 'raw', 'firecracker', 'criu'];
export const MANIFEST_VERSION = 1;

/** A Uint32Array as little-endian bytes (a view on little-endian hosts). */
function u32Bytes(a: Uint32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const b = Buffer.alloc(a.length * 4);
  a.forEach((v, i) => b.writeUInt32LE(v, i * 4));
  return b;
}

function bytesU32(b: Uint8Array, what: string): Uint32Array {
  if (b.length % 4 !== 0) throw new TierStackError(ErrorCode.Corrupt, `manifest ${what} are not whole u32 values`);
  const out = new Uint32Array(b.length / 4);
  if (LITTLE_ENDIAN) new Uint8Array(out.buffer).set(b);
  else for (let i = 0; i < out.length; i++) out[i] = Buffer.from(b.buffer, b.byteOffset, b.length).readUInt32LE(i * 4);
  return out;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Snapshot ids become part of namespaces and file names: a conservative alphabet. */
export function assertSnapshotId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || !ID_RE.test(id)) {
    throw badArgument(`snapshot id must match ${ID_RE.source}`, { id });
  }
}

// The class carries every ManifestFields property (declaration merging), assigned in the constructor.
export interface SnapshotManifest extends ManifestFields {}
export class SnapshotManifest {
  /** storedIndex[p]: index of page p in `checksums`, or -1 for a zero page. */
  private readonly storedIndex: Int32Array;

  constructor(f: ManifestFields) {
    Object.assign(this, f);
    this.storedIndex = new Int32Array(this.pageCount);
    let k = 0;
    for (let p = 0; p < this.pageCount; p++) this.storedIndex[p] = this.isZero(p) ? -1 : k++;
    if (k !== this.checksums.length) {
      throw new TierStackError(ErrorCode.Corrupt, `manifest of ${this.id}: ${k} stored pages but ${this.checksums.length} checksums`);
    }
  }

  isZero(page: number): boolean {
    return (this.zeroBitmap[page >>> 3]! & (1 << (page & 7))) !== 0;
  }

  /** CRC-32 of a stored page (undefined for zero pages). */
  checksum(page: number): number | undefined {
    const k = this.storedIndex[page]!;
    return k < 0 ? undefined : this.checksums[k];
  }

  get storedPages(): number {
    return this.checksums.length;
  }

  get zeroPages(): number {
    return this.pageCount - this.checksums.length;
  }

  /** Page numbers of the stored (non-zero) pages, ascending. */
  storedPageList(): number[] {
    const out: number[] = [];
    for (let p = 0; p < this.pageCount; p++) if (this.storedIndex[p]! >= 0) out.push(p);
    return out;
  }

  /** The region whose [base, base + size) holds `addr` (optionally of one pid). */
  regionAt(addr: number, pid?: number): RegionInfo | undefined {
    for (const r of this.regions) {
      if (pid !== undefined && r.pid !== pid) continue;
      if (addr >= r.base && addr < r.base + r.size) return r;
    }
    return undefined;
  }

  /** The working set a restore prefetches: the latest one, or the union of all (first-touch order kept). */
  prefetchSet(mode: 'latest' | 'union'): number[] {
    if (this.workingSets.length === 0) return [];
    if (mode === 'latest') return this.workingSets[this.workingSets.length - 1]!.pages;
    const seen = new Set<number>();
    const out: number[] = [];
    for (let i = this.workingSets.length - 1; i >= 0; i--) {
      for (const p of this.workingSets[i]!.pages) {
        if (!seen.has(p)) {
          seen.add(p);
          out.push(p);
        }
      }
    }
    return out;
  }

  encode(): Buffer {
    const { Manifest } = protoTypes();
    // create() (not fromObject): the big fields are already bytes, nothing to convert.
    const msg = Manifest.create({
      version: MANIFEST_VERSION,
      id: this.id,
      pageSize: this.pageSize,
      regions: this.regions.map((r) => ({ name: r.name, size: r.size, fileOffset: r.fileOffset, base: r.base, pid: r.pid })),
      pageCount: this.pageCount,
      imageSize: this.imageSize,
      zeroBitmap: this.zeroBitmap,
      checksums: u32Bytes(this.checksums),
      workingSets: this.workingSets.map((w) => ({ pages: u32Bytes(Uint32Array.from(w.pages)), recordedAt: w.recordedAt })),
      sourceKind: KIND_TO_ENUM[this.sourceKind],
      source: this.source,
      createdAt: this.createdAt,
      namespace: this.namespace,
    });
    return Buffer.from(Manifest.encode(msg).finish());
  }

  static decode(bytes: Uint8Array, what = 'manifest'): SnapshotManifest {
    const { Manifest } = protoTypes();
    let o: Record<string, unknown>;
    try {
      o = Manifest.decode(bytes) as unknown as Record<string, unknown>;
    } catch (err) {
      throw new TierStackError(ErrorCode.Corrupt, `${what} does not decode: ${(err as Error).message}`, { cause: err });
    }
    const corrupt = (why: string): TierStackError => new TierStackError(ErrorCode.Corrupt, `${what} is corrupt: ${why}`);
    if (o.version !== MANIFEST_VERSION) throw corrupt(`unknown version ${String(o.version)}`);
    const pageSize = Number(o.pageSize);
    const pageCount = toNumber(o.pageCount);
    if (!pageSize || (pageSize & (pageSize - 1)) !== 0) throw corrupt(`bad page size ${pageSize}`);
    const zeroBitmap = (o.zeroBitmap as Uint8Array | undefined) ?? new Uint8Array(0);
    if (zeroBitmap.length !== Math.ceil(pageCount / 8)) throw corrupt('zero bitmap length does not match the page count');
    const regions = ((o.regions as Array<Record<string, unknown>> | undefined) ?? []).map((r) => ({
      name: String(r.name ?? ''),
      size: toNumber(r.size),
      fileOffset: toNumber(r.fileOffset),
      base: toNumber(r.base),
      pid: Number(r.pid ?? 0),
    }));
    for (const r of regions) {
      if (r.size % pageSize !== 0 || r.fileOffset % pageSize !== 0 || r.fileOffset + r.size > pageCount * pageSize) {
        throw corrupt(`region ${r.name} does not fit the image`);
      }
    }
    try {
      return new SnapshotManifest({
        id: String(o.id ?? ''),
        pageSize,
        regions,
        pageCount,
        imageSize: toNumber(o.imageSize),
        zeroBitmap: new Uint8Array(zeroBitmap),
        checksums: bytesU32((o.checksums as Uint8Array | undefined) ?? new Uint8Array(0), 'checksums'),
        workingSets: ((o.workingSets as Array<Record<string, unknown>> | undefined) ?? []).map((w) => ({
          pages: Array.from(bytesU32((w.pages as Uint8Array | undefined) ?? new Uint8Array(0), 'working set')),
          recordedAt: toNumber(w.recordedAt),
        })),
        sourceKind: ENUM_TO_KIND[Number(o.sourceKind ?? 0)] ?? 'unknown',
        source: String(o.source ?? ''),
        createdAt: toNumber(o.createdAt),
        namespace: String(o.namespace ?? ''),
      });
    } catch (err) {
      if ((err as { code?: string }).code === ErrorCode.Corrupt) throw err;
      throw corrupt((err as Error).message);
    }
  }

  /** A short, JSON-friendly summary (for `ls` / `info`). */
  summary(): SnapshotSummary {
    return {
      id: this.id,
      pageSize: this.pageSize,
      pageCount: this.pageCount,
      imageSize: this.imageSize,
      storedPages: this.storedPages,
      zeroPages: this.zeroPages,
      regions: this.regions.length,
      workingSets: this.workingSets.map((w) => ({ pages: w.pages.length, recordedAt: w.recordedAt })),
      sourceKind: this.sourceKind,
      source: this.source,
      createdAt: this.createdAt,
      namespace: this.namespace,
    };
  }
}

export interface SnapshotSummary {
  id: string;
  pageSize: number;
  pageCount: number;
  imageSize: number;
  storedPages: number;
  zeroPages: number;
  regions: number;
  workingSets: Array<{ pages: number; recordedAt: number }>;
  sourceKind: SourceKind;
  source: string;
  createdAt: number;
  namespace: string;
}
