/**
 * The native addon of @tierstack/cxl and the shapes it takes and returns. Only this package
 * talks to it; users go through CxlTier.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadNativeAddon, type NativePageStoreHandle } from '@tierstack/core';

/** Opaque handle of an opened region (an external holding one reference). */
export interface RegionHandle {
  readonly __cxlRegion: unique symbol;
}

export interface NativeOpenOptions {
  kind: 'memfd' | 'file' | 'devdax';
  path?: string;
  size?: number;
  create?: boolean;
  format?: boolean;
  pageSize?: number;
  ways?: number;
  nsEntries?: number;
  numaNode?: number;
  deviceSize?: number;
  deviceAlign?: number;
  name?: string;
}

export interface RegionCounters {
  hits: number;
  misses: number;
  puts: number;
  removes: number;
  evictions: number;
  dirtyEvictions: number;
  checksumErrors: number;
  lockSteals: number;
  noSpace: number;
  /** Occupancy kept per batch (info().validPages/dirtyPages are an exact scan; these may drift after a crash). */
  validPages: number;
  dirtyPages: number;
}

export interface NativeRegionInfo {
  version: number;
  pageSize: number;
  ways: number;
  sets: number;
  slots: number;
  regionBytes: number;
  mappedBytes: number;
  nsEntries: number;
  setBytes: number;
  dataOffset: number;
  indexBytesPerPage: number;
  /** How page CRC-32Cs are computed here: 'vpclmulqdq', 'crc32x3' or 'crc32'. */
  checksum: string;
  createdUnixMs: number;
  creatorPid: number;
  creatorHost: string;
  formattedNow: boolean;
  /** This open was the first since a reboot: set locks were cleared, half-written ways dropped. */
  recoveredAfterReboot: boolean;
  setsOffset: number;
  fd: number;
  validPages: number;
  dirtyPages: number;
  lockedSets: number;
  counters: RegionCounters;
}

export interface EvictedRaw {
  ns: BigUint64Array;
  pages: Float64Array;
  data: Buffer;
}

export interface DirtyChunk {
  cursor: number;
  done: boolean;
  /** Dirty pages skipped: their namespace has no name in the region's table. */
  unnamed: number;
  /** Dirty pages skipped: their bytes fail their CRC. */
  damaged: number;
  ns: BigUint64Array;
  pages: Float64Array;
  slots: Float64Array;
  seqs: Uint32Array;
  data: Buffer;
}

export interface CxlAddon {
  open(options: NativeOpenOptions): RegionHandle;
  close(h: RegionHandle): void;
  info(h: RegionHandle): NativeRegionInfo;
  counters(h: RegionHandle): RegionCounters;
  get(h: RegionHandle, ns: bigint, pages: Float64Array, out: Buffer, found: Uint8Array): { hits: number; checksumErrors: number };
  put(h: RegionHandle, ns: bigint, pages: Float64Array, data: Uint8Array, dirty: boolean, promotion?: boolean): { status: number; evicted?: EvictedRaw };
  remove(h: RegionHandle, ns: bigint, pages: Float64Array): void;
  registerNamespace(h: RegionHandle, ns: bigint, name: string): number;
  namespaceName(h: RegionHandle, ns: bigint): string | undefined;
  namespaces(h: RegionHandle): { id: bigint; name: string }[];
  collectDirty(h: RegionHandle, cursor: number, max: number): DirtyChunk;
  markClean(h: RegionHandle, slots: Float64Array, seqs: Uint32Array): number;
  nativeHandle(h: RegionHandle): NativePageStoreHandle;
  layoutInfo(ways?: number): {
    defaultWays: number;
    setBytes: number;
    indexBytesPerPage: number;
    headerBytes: number;
    nsEntryBytes: number;
    defaultNsEntries: number;
  };
}

export const packageDir = join(dirname(fileURLToPath(import.meta.url)), '..');

let addon: CxlAddon | undefined;

/** Loads the addon once (TS_ERR_NATIVE_MISSING with build instructions when it is not built). */
export function cxlAddon(): CxlAddon {
  addon ??= loadNativeAddon<CxlAddon>({ packageDir, name: 'tierstack_cxl', packageName: '@tierstack/cxl' });
  return addon;
}
