/**
 * SnapshotView: what the fault engine knows natively about a snapshot it restores — which pages
 * are zero (installed with UFFDIO_ZEROPAGE, no tier asked), the CRC-32 every stored page must
 * have (checked on the fault thread; a bad copy is dropped and read again from the tiers below;
 * a page with no good copy fails alone, under the region's strict policy), and a recorder of the
 * first-touch order (the working set the next restore prefetches).
 *
 * One view serves all the regions of one restore (pass it as `snapshot` in their options); page p
 * of the stack namespace is snapshot page p (a region's `pageOffset` places it in the snapshot).
 */
import { badArgument } from '@tierstack/core';
import { uffdAddon, type NativeSnapshot, type NativeSnapshotStats } from './native.js';

export interface SnapshotViewOptions {
  /** Pages in the snapshot. */
  pageCount: number;
  /** Bit p (LSB first) set: page p is zero and never stored. */
  zeroBitmap: Uint8Array;
  /** CRC-32 (zlib polynomial, core's pageChecksum) of each stored page, in page order. */
  checksums: Uint32Array;
  /** Record the first-touch order of faults (default false). */
  record?: boolean;
  /** Longest order recorded (default 2^20 pages). */
  maxRecordPages?: number;
}

export type SnapshotViewStats = NativeSnapshotStats;

export class SnapshotView {
  /** @internal */
  readonly native: NativeSnapshot;
  readonly pageCount: number;

  constructor(options: SnapshotViewOptions) {
    if (!options || !Number.isSafeInteger(options.pageCount) || options.pageCount < 0) throw badArgument('SnapshotView needs pageCount');
    if (!(options.zeroBitmap instanceof Uint8Array)) throw badArgument('SnapshotView needs zeroBitmap (Uint8Array)');
    if (!(options.checksums instanceof Uint32Array)) throw badArgument('SnapshotView needs checksums (Uint32Array)');
    const max = options.maxRecordPages ?? 1 << 20;
    if (!Number.isSafeInteger(max) || max < 0) throw badArgument('maxRecordPages must be a non-negative integer');
    this.pageCount = options.pageCount;
    this.native = new (uffdAddon().NativeSnapshot)({
      pageCount: options.pageCount,
      zeroBitmap: options.zeroBitmap,
      checksums: options.checksums,
      record: options.record === true,
      maxRecordPages: max,
    });
  }

  /** The recorded first-touch order (snapshot page numbers). Complete once its regions closed. */
  workingSet(): number[] {
    return Array.from(this.native.workingSet());
  }

  stats(): SnapshotViewStats {
    return this.native.stats();
  }
}
