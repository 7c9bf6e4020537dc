/**
 * A case's bar (its target), read from the note its suite wrote ("bar >= 0.5", "bar: ratio >= 0.8",
 * "bar ops >= 0.8x raw", "p50 1.10x raw, bar <= 1.3x"). Suites state bars in prose; the report
 * draws the ones it can read and shows the note beside every case anyway.
 */
import type { CaseResult } from './harness.js';

export interface Target {
  /** What the bar is about: the throughput ratio (case / baseline ops/s) or the p50 latency ratio. */
  metric: 'ratio' | 'p50';
  op: '>=' | '<=';
  value: number;
}

const BAR = /\bbar(?::\s*ratio|\s+ops)?:?\s*(>=|<=)\s*(\d+(?:\.\d+)?)x?/;

export function targetOf(r: Pick<CaseResult, 'note'>): Target | undefined {
  const note = r.note ?? '';
  const m = BAR.exec(note);
  if (!m) return undefined;
  // "p50 1.10x raw, bar <= 1.3x": the bar is on latency.
  const metric = /\bp50\b[^;]*$/.test(note.slice(0, m.index)) ? 'p50' : 'ratio';
  return { metric, op: m[1] as '>=' | '<=', value: Number(m[2]) };
}

/** The figure a case is charted by: the metric of its bar (throughput ratio when it has none). */
export function chartedValue(r: CaseResult, t: Target | undefined): number {
  if (t?.metric === 'p50') return r.baseline_p50_us > 0 ? r.p50_us / r.baseline_p50_us : 0;
  return r.ratio;
}

export function meets(v: number, t: Target): boolean {
  return t.op === '>=' ? v >= t.value : v <= t.value;
}
