/**
 * Managed region (user-space swap): 64 MiB with an 8 MiB residency budget over a JS stack
 * [MemoryTier, FileTier]. Several native threads write and read random pages across all of
 * it; pages over budget are evicted (dirty ones written back first). At the end every byte of
 * every page is checked, in the region and, after flush(), in the stack.
 */
import { describe, it, expect } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, FileTier, MemoryTier } from '@tierstack/core';
import { createUffdEngine } from '../src/index.js';
import { touchPages } from '../src/testing.js';
import { PS, shuffled, uniqueNs } from './helpers.js';

const PAGES = 16384; // 64 MiB
const BUDGET = 2048; // 8 MiB
const THREADS = 4;

/** Cheap page contents: every 32-bit word depends on (page, version, word). */
function fill(buf: Buffer, at: number, page: number, version: number): void {
  const w = new Uint32Array(buf.buffer, buf.byteOffset + at * PS, PS / 4);
  const seed = (Math.imul(page + 1, 2654435761) ^ Math.imul(version + 7, 40503)) >>> 0;
  for (let i = 0; i < w.length; i++) w[i] = (seed + Math.imul(i, 97)) >>> 0;
}
function pagesOf(pages: number[], versions: Int32Array): Buffer {
  const buf = Buffer.alloc(pages.length * PS);
  pages.forEach((p, i) => fill(buf, i, p, versions[p]!));
  return buf;
}
function wrong(buf: Buffer, pages: number[], versions: Int32Array): number[] {
  const expect = pagesOf(pages, versions);
  const bad: number[] = [];
  pages.forEach((p, i) => {
    if (expect.compare(buf, i * PS, (i + 1) * PS, i * PS, (i + 1) * PS) !== 0) bad.push(p);
  });
  return bad;
}
const split = <T>(xs: T[], n: number): T[][] => Array.from({ length: n }, (_, k) => xs.filter((_, i) => i % n === k));

describe('managed region', () => {
  it('keeps every byte of a 64 MiB region under an 8 MiB budget, written and read from several threads', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'uffd-managed-'));
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 16 << 20 }), await FileTier.open({ dir })] });
    const engine = createUffdEngine({ stack, faultThreads: 4 });
    const ns = uniqueNs('managed');
    const region = engine.createRegion({ size: PAGES * PS, namespace: ns, missing: 'zero', faultAround: 1, managed: { budgetPages: BUDGET, fresh: true } });
    const versions = new Int32Array(PAGES); // 0: never written (zero page expected)
    try {
      // Round 1: every page written once (version 1), in random order, by THREADS writers.
      const all = shuffled(PAGES, 1);
      for (const p of all) versions[p] = 1;
      await Promise.all(split(all, THREADS).map((chunk) => touchPages(region.address, chunk, PS, { write: pagesOf(chunk, versions) })));
      expect(region.stats().residentPages).toBeLessThanOrEqual(BUDGET);

      // Round 2: a quarter of the pages rewritten by two writers while two readers check another quarter.
      for (let round = 2; round <= 2; round++) {
        const order = shuffled(PAGES, round);
        const writes = order.slice(0, PAGES / 4);
        const reads = order.slice(PAGES / 4, PAGES / 2);
        for (const p of writes) versions[p] = round;
        const [w1, w2] = split(writes, 2);
        const [r1, r2] = split(reads, 2);
        const outs = [Buffer.alloc(r1!.length * PS), Buffer.alloc(r2!.length * PS)];
        await Promise.all([
          touchPages(region.address, w1!, PS, { write: pagesOf(w1!, versions) }),
          touchPages(region.address, w2!, PS, { write: pagesOf(w2!, versions) }),
          touchPages(region.address, r1!, PS, { out: outs[0] }),
          touchPages(region.address, r2!, PS, { out: outs[1] }),
        ]);
        expect(wrong(outs[0]!, r1!, versions)).toEqual([]);
        expect(wrong(outs[1]!, r2!, versions)).toEqual([]);
      }

      // Final check of every byte, read back by THREADS readers in random order.
      const final = split(shuffled(PAGES, 99), THREADS);
      const outs = final.map((c) => Buffer.alloc(c.length * PS));
      await Promise.all(final.map((c, i) => touchPages(region.address, c, PS, { out: outs[i] })));
      final.forEach((c, i) => expect(wrong(outs[i]!, c, versions)).toEqual([]));

      const s = region.stats();
      expect(s.residentPages).toBeLessThanOrEqual(BUDGET);
      expect(s.evictions).toBeGreaterThan(PAGES);
      expect(s.writebacks).toBeGreaterThan(0);
      expect(s.writebackErrors).toBe(0);

      // flush() writes every dirty page back: the stack alone now holds the region's content.
      await region.flush();
      for (let p = 0; p < PAGES; p += 1024) {
        const list = Array.from({ length: 1024 }, (_, k) => p + k);
        const got = await stack.get(ns, list);
        expect(got.hits).toBe(1024);
        expect(wrong(got.data, list, versions)).toEqual([]);
      }
    } finally {
      await engine.close();
      await stack.close();
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
