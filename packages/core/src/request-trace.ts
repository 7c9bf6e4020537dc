/**
 * Request traces: one record per block request or page fault, and the summary people used to
 * get from a blktrace parser (op mix, size histogram, sequential vs random share, latency
 * percentiles per op, hits per tier).
 *
 * Front-ends collect records where they are cheap to collect (ublk: a native ring; a restore: its
 * fault results) and hand them here; this module only counts. It never touches stored pages.
 */

export type TraceOp = 'read' | 'write' | 'discard' | 'flush' | 'fault' | 'prefetch';

export const TRACE_OPS: readonly TraceOp[] = ['read', 'write', 'discard', 'flush', 'fault', 'prefetch'];

export interface TraceRecord {
  op: TraceOp;
  /** Bytes from the start of the device / region. */
  offset: number;
  /** Bytes (0 for a flush). */
  length: number;
  latencyUs: number;
  /** Name of the tier that served it, or 'zero' (a zero page, never stored) / 'miss'. */
  tier: string;
  /** When it started, in microseconds of a monotonic clock (only differences mean anything). */
  atUs: number;
}

export interface TraceLatency {
  p50Us: number;
  p90Us: number;
  p99Us: number;
  maxUs: number;
  meanUs: number;
}

export interface TraceOpSummary {
  count: number;
  bytes: number;
  latency: TraceLatency;
}

export interface TraceSizeBucket {
  /** Requests of length in (previous bucket's upTo, upToBytes]; powers of two from 512. */
  upToBytes: number;
  count: number;
}

export interface TraceSummary {
  records: number;
  /** atUs of the last record minus that of the first. */
  spanUs: number;
  /** Only ops that occur. */
  ops: Partial<Record<TraceOp, TraceOpSummary>>;
  /** Requests with a length (flushes are left out), smallest bucket first, empty buckets left out. */
  sizes: TraceSizeBucket[];
  /**
   * A request is sequential when it starts where the previous request of the same op ended
   * (what a readahead or a swap cluster looks like); the first request of each op has no
   * predecessor and is neither. Flushes have no position and are neither.
   */
  sequential: number;
  random: number;
  /** sequential / (sequential + random), 0 when both are 0. */
  sequentialShare: number;
  /** Records served per tier name ('zero', 'miss' included). */
  tiers: Record<string, number>;
}

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.max(1, Math.ceil(q * sorted.length));
  return sorted[rank - 1]!;
}

function latencyOf(values: number[]): TraceLatency {
  const sorted = Float64Array.from(values).sort();
  let sum = 0;
  for (const v of values) sum += v;
  return {
    p50Us: percentile(sorted, 0.5),
    p90Us: percentile(sorted, 0.9),
    p99Us: percentile(sorted, 0.99),
    maxUs: sorted.length ? sorted[sorted.length - 1]! : 0,
    meanUs: values.length ? sum / values.length : 0,
  };
}

function sizeBucket(length: number): number {
  let b = 512;
  while (b < length) b *= 2;
  return b;
}

export function summarizeTrace(records: readonly TraceRecord[]): TraceSummary {
  // Order by start time so "previous request" means the previous one issued; a stable sort keeps
  // records with equal timestamps in the order they were recorded.
  const ordered = [...records].sort((a, b) => a.atUs - b.atUs);
  const latencies = new Map<TraceOp, number[]>();
  const bytes = new Map<TraceOp, number>();
  const sizes = new Map<number, number>();
  const nextExpected = new Map<TraceOp, number>();
  const tiers: Record<string, number> = {};
  let sequential = 0;
  let random = 0;
  for (const r of ordered) {
    let l = latencies.get(r.op);
    if (!l) latencies.set(r.op, (l = []));
    l.push(r.latencyUs);
    bytes.set(r.op, (bytes.get(r.op) ?? 0) + r.length);
    tiers[r.tier] = (tiers[r.tier] ?? 0) + 1;
    if (r.op === 'flush') continue;
    if (r.length > 0) {
      const b = sizeBucket(r.length);
      sizes.set(b, (sizes.get(b) ?? 0) + 1);
    }
    const expected = nextExpected.get(r.op);
    if (expected !== undefined) {
      if (r.offset === expected) sequential++;
      else random++;
    }
    nextExpected.set(r.op, r.offset + r.length);
  }
  const ops: Partial<Record<TraceOp, TraceOpSummary>> = {};
  for (const op of TRACE_OPS) {
    const l = latencies.get(op);
    if (l) ops[op] = { count: l.length, bytes: bytes.get(op) ?? 0, latency: latencyOf(l) };
  }
  return {
    records: ordered.length,
    spanUs: ordered.length ? ordered[ordered.length - 1]!.atUs - ordered[0]!.atUs : 0,
    ops,
    sizes: [...sizes.entries()].sort((a, b) => a[0] - b[0]).map(([upToBytes, count]) => ({ upToBytes, count })),
    sequential,
    random,
    sequentialShare: sequential + random === 0 ? 0 : sequential / (sequential + random),
    tiers,
  };
}

function formatBytes(n: number): string {
  if (n >= 1 << 30 && n % (1 << 30) === 0) return `${n / (1 << 30)} GiB`;
  if (n >= 1 << 20 && n % (1 << 20) === 0) return `${n / (1 << 20)} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} B`;
}

const pct = (part: number, whole: number): string => (whole === 0 ? '0.0%' : `${((100 * part) / whole).toFixed(1)}%`);
const us = (v: number): string => (v >= 1000 ? `${(v / 1000).toFixed(2)}ms` : `${v.toFixed(1)}us`);

/** A plain-text report of a summary (what `tierstack ublk trace` prints). */
export function formatTraceSummary(s: TraceSummary): string {
  const lines: string[] = [];
  lines.push(`${s.records} requests over ${(s.spanUs / 1e6).toFixed(3)} s`);
  if (s.records === 0) return lines.join('\n');
  lines.push('');
  lines.push('op        count   share      bytes     p50       p90       p99       max');
  for (const op of TRACE_OPS) {
    const o = s.ops[op];
    if (!o) continue;
    lines.push(
      [
        op.padEnd(8),
        String(o.count).padStart(7),
        pct(o.count, s.records).padStart(7),
        formatBytes(o.bytes).padStart(10),
        us(o.latency.p50Us).padStart(9),
        us(o.latency.p90Us).padStart(9),
        us(o.latency.p99Us).padStart(9),
        us(o.latency.maxUs).padStart(9),
      ].join(' '),
    );
  }
  if (s.sizes.length) {
    const sized = s.sizes.reduce((a, b) => a + b.count, 0);
    lines.push('');
    lines.push('size (up to)   count   share');
    for (const b of s.sizes) lines.push(`${formatBytes(b.upToBytes).padStart(12)} ${String(b.count).padStart(7)} ${pct(b.count, sized).padStart(7)}`);
  }
  lines.push('');
  lines.push(`sequential ${s.sequential} (${pct(s.sequential, s.sequential + s.random)}), random ${s.random} (${pct(s.random, s.sequential + s.random)})`);
  lines.push('');
  lines.push('tier            requests   share');
  for (const [tier, n] of Object.entries(s.tiers).sort((a, b) => b[1] - a[1])) lines.push(`${tier.padEnd(14)} ${String(n).padStart(9)} ${pct(n, s.records).padStart(7)}`);
  return lines.join('\n');
}

/**
 * A bounded ring of trace records held in typed arrays, for JS-side producers (a restore's fault
 * results): pushing stores numbers, never allocates, and overwrites the oldest record when full.
 * Tier names are interned into a small table so a record is five numbers and a byte.
 */
export class TraceRing {
  private readonly op: Uint8Array;
  private readonly tier: Uint16Array;
  private readonly num: Float64Array; // offset, length, latencyUs, atUs per record
  private readonly tierNames: string[] = [];
  private readonly tierIndex = new Map<string, number>();
  private next = 0;
  private stored = 0;
  /** Records overwritten before anyone read them. */
  dropped = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity <= 0) throw new RangeError('TraceRing capacity must be a positive integer');
    this.op = new Uint8Array(capacity);
    this.tier = new Uint16Array(capacity);
    this.num = new Float64Array(capacity * 4);
  }

  get size(): number {
    return this.stored;
  }

  push(op: TraceOp, offset: number, length: number, latencyUs: number, tier: string, atUs: number): void {
    let t = this.tierIndex.get(tier);
    if (t === undefined) {
      t = this.tierNames.length;
      this.tierNames.push(tier);
      this.tierIndex.set(tier, t);
    }
    const i = this.next;
    this.op[i] = TRACE_OPS.indexOf(op);
    this.tier[i] = t;
    this.num[i * 4] = offset;
    this.num[i * 4 + 1] = length;
    this.num[i * 4 + 2] = latencyUs;
    this.num[i * 4 + 3] = atUs;
    this.next = (i + 1) % this.capacity;
    if (this.stored === this.capacity) this.dropped++;
    else this.stored++;
  }

  /** The records held, oldest first; with `clear`, empties the ring (a streaming reader's take). */
  records(clear = false): TraceRecord[] {
    const out: TraceRecord[] = [];
    const start = (this.next - this.stored + this.capacity) % this.capacity;
    for (let k = 0; k < this.stored; k++) {
      const i = (start + k) % this.capacity;
      out.push({
        op: TRACE_OPS[this.op[i]!]!,
        offset: this.num[i * 4]!,
        length: this.num[i * 4 + 1]!,
        latencyUs: this.num[i * 4 + 2]!,
        tier: this.tierNames[this.tier[i]!]!,
        atUs: this.num[i * 4 + 3]!,
      });
    }
    if (clear) this.stored = 0;
    return out;
  }
}
