/**
 * prefetch() installs pages without waking anyone and wakes once; touching them afterwards
 * costs no fault. Stats are exported through a caller's prom-client Registry.
 */
import { describe, it, expect } from 'vitest';
import { Registry } from 'prom-client';
import { createTierStack, MemoryTier } from '@tierstack/core';
import { createUffdEngine } from '../src/index.js';
import { NativeTestTier, touchPages } from '../src/testing.js';
import { PS, eventually, seed, uniqueNs, wrongPages } from './helpers.js';

describe('prefetch and metrics', () => {
  it('prefetched pages are served without faults; metrics reach the registry', async () => {
    const registry = new Registry();
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 8 << 20 }), new NativeTestTier()] });
    const engine = createUffdEngine({ stack, faultThreads: 1, registry });
    const ns = uniqueNs('prefetch');
    const pages = 512;
    await seed(stack, ns, pages);
    const region = engine.createRegion({ size: pages * PS, namespace: ns, name: 'working-set' });
    const ws = Array.from({ length: 200 }, (_, i) => (i * 7) % pages);
    expect(await region.prefetch(ws)).toBe(new Set(ws).size);
    const out = Buffer.alloc(ws.length * PS);
    await touchPages(region.address, ws, PS, { out });
    expect(wrongPages(out, ns, ws)).toEqual([]);
    expect(region.stats().faults).toBe(0);
    const rest = Array.from({ length: pages }, (_, i) => i).filter((p) => !ws.includes(p));
    const out2 = Buffer.alloc(rest.length * PS);
    await touchPages(region.address, rest, PS, { out: out2 });
    expect(wrongPages(out2, ns, rest)).toEqual([]);
    await eventually(() => expect(region.stats().pagesInstalled).toBe(pages));
    const text = await registry.metrics();
    expect(text).toMatch(new RegExp(`tierstack_uffd_faults_total\\{region="working-set",namespace="${ns}"\\} ${rest.length}`));
    expect(text).toMatch(/tierstack_uffd_prefetched_total\{region="working-set",[^}]*\} 200/);
    expect(text).toContain('tierstack_uffd_pages_by_level_total');
    await engine.close();
    expect(await registry.metrics()).not.toContain('tierstack_uffd_faults_total');
    await stack.close();
  });
});
