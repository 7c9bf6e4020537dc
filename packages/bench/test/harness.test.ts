import { describe, it, expect } from 'vitest';
import { compare, result } from '../src/harness.js';
import { runBenchmarks } from '../src/run.js';

describe('bench harness', () => {
  it('computes the ratio of a case against its baseline from measured work', async () => {
    // The case does twice the ops per call of the baseline with the same cost per call.
    const spin = (): void => {
      const t = process.hrtime.bigint() + 20_000n;
      while (process.hrtime.bigint() < t);
    };
    const m = await compare(
      () => (spin(), 2),
      () => (spin(), 1),
      { roundMs: 60, rounds: 3, warmupMs: 10 },
    );
    const r = result('t', 'double', 'single', m);
    // 2 in theory; a loaded 2-core VM preempts single rounds, so only the direction is checked
    // tightly (a broken ratio — inverted, or ops not counted — lands far outside this band).
    expect(r.ratio).toBeGreaterThan(1.2);
    expect(r.ratio).toBeLessThan(8);
    expect(r.p50_us).toBeGreaterThan(0);
  });

  it('prints one JSON object per case with the documented fields', async () => {
    const lines: string[] = [];
    await runBenchmarks({ suites: ['memory'], json: true, measure: { roundMs: 20, rounds: 1, warmupMs: 5 }, write: (l) => lines.push(l) });
    expect(lines.length).toBe(4);
    for (const l of lines) {
      const o = JSON.parse(l);
      expect(Object.keys(o)).toEqual(expect.arrayContaining(['suite', 'case', 'baseline', 'ops_per_s', 'baseline_ops_per_s', 'ratio', 'p50_us', 'p99_us']));
      expect(o.suite).toBe('memory');
      expect(o.ops_per_s).toBeGreaterThan(0);
      expect(o.ratio).toBeCloseTo(o.ops_per_s / o.baseline_ops_per_s, 1);
    }
  });
});
