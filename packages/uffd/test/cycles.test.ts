/**
 * 500 create/destroy cycles of a region (each faulted in, served and closed): the process's
 * descriptor count and RSS stay flat — no uffd, mapping or thread is leaked.
 */
import { describe, it, expect } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { createTierStack } from '@tierstack/core';
import { createUffdEngine } from '../src/index.js';
import { NativeTestTier, touchPages } from '../src/testing.js';
import { PS, eventually, seed, uniqueNs } from './helpers.js';

const fdCount = (): number => readdirSync('/proc/self/fd').length;
const rssKiB = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]);
const threads = (): number => Number(/Threads:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]);

describe('region lifecycle', () => {
  it('500 create/touch/close cycles keep descriptors, threads and RSS stable', async () => {
    const stack = createTierStack({ tiers: [new NativeTestTier()] });
    const engine = createUffdEngine({ stack, faultThreads: 1 });
    const ns = uniqueNs('cycles');
    const pages = 64;
    await seed(stack, ns, pages);
    const cycle = async (): Promise<void> => {
      const region = engine.createRegion({ size: 1 << 20, namespace: ns, missing: 'zero', faultAround: 16 });
      const buf = region.buffer; // handed out, then detached by close()
      await touchPages(region.address, Array.from({ length: 256 }, (_, i) => i), PS);
      expect(region.stats().faults).toBeGreaterThan(0);
      await region.close();
      expect(buf.byteLength).toBe(0);
    };
    for (let i = 0; i < 20; i++) await cycle(); // warm up (allocator, JIT, thread pool)
    const fds = fdCount();
    const rss = rssKiB();
    const th = threads();
    for (let i = 0; i < 500; i++) await cycle();
    expect(fdCount()).toBe(fds);
    // Toucher threads resolve their promise just before they exit: give the last one a moment.
    await eventually(() => expect(threads()).toBeLessThanOrEqual(th));
    // 500 MiB were mapped and faulted in over the run; RSS must not keep any of it.
    expect(rssKiB() - rss).toBeLessThan(16 * 1024);
    await engine.close();
    await stack.close();
  });
});
