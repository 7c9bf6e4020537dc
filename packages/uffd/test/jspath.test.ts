/**
 * A JS-only tier (MemoryTier) served through the batched JS path, with several concurrent
 * native touchers; and main-thread safety: the JS thread asking for a JS-path page fails fast
 * with TS_ERR_DEADLOCK instead of hanging, while native-tier pages work from it.
 */
import { describe, it, expect } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createTierStack, MemoryTier } from '@tierstack/core';
import { createUffdEngine } from '../src/index.js';
import { NativeTestTier, touchPages } from '../src/testing.js';
import { PS, eventually, seed, shuffled, uniqueNs, wrongPages } from './helpers.js';

describe('JS path', () => {
  it('serves a JS-only stack to 6 concurrent touchers, in batches', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 64 << 20 })] });
    const engine = createUffdEngine({ stack, faultThreads: 3 });
    const ns = uniqueNs('js');
    const pages = 3072;
    await seed(stack, ns, pages);
    const region = engine.createRegion({ size: pages * PS, namespace: ns, faultAround: 4 });
    const touchers = 6;
    // Overlapping orders: every toucher reads all pages of its half, in its own random order.
    const jobs = Array.from({ length: touchers }, (_, t) => {
      const half = t % 2;
      const order = shuffled(pages / 2, t + 1).map((p) => p * 2 + half);
      const out = Buffer.alloc(order.length * PS);
      return touchPages(region.address, order, PS, { out }).then(() => wrongPages(out, ns, order));
    });
    const bad = await Promise.all(jobs);
    expect(bad.flat()).toEqual([]);
    await eventually(() => expect(region.stats().pagesInstalled).toBe(pages));
    const s = region.stats();
    expect(s.residentPages).toBe(pages);
    expect(s.jsPathPages).toBeGreaterThanOrEqual(pages); // racing faults may fetch a block twice (one install wins)
    expect(s.poisoned).toBe(0);
    await engine.close();
    await stack.close();
  });
});

describe('main-thread safety', () => {
  it('a JS-thread read of a JS-path page fails fast with TS_ERR_DEADLOCK', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 16 << 20 })] });
    const engine = createUffdEngine({ stack, faultThreads: 1 });
    const ns = uniqueNs('main');
    await seed(stack, ns, 16);
    const region = engine.createRegion({ size: 16 * PS, namespace: ns });
    let err: unknown;
    try {
      region.read(3 * PS, 100);
    } catch (e) {
      err = e;
    }
    expect((err as { code?: string }).code).toBe('TS_ERR_DEADLOCK');
    // Nothing was poisoned: the same page is fine from another thread, or after a prefetch.
    expect(await region.prefetch([3])).toBe(1);
    expect(region.read(3 * PS, 100).equals((await stack.get(ns, [3])).data.subarray(0, 100))).toBe(true);
    await engine.close();
    await stack.close();
  }, 10_000);

  it('native-tier pages can be read from the JS thread (no JS on the path)', async () => {
    const stack = createTierStack({ tiers: [new NativeTestTier()] });
    const engine = createUffdEngine({ stack, faultThreads: 1 });
    const ns = uniqueNs('main-native');
    await seed(stack, ns, 32);
    const region = engine.createRegion({ size: 32 * PS, namespace: ns, faultAround: 4 });
    const expected = (await stack.get(ns, [5, 20])).data;
    expect(region.read(5 * PS, PS).equals(expected.subarray(0, PS))).toBe(true);
    expect(Buffer.from(region.buffer.subarray(20 * PS, 21 * PS)).equals(expected.subarray(PS))).toBe(true); // a raw touch
    await engine.close();
    await stack.close();
  }, 10_000);

  it('a raw JS-thread touch of a JS-path page is failed (SIGBUS), never a hang', async () => {
    const root = join(import.meta.dirname, '..');
    execFileSync('pnpm', ['exec', 'tsc', '-b', '.'], { cwd: root }); // the child runs the built package
    const child = spawn('bash', ['-c', `ulimit -c 0; exec node ${join(root, 'test', 'fixtures', 'main-thread-touch.mjs')}`], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_c, s) => resolve(s)));
    expect(out).toContain('touching');
    expect(out).not.toContain('survived');
    expect(signal).toBe('SIGBUS');
  }, 30_000);
});
