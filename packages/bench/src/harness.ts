/**
 * The benchmark harness. Every case runs against a named baseline in the same process and the
 * same run, alternating rounds (baseline, case, baseline, case, ...) so that a noisy neighbour
 * hits both alike; the reported figure of each is the median of its rounds. What matters is the
 * ratio case/baseline, not the absolute numbers of a shared 2-core VM.
 */
import { LatencyHistogram } from '@tierstack/core';

/** One timed unit of work: does one call (a batch) and returns how many ops (pages) it did. */
export type Op = () => Promise<number> | number;

export interface Measurement {
  opsPerSec: number;
  p50Us: number;
  p99Us: number;
  calls: number;
}

export interface CaseResult {
  suite: string;
  case: string;
  baseline: string;
  ops_per_s: number;
  baseline_ops_per_s: number;
  ratio: number;
  /** Latency of one call (one batch) of the case. */
  p50_us: number;
  p99_us: number;
  baseline_p50_us: number;
  baseline_p99_us: number;
  /** Free-form notes (bar, parameters). */
  note?: string;
}

export interface MeasureOptions {
  /** Time per round (ms). */
  roundMs: number;
  /** Rounds per side. */
  rounds: number;
  /** Warm-up per side before the first round (ms). */
  warmupMs: number;
}

export const defaultMeasureOptions: MeasureOptions = { roundMs: 400, rounds: 3, warmupMs: 100 };

/** Runs `op` repeatedly for `ms` milliseconds: ops/s and per-call latency. */
export async function runFor(op: Op, ms: number): Promise<Measurement> {
  const hist = new LatencyHistogram();
  let ops = 0;
  let calls = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(ms * 1e6));
  let now = start;
  while (now < deadline) {
    const t0 = now;
    ops += await op();
    now = process.hrtime.bigint();
    hist.record(Number(now - t0));
    calls++;
  }
  const secs = Number(now - start) / 1e9;
  const s = hist.summary();
  return { opsPerSec: ops / secs, p50Us: s.p50Us, p99Us: s.p99Us, calls };
}

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Medians of several rounds' measurements. */
export function combine(ms: Measurement[]): Measurement {
  return {
    opsPerSec: median(ms.map((m) => m.opsPerSec)),
    p50Us: median(ms.map((m) => m.p50Us)),
    p99Us: median(ms.map((m) => m.p99Us)),
    calls: ms.reduce((n, m) => n + m.calls, 0),
  };
}

/** Measures `op` and `baseline` in alternating rounds and returns both medians. */
export async function compare(op: Op, baseline: Op, opts: MeasureOptions = defaultMeasureOptions): Promise<{ case: Measurement; baseline: Measurement }> {
  await runFor(baseline, opts.warmupMs);
  await runFor(op, opts.warmupMs);
  const a: Measurement[] = [];
  const b: Measurement[] = [];
  for (let r = 0; r < opts.rounds; r++) {
    b.push(await runFor(baseline, opts.roundMs));
    a.push(await runFor(op, opts.roundMs));
  }
  return { case: combine(a), baseline: combine(b) };
}

/**
 * One unit of work that times itself: the ops it did and the nanoseconds the work itself took
 * (e.g. a client's own clock from connect to the end of its request), so that setup and
 * teardown around it (spawning the client, resetting a cache, waiting for a restore to close)
 * stay out of the figure.
 */
export type TimedOp = () => Promise<{ ops: number; ns: number }>;

/** Runs a self-timed `op` for `ms` milliseconds of wall time (at least `minCalls` calls). */
export async function runTimedFor(op: TimedOp, ms: number, minCalls = 1): Promise<Measurement> {
  const hist = new LatencyHistogram();
  let ops = 0;
  let ns = 0;
  let calls = 0;
  const deadline = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  while (calls < minCalls || process.hrtime.bigint() < deadline) {
    const r = await op();
    ops += r.ops;
    ns += r.ns;
    hist.record(r.ns);
    calls++;
  }
  const s = hist.summary();
  return { opsPerSec: ns > 0 ? ops / (ns / 1e9) : 0, p50Us: s.p50Us, p99Us: s.p99Us, calls };
}

/** `compare` for self-timed ops: alternating rounds, medians of the rounds' rates. */
export async function compareTimed(op: TimedOp, baseline: TimedOp, opts: MeasureOptions = defaultMeasureOptions): Promise<{ case: Measurement; baseline: Measurement }> {
  await runTimedFor(baseline, opts.warmupMs);
  await runTimedFor(op, opts.warmupMs);
  const a: Measurement[] = [];
  const b: Measurement[] = [];
  for (let r = 0; r < opts.rounds; r++) {
    b.push(await runTimedFor(baseline, opts.roundMs));
    a.push(await runTimedFor(op, opts.roundMs));
  }
  return { case: combine(a), baseline: combine(b) };
}

/** Builds the result row of one case. */
export function result(suite: string, name: string, baselineName: string, m: { case: Measurement; baseline: Measurement }, note?: string): CaseResult {
  return {
    suite,
    case: name,
    baseline: baselineName,
    ops_per_s: Math.round(m.case.opsPerSec),
    baseline_ops_per_s: Math.round(m.baseline.opsPerSec),
    ratio: Number((m.case.opsPerSec / m.baseline.opsPerSec).toFixed(3)),
    p50_us: Number(m.case.p50Us.toFixed(2)),
    p99_us: Number(m.case.p99Us.toFixed(2)),
    baseline_p50_us: Number(m.baseline.p50Us.toFixed(2)),
    baseline_p99_us: Number(m.baseline.p99Us.toFixed(2)),
    ...(note ? { note } : {}),
  };
}

export interface SuiteContext {
  measure: MeasureOptions;
  /** A scratch directory the suite may use (removed afterwards). */
  tmpDir: string;
  /** Reports progress lines (stderr in text mode, silent in --json mode). */
  log: (line: string) => void;
}

export interface Suite {
  name: string;
  description: string;
  run(ctx: SuiteContext): AsyncIterable<CaseResult>;
}

/** A deterministic xorshift32 generator for page choices (same pages for case and baseline). */
export function rng(seed = 0x9e3779b9): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** `count` random page numbers below `span`. */
export function randomPages(next: () => number, span: number, count: number): number[] {
  return Array.from({ length: count }, () => next() % span);
}
