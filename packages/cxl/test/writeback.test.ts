import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createTierStack, FileTier, TsStatus } from '@tierstack/core';
import { driveStoreSync, makePages, pageMatches } from '@tierstack/core/testing';
import { CxlTier } from '../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'cxl-wb-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function countWrong(data: Buffer, ns: string, pages: number[], found: Uint8Array, version: number): number {
  let wrong = 0;
  pages.forEach((p, i) => {
    if (!found[i] || !pageMatches(data.subarray(i * 4096, (i + 1) * 4096), ns, p, version)) wrong++;
  });
  return wrong;
}

describe('CxlTier in a write-back stack', () => {
  it('keeps a dirty page when a promotion of an older copy arrives (it is newer than anything below)', async () => {
    const cxl = await CxlTier.open({ backing: { kind: 'memfd', size: 1 << 20 } });
    const ns = 'promo';
    const pages = [3, 4];
    await cxl.put(ns, pages, makePages(ns, pages, 4096, 2), { dirty: true }); // newer, not yet written back
    await cxl.put(ns, pages, makePages(ns, pages, 4096, 1), { promotion: true }); // a stale copy from below
    let r = await cxl.get(ns, pages);
    expect(countWrong(r.data, ns, pages, r.found, 2)).toBe(0);
    expect(cxl.dirtyCount()).toBe(2);
    // A plain (non-promotion) put still replaces it.
    await cxl.put(ns, pages, makePages(ns, pages, 4096, 3));
    r = await cxl.get(ns, pages);
    expect(countWrong(r.data, ns, pages, r.found, 3)).toBe(0);
    // And a promotion fills a page the tier does not hold.
    await cxl.put(ns, [9], makePages(ns, [9], 4096, 1), { promotion: true });
    r = await cxl.get(ns, [9]);
    expect(countWrong(r.data, ns, [9], r.found, 1)).toBe(0);
    await cxl.close();
  });

  it('hands every dirty victim to the tier below: nothing is lost', async () => {
    const cxl = await CxlTier.open({ backing: { kind: 'memfd', size: 1 << 20 } }); // ~200 slots
    const file = await FileTier.open({ dir: join(dir, 'file') });
    const stack = createTierStack({ tiers: [cxl, file] });
    const ns = 'wb';
    const pages = Array.from({ length: 3000 }, (_, i) => i * 7);
    for (let i = 0; i < pages.length; i += 64) {
      const chunk = pages.slice(i, i + 64);
      await stack.put(ns, chunk, makePages(ns, chunk, 4096, 1));
    }
    const evicted = cxl.stats().extra.dirtyEvictions ?? 0;
    expect(evicted).toBeGreaterThan(2000);
    // Overwrite some pages (dirty again), then read everything through the stack.
    const hot = pages.slice(0, 100);
    await stack.put(ns, hot, makePages(ns, hot, 4096, 2));
    const r = await stack.get(ns, pages);
    expect(countWrong(r.data.subarray(0, 100 * 4096), ns, hot, r.found.subarray(0, 100), 2)).toBe(0);
    expect(countWrong(r.data.subarray(100 * 4096), ns, pages.slice(100), r.found.subarray(100), 1)).toBe(0);

    // flush() writes the remaining dirty pages down; the bottom tier alone then has everything.
    await stack.flush();
    expect(cxl.dirtyCount()).toBe(0);
    // The occupancy counters kept per batch agree with a scan of the index.
    const info = cxl.info();
    expect(info.counters.validPages).toBe(info.validPages);
    expect(info.counters.dirtyPages).toBe(0);
    const below = await file.get(ns, pages);
    expect(countWrong(below.data.subarray(0, 100 * 4096), ns, hot, below.found.subarray(0, 100), 2)).toBe(0);
    expect(countWrong(below.data.subarray(100 * 4096), ns, pages.slice(100), below.found.subarray(100), 1)).toBe(0);
    await stack.close();
  });

  it('exposes its C ABI handle in the stack native chain; C ABI puts skip dirty victims', async () => {
    const cxl = await CxlTier.open({ backing: { kind: 'memfd', size: 1 << 20 }, ways: 4 });
    const file = await FileTier.open({ dir: join(dir, 'file2') });
    const stack = createTierStack({ tiers: [cxl, file] });
    const chain = stack.nativeChain();
    // The FileTier below has a (read-only) native handle too when core's addon is built.
    expect(chain.jsLevel).toBe(file.nativeHandle ? 2 : 1);
    expect(chain.handles[0]).toBe(cxl.nativeHandle);

    const nsId = cxl.registerNamespace('abi');
    const slots = cxl.info().slots;
    // Through the C ABI (as a front-end thread would): clean puts of 4*slots pages evict freely...
    const pages = Float64Array.from({ length: slots * 4 }, (_, i) => i);
    expect(driveStoreSync(cxl.nativeHandle!, nsId, 'put', pages, 16, pages.length / 16, { fill: 7 }).status).toBe(TsStatus.Ok);
    // ...and what it stored reads back from JS byte for byte (the driver was told to write 0x07 pages).
    const r = await cxl.get('abi', [...pages]);
    expect(r.hits).toBeGreaterThan(slots / 2);
    for (let i = 0; i < pages.length; i++) if (r.found[i]) expect(r.data.subarray(i * 4096, (i + 1) * 4096).every((b) => b === 7)).toBe(true);

    // Fill every slot with dirty pages of a namespace: a C ABI put then has nothing it may reclaim.
    const dirtyPages = Array.from({ length: slots * 8 }, (_, i) => i);
    const standalone = await CxlTier.open({ backing: { kind: 'memfd', size: 1 << 20 }, ways: 4 });
    await standalone.put('d', dirtyPages, makePages('d', dirtyPages, 4096), { dirty: true });
    expect(standalone.dirtyCount()).toBe(slots);
    const other = standalone.registerNamespace('other');
    expect(driveStoreSync(standalone.nativeHandle!, other, 'put', [1, 2, 3], 1, 3).status).toBe(TsStatus.NoSpace);
    expect(standalone.dirtyCount()).toBe(slots);
    await standalone.close();
    await stack.close();
  });
});
