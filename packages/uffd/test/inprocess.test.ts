/**
 * In-process regions over real stacks: a native toucher thread reads every page in random
 * order and the bytes are checked; then again with fault-around 16. The JS thread never
 * touches the memory.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, FileTier, MemoryTier, type PageStore, type TierStack } from '@tierstack/core';
import { createUffdEngine, type UffdEngine } from '../src/index.js';
import { touchPages } from '../src/testing.js';
import { PS, eventually, seed, shuffled, uniqueNs, wrongPages } from './helpers.js';

const PAGES = 2048; // 8 MiB region

interface Fixture {
  stack: TierStack;
  engine: UffdEngine;
  dir: string;
}
let fx: Fixture | undefined;

afterEach(async () => {
  if (!fx) return;
  await fx.engine.close();
  await fx.stack.close();
  await rm(fx.dir, { recursive: true, force: true });
  fx = undefined;
});

async function topTier(kind: 'cxl' | 'memory'): Promise<PageStore> {
  if (kind === 'memory') return new MemoryTier({ maxSize: 4 << 20 }); // smaller than the region: some pages come from the file tier
  const { CxlTier } = await import('@tierstack/cxl');
  return CxlTier.open({ backing: { kind: 'memfd', size: 64 << 20 } });
}

for (const kind of ['cxl', 'memory'] as const) {
  describe(`in-process region over [${kind === 'cxl' ? 'CxlTier(memfd)' : 'MemoryTier'}, FileTier]`, () => {
    for (const faultAround of [1, 16]) {
      it(`serves every page in random order (faultAround ${faultAround})`, async () => {
        const dir = await mkdtemp(join(tmpdir(), 'uffd-inproc-'));
        const stack = createTierStack({ tiers: [await topTier(kind), await FileTier.open({ dir })] });
        const engine = createUffdEngine({ stack, faultThreads: 2 });
        fx = { stack, engine, dir };
        const ns = uniqueNs(`inproc-${kind}`);
        const offset = 100;
        await seed(stack, ns, PAGES, offset);
        await stack.flush(); // the file tier holds every page; the top tier only part of them
        const region = engine.createRegion({ size: PAGES * PS, namespace: ns, pageOffset: offset, faultAround });
        const order = shuffled(PAGES, faultAround);
        const out = Buffer.alloc(PAGES * PS);
        await touchPages(region.address, order, PS, { out });
        expect(wrongPages(out, ns, order, offset)).toEqual([]);
        await eventually(() => expect(region.stats().pagesInstalled).toBe(PAGES));
        const s = region.stats();
        expect(s.residentPages).toBe(PAGES);
        expect(s.poisoned).toBe(0);
        if (faultAround === 16) expect(s.faults).toBeLessThan(PAGES); // blocks were installed around faults
        expect(s.pagesByLevel.reduce((a, b) => a + b, 0)).toBe(PAGES);
        if (kind === 'cxl') expect(s.pagesByLevel[0]).toBeGreaterThan(0); // served natively from the CXL tier
        // A second pass reads installed memory (no faults) and sees the same bytes.
        const again = Buffer.alloc(PAGES * PS);
        await touchPages(region.address, order, PS, { out: again });
        expect(again.equals(out)).toBe(true);
        expect(region.stats().faults).toBe(s.faults);
        await region.close();
      });
    }
  });
}
