/** The native addon of @tierstack/ublk (handler, transports, helpers). */
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { loadNativeAddon, type JsPath } from '@tierstack/core';

export interface NativeOpStats {
  requests: number;
  errors: number;
  bytes: number;
  latencyNsSum: number;
  /** log2NsBuckets[b] counts requests that took [2^b, 2^(b+1)) ns. */
  log2NsBuckets: number[];
}

export type NativeDeviceStats = Record<'read' | 'write' | 'flush' | 'discard' | 'writeZeroes', NativeOpStats> & {
  /** Bytes of I/O buffers mlocked, and the errno of the last mlock that failed (0: none). */
  lockedBytes: number;
  lockErrno: number;
};

export interface NativeDeviceOptions {
  transport: 'ublk' | 'fuse-loop';
  sizeBytes: number;
  ns: bigint;
  mountDir?: string;
  blockSize?: number;
  threads?: number;
  queues?: number;
  depth?: number;
  maxIoBytes?: number;
  devId?: number;
  recovery?: boolean;
  recover?: boolean;
  maxBatchPages?: number;
  maxQueuedPages?: number;
  lockBuffers?: boolean;
}

export interface NativeDevice {
  start(): Promise<{ path: string; id: number; directIo: boolean }>;
  stop(): Promise<void>;
  stopSync(): void;
  stats(): NativeDeviceStats;
  /** Starts a fresh request trace; returns the ring's capacity (records). */
  traceEnable(capacity: number): number;
  traceDisable(): void;
  /** Records since the last drain: n x [atNs, offset, length, latencyNs, op, level, ok]. */
  traceDrain(max: number): { records: Float64Array; lost: number };
}

export interface UblkAddon {
  Device: new (options: NativeDeviceOptions, jsPath: JsPath) => NativeDevice;
  /** 0 when /dev/ublk-control can be opened, else the errno. */
  ublkProbe(): number;
  /** Stops and deletes a ublk device (one left behind by a dead server). */
  ublkDelete(id: number): void;
}

export const APT_PACKAGES = ['libfuse3-dev', 'fuse3', 'liburing-dev'];

let addon: UblkAddon | undefined;

export function nativeAddon(): UblkAddon {
  addon ??= loadNativeAddon<UblkAddon>({
    packageDir: join(dirname(fileURLToPath(import.meta.url)), '..'),
    name: 'tierstack_ublk',
    packageName: '@tierstack/ublk',
    aptPackages: APT_PACKAGES,
  });
  return addon;
}
