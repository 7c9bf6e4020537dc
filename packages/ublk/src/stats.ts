/** Per-device request statistics (counts, bytes, latency percentiles from log2 histograms). */
import type { NativeDeviceStats, NativeOpStats } from './native.js';

export interface OpStats {
  requests: number;
  errors: number;
  bytes: number;
  latency: { meanUs: number; p50Us: number; p99Us: number; maxUs: number };
  /** log2 nanosecond buckets: buckets[b] counts requests that took [2^b, 2^(b+1)) ns. */
  buckets: number[];
}

export type DeviceOp = 'read' | 'write' | 'flush' | 'discard' | 'writeZeroes';
export type DeviceStats = Record<DeviceOp, OpStats> & { lockedBytes: number };

/** The value below which `q` of the histogram's samples lie (bucket geometric midpoint). */
function quantileNs(buckets: number[], total: number, q: number): number {
  if (total === 0) return 0;
  const want = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (let b = 0; b < buckets.length; b++) {
    seen += buckets[b]!;
    if (seen >= want) return 2 ** b * Math.SQRT2;
  }
  return 2 ** buckets.length;
}

export function summarizeOp(s: NativeOpStats): OpStats {
  const total = s.log2NsBuckets.reduce((a, b) => a + b, 0);
  let max = 0;
  s.log2NsBuckets.forEach((n, b) => {
    if (n > 0) max = 2 ** (b + 1);
  });
  return {
    requests: s.requests,
    errors: s.errors,
    bytes: s.bytes,
    latency: {
      meanUs: s.requests ? s.latencyNsSum / s.requests / 1000 : 0,
      p50Us: quantileNs(s.log2NsBuckets, total, 0.5) / 1000,
      p99Us: quantileNs(s.log2NsBuckets, total, 0.99) / 1000,
      maxUs: max / 1000,
    },
    buckets: s.log2NsBuckets,
  };
}

export function summarize(s: NativeDeviceStats): DeviceStats {
  return {
    read: summarizeOp(s.read),
    write: summarizeOp(s.write),
    flush: summarizeOp(s.flush),
    discard: summarizeOp(s.discard),
    writeZeroes: summarizeOp(s.writeZeroes),
    lockedBytes: s.lockedBytes,
  };
}
