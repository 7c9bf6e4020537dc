/**
 * A write-back stack [MemoryTier (a few pages), RedisTier]: the memory budget forces constant
 * evictions of dirty pages; none may be lost. Every page is checked after flush, read directly
 * from the RedisTier.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { MemoryTier, createTierStack } from '@tierstack/core';
import { makePages, pageMatches } from '@tierstack/core/testing';
import { RedisTier } from '../src/index.js';
import { RedisServer } from '../src/testing/index.js';

let server: RedisServer;

beforeAll(async () => {
  server = await RedisServer.start();
});

afterAll(async () => {
  await server?.stop();
});

const PS = 4096;

it('loses no dirty page when a tiny memory tier evicts into Redis', async () => {
  const mem = new MemoryTier({ maxSize: 16 * PS, name: 'dram' });
  const redis = new RedisTier({ connection: server.url });
  const stack = createTierStack({ tiers: [mem, redis], policy: { write: 'write-back', writebackBatchPages: 32 } });
  const ns = 'wb';
  const N = 2000;
  const version = new Map<number, number>();
  // Writes in batches of varying size and order; pages rewritten several times.
  let seed = 12345;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let round = 0; round < 60; round++) {
    const size = 1 + rand(64);
    const pages = [...new Set(Array.from({ length: size }, () => rand(N)))];
    const v = round + 1;
    await stack.put(ns, pages, makePages(ns, pages, PS, v));
    pages.forEach((p) => version.set(p, v));
    if (round % 7 === 0) {
      // Reads in between promote pages and must see the newest versions.
      const probe = pages.slice(0, 4);
      const r = await stack.get(ns, probe);
      probe.forEach((p, i) => expect(pageMatches(r.data.subarray(i * PS, (i + 1) * PS), ns, p, version.get(p)!)).toBe(true));
    }
  }
  // Sequential sweep over every page, far more than memory holds.
  const all = Array.from({ length: N }, (_, i) => i);
  for (let s = 0; s < N; s += 100) {
    const chunk = all.slice(s, s + 100).filter((p) => !version.has(p));
    if (chunk.length === 0) continue;
    await stack.put(ns, chunk, makePages(ns, chunk, PS, 1000));
    chunk.forEach((p) => version.set(p, 1000));
  }
  expect(mem.stats().extra.evictions).toBeGreaterThan(1000);
  await stack.flush();
  expect(mem.dirtyCount()).toBe(0);

  const r = await redis.get(ns, all);
  expect(r.hits).toBe(N);
  const wrong = all.filter((p, i) => !pageMatches(r.data.subarray(i * PS, (i + 1) * PS), ns, p, version.get(p)!));
  expect(wrong).toEqual([]);
  await stack.close();
});
