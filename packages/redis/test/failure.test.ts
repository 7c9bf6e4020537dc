/**
 * Redis going away: a server killed (SIGKILL) in the middle of batches gives typed
 * TS_ERR_UNAVAILABLE errors, calls while it is down fail the same way instead of hanging, and
 * after a restart on the same port the same tier object works again. A memory tier above it
 * keeps serving (and keeps its dirty pages) meanwhile.
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

async function settle(ps: Array<Promise<unknown>>): Promise<Array<string | undefined>> {
  const rs = await Promise.allSettled(ps);
  return rs.map((r) => (r.status === 'fulfilled' ? 'ok' : ((r.reason as { code?: string }).code ?? String(r.reason))));
}

it('fails with TS_ERR_UNAVAILABLE when the server dies mid-batch and recovers after a restart', async () => {
  const tier = new RedisTier({ connection: server.url, timeoutMs: 2000, name: 'redis-failure' });
  const ns = 'killed';
  const big = Array.from({ length: 4096 }, (_, i) => i);
  const data = makePages(ns, big, PS);
  await tier.put(ns, big, data);

  // Batches in flight (16 MiB each way) while the server is killed.
  const inflight = [tier.put(ns, big, data), tier.get(ns, big), tier.put(ns, big, data), tier.get(ns, big)];
  await server.kill();
  const outcomes = await settle(inflight);
  expect(outcomes.every((o) => o === 'ok' || o === 'TS_ERR_UNAVAILABLE'), outcomes.join(',')).toBe(true);

  // While it is down every call fails with the typed error (bounded by timeoutMs, not hanging).
  expect(await settle([tier.get(ns, [0]), tier.put(ns, [0], data.subarray(0, PS)), tier.remove(ns, [0]), tier.removeNamespace(ns)])).toEqual([
    'TS_ERR_UNAVAILABLE',
    'TS_ERR_UNAVAILABLE',
    'TS_ERR_UNAVAILABLE',
    'TS_ERR_UNAVAILABLE',
  ]);
  expect(tier.stats().ops.get.errors).toBeGreaterThanOrEqual(1);

  // Same port, empty server (no persistence): the same tier object works again.
  await server.restart();
  await tier.put(ns, [1, 2, 3], makePages(ns, [1, 2, 3], PS, 7));
  const r = await tier.get(ns, [1, 2, 3, 4]);
  expect([...r.found]).toEqual([1, 1, 1, 0]);
  for (let i = 0; i < 3; i++) expect(pageMatches(r.data.subarray(i * PS, (i + 1) * PS), ns, i + 1, 7)).toBe(true);
  expect(tier.stats().extra.reconnects).toBeGreaterThanOrEqual(1);
  await tier.close();
});

it('leaves the tiers above alone while Redis is down: reads hit memory, dirty pages wait and land after the restart', async () => {
  const mem = new MemoryTier({ maxSize: 64 * PS });
  const redis = new RedisTier({ connection: server.url, timeoutMs: 1000 });
  const stack = createTierStack({ tiers: [mem, redis] });
  const ns = 'outage';
  const pages = Array.from({ length: 32 }, (_, i) => i);
  await stack.put(ns, pages, makePages(ns, pages, PS));
  await stack.flush();

  await server.kill();
  // Resident pages are served from memory.
  const r = await stack.get(ns, pages);
  expect(r.hits).toBe(32);
  // New dirty pages, more than memory holds: evictions queue for write-back and retry.
  const more = Array.from({ length: 96 }, (_, i) => 1000 + i);
  await stack.put(ns, more, makePages(ns, more, PS, 1));
  const r2 = await stack.get(ns, more);
  expect(r2.hits).toBe(96);
  for (let i = 0; i < more.length; i++) expect(pageMatches(r2.data.subarray(i * PS, (i + 1) * PS), ns, more[i]!, 1)).toBe(true);

  await server.restart();
  await stack.flush(); // waits for the queued write-backs, which now succeed
  const direct = await redis.get(ns, more);
  expect(direct.hits).toBe(96);
  for (let i = 0; i < more.length; i++) expect(pageMatches(direct.data.subarray(i * PS, (i + 1) * PS), ns, more[i]!, 1)).toBe(true);
  await stack.close();
});
