import { describe, it, expect } from 'vitest';
import { createTierStack, MemoryTier } from '@tierstack/core';
import { createUffdEngine } from '../src/index.js';
import { NativeTestTier, touchPages } from '../src/testing.js';
import { PS, seed, shuffled, uniqueNs, wrongPages } from './helpers.js';

describe('smoke', () => {
  it('native tier region', async () => {
    const tier = new NativeTestTier();
    const stack = createTierStack({ tiers: [tier] });
    const engine = createUffdEngine({ stack, faultThreads: 1 });
    const ns = uniqueNs('smoke');
    const n = 256;
    await seed(stack, ns, n);
    const region = engine.createRegion({ size: n * PS, namespace: ns });
    const order = shuffled(n);
    const out = Buffer.alloc(n * PS);
    await touchPages(region.address, order, PS, { out });
    expect(wrongPages(out, ns, order)).toEqual([]);
    console.log(region.stats());
    await engine.close();
    await stack.close();
  });
  it('js tier region', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 64 << 20 })] });
    const engine = createUffdEngine({ stack, faultThreads: 2 });
    const ns = uniqueNs('smokejs');
    const n = 256;
    await seed(stack, ns, n);
    const region = engine.createRegion({ size: n * PS, namespace: ns, faultAround: 16 });
    const order = shuffled(n);
    const out = Buffer.alloc(n * PS);
    await touchPages(region.address, order, PS, { out });
    expect(wrongPages(out, ns, order)).toEqual([]);
    console.log(region.stats());
    await engine.close();
    await stack.close();
  });
});
