/**
 * The native addon of @tierstack/uffd and the shapes it exchanges with JavaScript. Only this
 * package's modules use it directly.
 */
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { loadNativeAddon, type JsPath } from '@tierstack/core';

export interface NativeRegionConfig {
  base?: bigint;
  size: number;
  ns: bigint;
  pageOffset: number;
  missing: 'zero' | 'strict';
  faultAround: number;
  zeroAfterRemove: boolean;
  managed: boolean;
  budgetPages: number;
  fresh: boolean;
  snapshot?: NativeSnapshot;
}

export interface NativeSnapshotStats {
  zeroServed: number;
  verified: number;
  badCopies: number;
  repaired: number;
  unrecoverable: number;
  recorded: number;
}

export interface NativeSnapshot {
  workingSet(): Uint32Array;
  stats(): NativeSnapshotStats;
}

export interface NativeRegionStats {
  faults: number;
  wpFaults: number;
  pagesInstalled: number;
  zeroPages: number;
  poisoned: number;
  alreadyPresent: number;
  eagainRetries: number;
  prefetched: number;
  jsPathPages: number;
  deadlocks: number;
  evictions: number;
  writebacks: number;
  writebackErrors: number;
  removedPages: number;
  pagesByLevel: number[];
  latencyBuckets: Float64Array;
  latencySumNs: number;
  latencyMaxNs: number;
}

export interface NativeEvent {
  kind: 'pageError' | 'ownerExit';
  source: number;
  region: number;
  address: bigint;
  page: number;
  status: number;
  code: string;
  tid: number;
  cause: string;
}

export interface NativeSource {
  regionCount(): number;
  regionInfo(i: number): { id: number; address: bigint; size: number; pages: number; pageOffset: number; features: bigint; ownerPid: number; source: number };
  buffer(i: number): ArrayBuffer;
  stats(i: number): NativeRegionStats;
  prefetch(i: number, pages: Float64Array, chunkPages?: number): Promise<number>;
  ensure(i: number, first: number, count: number): number;
  flush(i: number): Promise<void>;
  discard(i: number, first: number, count: number): void;
  residentPages(i: number): number;
  beginClose(): void;
  busy(): boolean;
  finishClose(): void;
}

export interface NativeFeatures {
  raw: bigint;
  threadId: boolean;
  writeProtect: boolean;
  poison: boolean;
  eventRemove: boolean;
  minorShmem: boolean;
  jsThreadId: number;
}

/** The native side of a shared region (see native/shared_region.hpp). */
export interface NativeSharedRegion {
  forget(firstPage: number, count: number): Promise<number>;
  writeBackDirty(): Promise<number>;
  storedBitmap(): Promise<BigUint64Array>;
  markStored(bitmap: BigUint64Array): void;
  release(): Promise<number>;
  residentPages(): number;
}

export interface NativeEngine {
  createRegion(cfg: NativeRegionConfig): NativeSource;
  adoptShared(uffd: number, memfd: number, fileOffset: bigint, pid: number, region: NativeRegionConfig): { source: NativeSource; shared: NativeSharedRegion };
  adopt(
    fd: number,
    pid: number,
    features: bigint,
    apiDone: boolean,
    regions: NativeRegionConfig[],
    extra?: { removed?: Float64Array | undefined; removeSink?: number | undefined; removeTag?: number | undefined },
  ): NativeSource;
  close(): void;
  features(): NativeFeatures;
  takeEvents(): NativeEvent[];
  /** Starts a fresh fault trace; returns the ring's capacity (records). */
  traceEnable(capacity: number): number;
  traceDisable(): void;
  /** n x [atNs, offset, length, latencyNs, op (0 fault, 1 prefetch), level, ok]. */
  traceDrain(max: number): { records: Float64Array; lost: number };
}

export interface ReceivedFd {
  fd: number;
  conn: number;
  pid: number;
  uid: number;
  gid: number;
  message: Buffer;
}

export interface UffdAddon {
  NativeEngine: new (
    jsPath: JsPath,
    options: { faultThreads: number; cpus: number[] | undefined; maxBatchPages: number; maxQueuedPages: number },
    onEvents: () => void,
  ) => NativeEngine;
  NativeSnapshot: new (options: {
    pageCount: number;
    zeroBitmap: Uint8Array;
    checksums: Uint32Array;
    record: boolean;
    maxRecordPages: number;
  }) => NativeSnapshot;
  listenUnix(path: string, backlog?: number): number;
  acceptFd(listenFd: number, timeoutMs?: number): Promise<ReceivedFd>;
  receiveFd(connFd: number, timeoutMs?: number): Promise<ReceivedFd>;
  sendFd(path: string, message: Buffer, fd: number): number;
  closeFd(fd: number): void;
  shutdownFd(fd: number): void;
  sharedRegionsSupported(): { supported: boolean; reason?: string };
}

let addon: UffdAddon | undefined;

/** The addon, loaded on first use (a clear TS_ERR_NATIVE_MISSING error when it is not built). */
export function uffdAddon(): UffdAddon {
  addon ??= loadNativeAddon<UffdAddon>({
    packageDir: join(dirname(fileURLToPath(import.meta.url)), '..'),
    name: 'tierstack_uffd',
    packageName: '@tierstack/uffd',
    aptPackages: ['g++', 'make', 'python3'],
  });
  return addon;
}
