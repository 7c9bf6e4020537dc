import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { makePages, pageMatches } from '@tierstack/core/testing';
import { CxlTier, formatCxlRegion } from '../src/index.js';
import { cxlTestingAddonPath } from '../src/testing.js';
import { addonPath, runMultiProcess } from './fixtures/mp-run.js';

const dir = mkdtempSync(join(tmpdir(), 'cxl-mp-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('CxlTier shared by several processes', () => {
  it('serves only whole, right pages to concurrent writers and readers, also after one is killed', async () => {
    const regionPath = join(dir, 'shared.region');
    // ~60 sets x 16 ways for 2048 keys: lots of evictions and overwrites racing with reads.
    await formatCxlRegion({ backing: { kind: 'file', path: regionPath, size: 4 << 20, create: true } });

    const calm = await runMultiProcess({ regionPath, children: 4, durationMs: 2000, keySpan: 2048 });
    expect(calm.killed).toEqual([]);
    expect(calm.reports).toHaveLength(4);
    for (const r of calm.reports) {
      expect(r.hits, `child ${r.writer} read something`).toBeGreaterThan(0);
      expect(r.mismatches, `child ${r.writer} mismatches`).toBe(0);
      expect(r.checksumErrors, `child ${r.writer} checksum errors`).toBe(0);
    }

    const rough = await runMultiProcess({ regionPath, children: 4, durationMs: 3000, keySpan: 2048, killAfterMs: 1000 });
    expect(rough.killed).toEqual([0]);
    expect(rough.reports).toHaveLength(3);
    for (const r of rough.reports) {
      expect(r.hits).toBeGreaterThan(0);
      expect(r.mismatches, `child ${r.writer} mismatches after the kill`).toBe(0);
    }

    // The region is still fully usable: every set accepts a write (a lock left by the killed
    // child is taken over) and reads back what was written.
    const tier = await CxlTier.open({ backing: { kind: 'file', path: regionPath } });
    const ns = 'after-kill';
    const pages = Array.from({ length: 4096 }, (_, i) => i);
    for (let i = 0; i < pages.length; i += 512) {
      const chunk = pages.slice(i, i + 512);
      await tier.put(ns, chunk, makePages(ns, chunk, tier.pageSize, 9));
    }
    const r = await tier.get(ns, pages);
    let wrong = 0;
    pages.forEach((p, i) => {
      if (r.found[i] && !pageMatches(r.data.subarray(i * tier.pageSize, (i + 1) * tier.pageSize), ns, p, 9)) wrong++;
    });
    expect(wrong).toBe(0);
    expect(r.hits).toBeGreaterThan(0);
    expect(tier.info().lockedSets).toBe(0);
    await tier.close();
  }, 60_000);

  it('takes over the lock of a process killed mid-put; the half-written page is never served', async () => {
    const regionPath = join(dir, 'abandon.region');
    const tier = await CxlTier.open({ backing: { kind: 'file', path: regionPath, size: 2 << 20, create: true } });
    const ns = 'abandon';
    const id = tier.registerNamespace(ns);
    await tier.put(ns, [7], makePages(ns, [7], tier.pageSize, 1));
    const child = spawnSync(process.execPath, [fileURLToPath(new URL('./fixtures/abandon-child.mjs', import.meta.url)), cxlTestingAddonPath, regionPath, String(id), '7']);
    expect(child.signal).toBe('SIGKILL');
    expect(tier.info().lockedSets).toBe(1);

    // The reader does not wait forever and does not see the torn page.
    const r1 = await tier.get(ns, [7]);
    expect(r1.hits).toBe(0);
    // A writer to the same set takes the dead process's lock over and repairs the set.
    await tier.put(ns, [7], makePages(ns, [7], tier.pageSize, 2));
    const r2 = await tier.get(ns, [7]);
    expect(r2.hits).toBe(1);
    expect(pageMatches(r2.data, ns, 7, 2)).toBe(true);
    const info = tier.info();
    expect(info.lockedSets).toBe(0);
    expect(info.counters.lockSteals).toBeGreaterThanOrEqual(1);
    await tier.close();
  });
});
