import { describe, it, expect } from 'vitest';
import { Registry } from 'prom-client';
import { createTierStack, MemoryTier, bindStackMetrics, serveMetrics, registerCollected, registerCollectedHistogram } from '../src/index.js';
import { makePages } from '../src/testing/index.js';

describe('serveMetrics', () => {
  it('serves a stack\'s series and a collected histogram on loopback; a busy port is TS_ERR_EXISTS', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20, name: 'dram' })] });
    const registry = new Registry();
    bindStackMetrics(registry, stack);
    const buckets = [3, 0, 2];
    registerCollectedHistogram(registry, {
      name: 'x_seconds',
      help: 'test',
      collect: () => [{ labels: { op: 'read' }, buckets: buckets.map((n, i): [number, number] => [2 ** i, buckets.slice(0, i + 1).reduce((a, b) => a + b)]), count: 5, sum: 7.5 }],
    });
    let level = 5;
    registerCollected(registry, 'gauge', { name: 'y_level', help: 'test', labelNames: ['k'], collect: async () => (level > 0 ? [[{ k: 'a' }, level]] : []) });
    const server = await serveMetrics(registry, { port: 0 });
    try {
      expect(server.host).toBe('127.0.0.1');
      await stack.put('n', [1, 2, 3], makePages('n', [1, 2, 3], 4096));
      const text = await (await fetch(server.url)).text();
      expect(text).toContain('tierstack_pages_total{store="dram",op="put"} 3');
      expect(text).toContain('# TYPE x_seconds histogram');
      expect(text).toContain('x_seconds_bucket{op="read",le="1"} 3');
      expect(text).toContain('x_seconds_bucket{op="read",le="4"} 5');
      expect(text).toContain('x_seconds_bucket{op="read",le="+Inf"} 5');
      expect(text).toContain('x_seconds_sum{op="read"} 7.5');
      expect(text).toContain('y_level{k="a"} 5');
      level = 0; // a series the source no longer reports disappears
      expect(await (await fetch(server.url)).text()).not.toContain('y_level{');
      expect((await fetch(server.url.replace('/metrics', '/other'))).status).toBe(404);
      await expect(serveMetrics(registry, { port: server.port })).rejects.toMatchObject({ code: 'TS_ERR_EXISTS' });
    } finally {
      await server.close();
      await stack.close();
    }
  });
});
