/** Turns the native fault-latency buckets (core LatencyHistogram layout) into a summary. */
import type { LatencySummary } from '@tierstack/core';

const SUB = 8;
const MIN_NS = 64;

export function summarizeBuckets(counts: Float64Array, sumNs: number, maxNs: number): LatencySummary {
  let total = 0;
  for (const c of counts) total += c;
  const q = (f: number): number => {
    if (total === 0) return 0;
    const target = f * total;
    let seen = 0;
    for (let i = 0; i < counts.length; i++) {
      seen += counts[i]!;
      if (seen >= target) return Math.min(maxNs, MIN_NS * 2 ** ((i + 1) / SUB));
    }
    return maxNs;
  };
  return {
    count: total,
    meanUs: total === 0 ? 0 : sumNs / total / 1000,
    p50Us: q(0.5) / 1000,
    p99Us: q(0.99) / 1000,
    maxUs: maxNs / 1000,
  };
}
