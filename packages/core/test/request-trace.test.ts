import { describe, it, expect, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, MemoryTier, FileTier, summarizeTrace, formatTraceSummary, TraceRing, type TraceRecord } from '../src/index.js';
import { makePages, pageMatches } from '../src/testing/index.js';

const PS = 4096;
const root = mkdtempSync(join(tmpdir(), 'tierstack-trace-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const rec = (op: TraceRecord['op'], offset: number, length: number, latencyUs: number, tier: string, atUs: number): TraceRecord => ({
  op,
  offset,
  length,
  latencyUs,
  tier,
  atUs,
});

describe('summarizeTrace', () => {
  it('percentiles are nearest-rank over each op, sizes bucket by power of two, flushes have no position', () => {
    // Reads with latencies 1..100 us, one page each at random places; then 3 writes in a run.
    const records: TraceRecord[] = [];
    for (let i = 0; i < 100; i++) records.push(rec('read', ((i * 37) % 100) * 2 * PS, PS, 100 - i, i % 4 === 0 ? 'file' : 'memory', i));
    records.push(rec('write', 0, 8192, 5, 'memory', 200), rec('write', 8192, 8192, 7, 'memory', 201), rec('write', 16384, 12288, 9, 'memory', 202));
    records.push(rec('flush', 0, 0, 50, 'file', 203));
    const s = summarizeTrace(records);
    expect(s.records).toBe(104);
    expect(s.spanUs).toBe(203);
    expect(s.ops.read).toMatchObject({ count: 100, bytes: 100 * PS, latency: { p50Us: 50, p90Us: 90, p99Us: 99, maxUs: 100, meanUs: 50.5 } });
    expect(s.ops.write).toMatchObject({ count: 3, bytes: 28672, latency: { p50Us: 7, maxUs: 9 } });
    expect(s.ops.flush?.count).toBe(1);
    expect(s.ops.discard).toBeUndefined();
    expect(s.sizes).toEqual([
      { upToBytes: 4096, count: 100 },
      { upToBytes: 8192, count: 2 },
      { upToBytes: 16384, count: 1 },
    ]);
    // Reads jump by 37 * 2 pages each time (never where the last ended); the 2nd and 3rd write follow on.
    expect(s.sequential).toBe(2);
    expect(s.random).toBe(99);
    expect(s.tiers).toEqual({ file: 26, memory: 78 });
    const text = formatTraceSummary(s);
    expect(text).toMatch(/^104 requests/);
    expect(text).toMatch(/read\s+100\s+96\.2%\s+400 KiB\s+50\.0us\s+90\.0us\s+99\.0us\s+100\.0us/);
    expect(text).toMatch(/sequential 2 \(2\.0%\), random 99/);
  });

  it('orders by start time before judging sequentiality', () => {
    const s = summarizeTrace([rec('read', PS, PS, 1, 'a', 2), rec('read', 0, PS, 1, 'a', 1), rec('read', 2 * PS, PS, 1, 'a', 3)]);
    expect([s.sequential, s.random]).toEqual([2, 0]);
    expect(summarizeTrace([]).sequentialShare).toBe(0);
    expect(formatTraceSummary(summarizeTrace([]))).toBe('0 requests over 0.000 s');
  });

  it('summarizes a trace recorded from a real stack: per-tier hits match the stack stats', async () => {
    // A small DRAM tier over a file tier: a scan of 256 pages evicts most of the top, so reads are
    // served from both. Each record names the tier whose hit count moved during that read.
    const top = new MemoryTier({ maxSize: 64 * PS, name: 'dram' });
    const bottom = await FileTier.open({ dir: join(root, 'f') });
    const stack = createTierStack({ tiers: [top, bottom] });
    const pages = Array.from({ length: 256 }, (_, i) => i);
    await bottom.put('t', pages, makePages('t', pages, PS));
    const hitsOf = (): number[] => stack.stats().tiers.map((t) => t.ops.get.hits);
    const ring = new TraceRing(1024);
    const order = [...pages, ...pages.slice(0, 32).reverse(), ...pages.slice(200, 256)];
    for (const p of order) {
      const before = hitsOf();
      const t0 = process.hrtime.bigint();
      const r = await stack.get('t', [p]);
      const latencyUs = Number(process.hrtime.bigint() - t0) / 1000;
      expect(pageMatches(r.data, 't', p)).toBe(true);
      const after = hitsOf();
      const tier = after[0]! > before[0]! ? 'dram' : after[1]! > before[1]! ? 'file' : 'miss';
      ring.push('read', p * PS, PS, latencyUs, tier, Number(t0) / 1000);
    }
    await stack.close();
    const s = summarizeTrace(ring.records());
    const stats = stack.stats().tiers;
    expect(s.records).toBe(order.length);
    expect(s.tiers.dram ?? 0).toBe(stats[0]!.ops.get.hits);
    expect(s.tiers.file ?? 0).toBe(stats[1]!.ops.get.hits);
    expect(s.tiers.miss).toBeUndefined();
    // The first scan is one run (255 sequential steps); the reversed 32 and the tail restart.
    expect(s.sequential).toBe(255 + 55);
    expect(s.random).toBe(32 + 1);
    expect(s.ops.read!.latency.maxUs).toBeGreaterThanOrEqual(s.ops.read!.latency.p99Us);
    expect(s.ops.read!.latency.p99Us).toBeGreaterThanOrEqual(s.ops.read!.latency.p50Us);
  });
});

describe('TraceRing', () => {
  it('keeps the newest records, oldest first, and counts what it overwrote', () => {
    const ring = new TraceRing(3);
    for (let i = 0; i < 5; i++) ring.push(i % 2 ? 'fault' : 'prefetch', i * PS, PS, i, i < 2 ? 'cxl' : 'zero', i);
    expect(ring.dropped).toBe(2);
    expect(ring.records().map((r) => [r.op, r.offset, r.tier])).toEqual([
      ['prefetch', 2 * PS, 'zero'],
      ['fault', 3 * PS, 'zero'],
      ['prefetch', 4 * PS, 'zero'],
    ]);
    expect(ring.records(true)).toHaveLength(3);
    expect(ring.size).toBe(0);
    ring.push('fault', 0, PS, 1, 'cxl', 9);
    expect(ring.records()).toEqual([{ op: 'fault', offset: 0, length: PS, latencyUs: 1, tier: 'cxl', atUs: 9 }]);
  });
});
