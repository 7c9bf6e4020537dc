/**
 * @tierstack/core's own addon (binding.gyp target `tierstack_core`, sources in native/): FileTier's
 * native read path behind the page-store C ABI, and hole punching. It is optional: when it is not
 * built, `coreAddon()` returns undefined and FileTier stays JavaScript-only (no `nativeHandle`,
 * removed pages keep their blocks until their segment is dropped). Importing core never fails
 * because of it.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadNativeAddon, type NativePageStoreHandle } from './native.js';

export interface FileStoreNativeStats {
  nativeGets: number;
  nativePages: number;
  nativeFound: number;
  nativeMisses: number;
  nativeChecksumErrors: number;
  nativeCorrupt: number;
  nativeIoErrors: number;
  nativeRereads: number;
  nativeSegmentOpens: number;
  nativeSegmentEvictions: number;
  nativeOpenSegments: number;
  nativePendingPages: number;
}

export interface CoreAddon {
  /** A FileStore over a FileTier directory, as a tagged page-store handle (the C ABI external). */
  fileStoreCreate(dir: string, pageSize: number, name: string, maxOpenSegments: number): NativePageStoreHandle;
  /** Names the directory of namespace id `id` (native code only sees ids). */
  fileStoreRegister(h: NativePageStoreHandle, id: bigint, dirName: string): void;
  /** Drops cached segment files: one segment, or every segment of the namespace with -1. */
  fileStoreInvalidate(h: NativePageStoreHandle, id: bigint, segment: number): void;
  /** Marks (on) or unmarks pages that a stack above queued for writing here: native reads miss them. */
  fileStorePending(h: NativePageStoreHandle, id: bigint, pages: Float64Array, on: boolean): void;
  /** Later native calls answer TS_E_CLOSED; files close when in-flight readers let go. */
  fileStoreClose(h: NativePageStoreHandle): void;
  fileStoreStats(h: NativePageStoreHandle): FileStoreNativeStats;
  /** fallocate(PUNCH_HOLE | KEEP_SIZE) of [offset, length] pairs, off the JS thread. */
  punchHoles(fd: number, ranges: Float64Array): Promise<void>;
  /** out[i] = CRC-32 (zlib polynomial) of page i of `data`, computed natively in one call. */
  crc32Pages(data: Uint8Array, pageSize: number, out: Uint32Array): void;
  /** Snapshot pages read in batches on job threads, verified (see snapshot-reader.ts). */
  SnapshotReader: new (
    jsPath: object,
    nsId: bigint,
    info: { pageCount: number; zeroBitmap: Uint8Array; checksums: Uint32Array },
  ) => {
    /** Resolves with the number of pages not read (status != PageFound). */
    read(pages: Float64Array, out: Uint8Array, status: Int32Array, level: Uint8Array): Promise<number>;
    stats(): { zeroServed: number; verified: number; badCopies: number; repaired: number; unrecoverable: number };
    close(): void;
  };
}

export const corePackageDir = join(dirname(fileURLToPath(import.meta.url)), '..');

let addon: CoreAddon | undefined;
let loadError: unknown;

/** The addon, or undefined when it is not built or fails to load (see coreAddonError()). */
export function coreAddon(): CoreAddon | undefined {
  if (addon === undefined && loadError === undefined) {
    try {
      addon = loadNativeAddon<CoreAddon>({ packageDir: corePackageDir, name: 'tierstack_core', packageName: '@tierstack/core' });
    } catch (err) {
      loadError = err;
    }
  }
  return addon;
}

/** Why core's addon is unavailable (a TS_ERR_NATIVE_MISSING error saying what to run), or undefined. */
export function coreAddonError(): unknown {
  coreAddon();
  return loadError;
}
