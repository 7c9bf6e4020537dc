/**
 * Per-store operation statistics: calls, pages, hits, bytes, errors and a latency histogram
 * per operation. Recorded once per batch (never per page) so it stays off the hot path.
 */
import { LatencyHistogram, type LatencySummary } from './histogram.js';

export type StoreOp = 'get' | 'put' | 'remove';

export interface OpStats {
  calls: number;
  pages: number;
  /** For get: pages found. For put/remove: equal to pages. */
  hits: number;
  bytes: number;
  errors: number;
  latency: LatencySummary;
}

export interface StoreStats {
  name: string;
  ops: Record<StoreOp, OpStats>;
  /** Tier-specific figures (resident pages, dirty pages, evictions, ...). */
  extra: Record<string, number>;
}

class OpCounter {
  calls = 0;
  pages = 0;
  hits = 0;
  bytes = 0;
  errors = 0;
  readonly latency = new LatencyHistogram();

  snapshot(): OpStats {
    const { calls, pages, hits, bytes, errors } = this;
    return { calls, pages, hits, bytes, errors, latency: this.latency.summary() };
  }
}

export class StatsRecorder {
  private readonly ops: Record<StoreOp, OpCounter> = { get: new OpCounter(), put: new OpCounter(), remove: new OpCounter() };

  constructor(readonly name: string) {}

  /** Records one batch that started at `t0` (process.hrtime.bigint()). */
  record(op: StoreOp, t0: bigint, pages: number, hits: number, bytes: number): void {
    const ns = Number(process.hrtime.bigint() - t0);
    const c = this.ops[op];
    c.calls++;
    c.pages += pages;
    c.hits += hits;
    c.bytes += bytes;
    c.latency.record(ns);
  }

  /** Records a batch whose latency was measured elsewhere (native code). */
  recordMeasured(op: StoreOp, ns: number, calls: number, pages: number, hits: number, bytes: number): void {
    const c = this.ops[op];
    c.calls += calls;
    c.pages += pages;
    c.hits += hits;
    c.bytes += bytes;
    c.latency.record(ns, calls);
  }

  error(op: StoreOp): void {
    this.ops[op].errors++;
  }

  snapshot(extra: Record<string, number> = {}): StoreStats {
    return {
      name: this.name,
      ops: { get: this.ops.get.snapshot(), put: this.ops.put.snapshot(), remove: this.ops.remove.snapshot() },
      extra,
    };
  }
}
