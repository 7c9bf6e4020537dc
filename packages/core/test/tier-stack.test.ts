import { describe, it, expect, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { createTierStack, MemoryTier, FileTier, type PageStore } from '../src/index.js';
import { makePages, pageMatches } from '../src/testing/index.js';

const root = mkdtempSync(join(tmpdir(), 'tierstack-stack-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fileTier = (): Promise<FileTier> => FileTier.open({ dir: join(root, `d${n++}`) });
const PS = 4096;
const range = (a: number, len: number): number[] => Array.from({ length: len }, (_, i) => a + i);

function wrongPages(data: Buffer, ns: string, pages: number[], version: number): number[] {
  return pages.filter((p, i) => !pageMatches(data.subarray(i * PS, (i + 1) * PS), ns, p, version));
}

async function found(store: PageStore, ns: string, pages: number[]): Promise<number> {
  return (await store.get(ns, pages)).hits;
}

describe('TierStack', () => {
  it('rejects tiers of different page sizes', async () => {
    expect(() => createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 }), new MemoryTier({ maxSize: 1 << 20, pageSize: 8192 })] })).toThrow(
      expect.objectContaining({ code: 'TS_ERR_PAGE_SIZE' }),
    );
    expect(() => createTierStack({ tiers: [] })).toThrow(expect.objectContaining({ code: 'TS_ERR_BAD_ARGUMENT' }));
  });

  it('promotes a hit below into the tiers above (inclusive)', async () => {
    const top = new MemoryTier({ maxSize: 1 << 20, name: 'top' });
    const mid = new MemoryTier({ maxSize: 1 << 20, name: 'mid' });
    const bottom = await fileTier();
    const stack = createTierStack({ tiers: [top, mid, bottom] });
    const pages = range(0, 8);
    await bottom.put('p', pages, makePages('p', pages, PS));
    expect(await found(top, 'p', pages)).toBe(0);
    const r = await stack.get('p', pages);
    expect(wrongPages(r.data, 'p', pages, 0)).toEqual([]);
    expect(await found(top, 'p', pages)).toBe(8);
    expect(await found(mid, 'p', pages)).toBe(8);
    expect(stack.stats().extra.promotions).toBe(8);
    await stack.close();
  });

  it('does not promote with promotion "none", and moves pages up with "exclusive"', async () => {
    const top = new MemoryTier({ maxSize: 1 << 20 });
    const bottom = await fileTier();
    const none = createTierStack({ tiers: [top, bottom], policy: { promotion: 'none' }, closeTiers: false });
    await bottom.put('x', [1], makePages('x', [1], PS));
    expect((await none.get('x', [1])).hits).toBe(1);
    expect(await found(top, 'x', [1])).toBe(0);
    await none.close();

    const t2 = new MemoryTier({ maxSize: 1 << 20, name: 'top' });
    const mid = new MemoryTier({ maxSize: 1 << 20, name: 'mid' });
    const excl = createTierStack({ tiers: [t2, mid, bottom], policy: { promotion: 'exclusive' } });
    await mid.put('x', [2], makePages('x', [2], PS, 5));
    const r = await excl.get('x', [2]);
    expect(pageMatches(r.data, 'x', 2, 5)).toBe(true);
    expect(await found(t2, 'x', [2])).toBe(1);
    expect(await found(mid, 'x', [2])).toBe(0);
    // The page moved up dirty: a flush writes it to the bottom (its durable home).
    await excl.flush();
    expect(pageMatches((await bottom.get('x', [2])).data, 'x', 2, 5)).toBe(true);
    await excl.close();
  });

  it('loses no dirty page when a tiny DRAM budget forces evictions (write-back)', async () => {
    const top = new MemoryTier({ maxSize: 16 * PS });
    const bottom = await fileTier();
    const stack = createTierStack({ tiers: [top, bottom], policy: { writebackBatchPages: 8 } });
    const pages = range(0, 2000).sort(() => Math.random() - 0.5);
    // Concurrent writers of 20-page batches, then overwrite a third of them with version 2.
    await Promise.all(range(0, 100).map((b) => stack.put('wb', pages.slice(b * 20, b * 20 + 20), makePages('wb', pages.slice(b * 20, b * 20 + 20), PS, 1))));
    const again = pages.slice(0, 700);
    await Promise.all(range(0, 35).map((b) => stack.put('wb', again.slice(b * 20, b * 20 + 20), makePages('wb', again.slice(b * 20, b * 20 + 20), PS, 2))));
    expect(top.stats().extra.evictions).toBeGreaterThan(1000);
    const version = (p: number): number => (again.includes(p) ? 2 : 1);
    // Read back through the stack while write-backs may still be queued.
    const all = range(0, 2000);
    const r = await stack.get('wb', all);
    expect(r.hits).toBe(2000);
    expect(all.filter((p, i) => !pageMatches(r.data.subarray(i * PS, (i + 1) * PS), 'wb', p, version(p)))).toEqual([]);
    await stack.flush();
    expect(stack.stats().extra.pendingWriteback).toBe(0);
    expect(top.dirtyCount()).toBe(0);
    // After flush the bottom tier alone holds every page at its latest version.
    const b = await bottom.get('wb', all);
    expect(b.hits).toBe(2000);
    expect(all.filter((p, i) => !pageMatches(b.data.subarray(i * PS, (i + 1) * PS), 'wb', p, version(p)))).toEqual([]);
    await stack.close();
  });

  it('flush() writes dirty pages down and marks them clean', async () => {
    const top = new MemoryTier({ maxSize: 1 << 20 });
    const bottom = await fileTier();
    const stack = createTierStack({ tiers: [top, bottom] });
    await stack.put('f', range(0, 10), makePages('f', range(0, 10), PS));
    expect(top.dirtyCount()).toBe(10);
    expect(await found(bottom, 'f', range(0, 10))).toBe(0);
    await stack.flush();
    expect(top.dirtyCount()).toBe(0);
    expect(wrongPages((await bottom.get('f', range(0, 10))).data, 'f', range(0, 10), 0)).toEqual([]);
    await stack.close();
  });

  it('writes through to every tier, and around the caches to the bottom', async () => {
    const top = new MemoryTier({ maxSize: 1 << 20 });
    const bottom = await fileTier();
    const wt = createTierStack({ tiers: [top, bottom], policy: { write: 'write-through' }, closeTiers: false });
    await wt.put('w', [1, 2], makePages('w', [1, 2], PS));
    expect(await found(top, 'w', [1, 2])).toBe(2);
    expect(await found(bottom, 'w', [1, 2])).toBe(2);
    expect(top.dirtyCount()).toBe(0);
    await wt.close();
    const wa = createTierStack({ tiers: [top, bottom], policy: { write: 'write-around' } });
    await wa.put('w', [1], makePages('w', [1], PS, 9));
    expect(await found(top, 'w', [1])).toBe(0);
    expect(pageMatches((await bottom.get('w', [1])).data, 'w', 1, 9)).toBe(true);
    expect(pageMatches((await wa.get('w', [1])).data, 'w', 1, 9)).toBe(true);
    await wa.close();
  });

  it('fetches a page missing above only once for concurrent gets (single flight)', async () => {
    const bottom = await fileTier();
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 }), bottom] });
    const pages = range(100, 32);
    await bottom.put('sf', pages, makePages('sf', pages, PS));
    const before = bottom.stats().ops.get.pages;
    const results = await Promise.all(range(0, 10).map(() => stack.get('sf', pages)));
    for (const r of results) expect(wrongPages(r.data, 'sf', pages, 0)).toEqual([]);
    expect(bottom.stats().ops.get.pages - before).toBe(32);
    expect(stack.stats().extra.singleFlightJoins).toBe(9 * 32);
    await stack.close();
  });

  it('never promotes bytes that a concurrent put overtook', async () => {
    const top = new MemoryTier({ maxSize: 1 << 20 });
    const bottom = await fileTier();
    const stack = createTierStack({ tiers: [top, bottom] });
    await bottom.put('race', [7], makePages('race', [7], PS, 1));
    const read = stack.get('race', [7]); // starts fetching version 1 from the file tier
    await stack.put('race', [7], makePages('race', [7], PS, 2));
    expect(pageMatches((await read).data, 'race', 7, 1) || pageMatches((await read).data, 'race', 7, 2)).toBe(true);
    expect(pageMatches((await stack.get('race', [7])).data, 'race', 7, 2)).toBe(true);
    await stack.close();
  });

  it('a removal is not undone by a queued write-back', async () => {
    const top = new MemoryTier({ maxSize: 4 * PS });
    const bottom = await fileTier();
    const stack = createTierStack({ tiers: [top, bottom] });
    const pages = range(0, 64);
    await stack.put('rm', pages, makePages('rm', pages, PS)); // 60 pages evicted dirty, queued
    await stack.remove('rm', pages);
    await stack.flush();
    expect((await stack.get('rm', pages)).hits).toBe(0);
    expect(await found(bottom, 'rm', pages)).toBe(0);
    await stack.close();
  });

  it('exports per-tier metrics into an injected registry only', async () => {
    const registry = new Registry();
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 }), await fileTier()], registry });
    await stack.put('m', [0, 1], makePages('m', [0, 1], PS));
    await stack.get('m', [0, 1, 2]);
    const text = await registry.metrics();
    expect(text).toMatch(/tierstack_pages_total\{store="stack",op="get"\} 3/);
    expect(text).toMatch(/tierstack_hits_total\{store="memory",op="get"\} 2/);
    expect(text).toMatch(/tierstack_store_info\{store="memory",figure="dirtyPages"\} 2/);
    expect(text).toContain('tierstack_latency_p99_seconds');
    await stack.close();
    expect(await registry.metrics()).not.toContain('tierstack_pages_total');
  });

  it('describes its native chain: no handles when the top tier is JavaScript', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 }), await fileTier()] });
    expect(stack.nativeChain()).toEqual({ handles: [], jsLevel: 0, jsQueues: true });
    expect(await stack.prefetch('pf', [0])).toBe(0);
    await stack.close();
  });
});
