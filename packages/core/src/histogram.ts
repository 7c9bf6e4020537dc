/**
 * A small log-scale latency histogram: cheap to record (one Math.log2, one increment), a fixed
 * few hundred bytes, quantiles within ~10%. Enough for per-tier p50/p99 in stats() without a
 * dependency on the metrics backend.
 */

const SUB_BUCKETS = 8; // per power of two: ~9% resolution
const MIN_NS = 64; // anything faster lands in bucket 0
const BUCKETS = 40 * SUB_BUCKETS; // up to 64ns * 2^40 ≈ 19 hours

export interface LatencySummary {
  count: number;
  meanUs: number;
  p50Us: number;
  p99Us: number;
  maxUs: number;
}

export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private total = 0;
  private sumNs = 0;
  private maxNs = 0;

  /** Records one observation of `ns` nanoseconds, `weight` times. */
  record(ns: number, weight = 1): void {
    const idx = ns <= MIN_NS ? 0 : Math.min(BUCKETS - 1, Math.floor(Math.log2(ns / MIN_NS) * SUB_BUCKETS));
    this.counts[idx]! += weight;
    this.total += weight;
    this.sumNs += ns * weight;
    if (ns > this.maxNs) this.maxNs = ns;
  }

  /** Upper bound (ns) of the bucket holding quantile q (0..1). */
  quantileNs(q: number): number {
    if (this.total === 0) return 0;
    const target = q * this.total;
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= target) return Math.min(this.maxNs, MIN_NS * 2 ** ((i + 1) / SUB_BUCKETS));
    }
    return this.maxNs;
  }

  summary(): LatencySummary {
    return {
      count: this.total,
      meanUs: this.total === 0 ? 0 : this.sumNs / this.total / 1000,
      p50Us: this.quantileNs(0.5) / 1000,
      p99Us: this.quantileNs(0.99) / 1000,
      maxUs: this.maxNs / 1000,
    };
  }

  reset(): void {
    this.counts.fill(0);
    this.total = 0;
    this.sumNs = 0;
    this.maxNs = 0;
  }
}
