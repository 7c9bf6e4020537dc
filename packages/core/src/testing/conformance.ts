/**
 * The PageStore conformance suite: one set of vitest tests that every tier runs against itself.
 * A new tier is done when it passes.
 *
 *   import { runPageStoreConformance } from '@tierstack/core/testing';
 *   runPageStoreConformance('MyTier', async () => new MyTier(...));
 *
 * The factory is called once per test and the store is closed at the end of the test. Tests use
 * fresh random namespaces, so a factory may hand out clients of one shared backend.
 */
import { describe, it, expect } from 'vitest';
import { randomBytes } from 'node:crypto';
import type { PageStore } from '../page-store.js';
import { makePages, pageMatches } from './patterns.js';

export interface ConformanceOptions {
  /** Per-test timeout in ms (default 30 s). */
  timeout?: number;
  /** Called after each test's store is closed (drop files, stop servers...). */
  cleanup?: () => Promise<void> | void;
}

type Factory = () => Promise<PageStore> | PageStore;

const ns = (label: string): string => `conf-${label}-${randomBytes(4).toString('hex')}`;

async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<void> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    expect((err as { code?: string }).code, `expected error code ${code}, got ${String(err)}`).toBe(code);
    return;
  }
  throw new Error(`expected an error with code ${code}, but the call succeeded`);
}

function expectPages(data: Buffer, namespace: string, pages: number[], pageSize: number, version = 0): void {
  const bad: number[] = [];
  pages.forEach((p, i) => {
    if (!pageMatches(data.subarray(i * pageSize, (i + 1) * pageSize), namespace, p, version)) bad.push(p);
  });
  expect(bad, `pages with wrong contents`).toEqual([]);
}

export function runPageStoreConformance(label: string, factory: Factory, options: ConformanceOptions = {}): void {
  const timeout = options.timeout ?? 30_000;
  const withStore = (name: string, body: (s: PageStore) => Promise<void>): void => {
    it(
      name,
      async () => {
        const store = await factory();
        try {
          await body(store);
        } finally {
          await store.close();
          await options.cleanup?.();
        }
      },
      timeout,
    );
  };

  describe(`PageStore conformance: ${label}`, () => {
    withStore('round-trips a batch of pages byte for byte', async (s) => {
      const n = ns('rt');
      const pages = [0, 1, 2, 3, 7, 8, 100, 4095];
      await s.put(n, pages, makePages(n, pages, s.pageSize));
      const r = await s.get(n, pages);
      expect(r.hits).toBe(pages.length);
      expect([...r.found]).toEqual(pages.map(() => 1));
      expect(r.data.length).toBe(pages.length * s.pageSize);
      expectPages(r.data, n, pages, s.pageSize);
    });

    withStore('reports misses in a partial batch and zero-fills them', async (s) => {
      const n = ns('miss');
      await s.put(n, [0, 2, 4], makePages(n, [0, 2, 4], s.pageSize));
      const r = await s.get(n, [0, 1, 2, 3, 4, 5]);
      expect([...r.found]).toEqual([1, 0, 1, 0, 1, 0]);
      expect(r.hits).toBe(3);
      for (const i of [1, 3, 5]) expect(r.data.subarray(i * s.pageSize, (i + 1) * s.pageSize).every((b) => b === 0)).toBe(true);
      expectPages(Buffer.concat([0, 2, 4].map((i) => r.data.subarray(i * s.pageSize, (i + 1) * s.pageSize))), n, [0, 2, 4], s.pageSize);
      const none = await s.get(ns('empty'), [0, 1]);
      expect(none.hits).toBe(0);
    });

    withStore('serves requests in any order, with duplicates', async (s) => {
      const n = ns('order');
      const pages = [10, 11, 12, 13];
      await s.put(n, pages, makePages(n, pages, s.pageSize));
      const ask = [13, 10, 12, 10, 11, 99];
      const r = await s.get(n, ask);
      expect([...r.found]).toEqual([1, 1, 1, 1, 1, 0]);
      expectPages(r.data.subarray(0, 5 * s.pageSize), n, ask.slice(0, 5), s.pageSize);
    });

    withStore('overwrites a page with the newer version', async (s) => {
      const n = ns('ow');
      const pages = [5, 6, 7];
      await s.put(n, pages, makePages(n, pages, s.pageSize, 1));
      await s.put(n, [6], makePages(n, [6], s.pageSize, 2));
      const r = await s.get(n, pages);
      expectPages(r.data.subarray(0, s.pageSize), n, [5], s.pageSize, 1);
      expectPages(r.data.subarray(s.pageSize, 2 * s.pageSize), n, [6], s.pageSize, 2);
      expectPages(r.data.subarray(2 * s.pageSize), n, [7], s.pageSize, 1);
    });

    withStore('removes pages; removing absent pages is not an error', async (s) => {
      const n = ns('rm');
      const pages = [1, 2, 3, 4];
      await s.put(n, pages, makePages(n, pages, s.pageSize));
      await s.remove(n, [2, 4, 999]);
      const r = await s.get(n, pages);
      expect([...r.found]).toEqual([1, 0, 1, 0]);
      expectPages(Buffer.concat([r.data.subarray(0, s.pageSize), r.data.subarray(2 * s.pageSize, 3 * s.pageSize)]), n, [1, 3], s.pageSize);
      await s.put(n, [2], makePages(n, [2], s.pageSize, 3));
      expectPages((await s.get(n, [2])).data, n, [2], s.pageSize, 3);
    });

    withStore('keeps namespaces apart', async (s) => {
      const a = ns('a');
      const b = ns('b');
      await s.put(a, [0, 1], makePages(a, [0, 1], s.pageSize));
      await s.put(b, [0], makePages(b, [0], s.pageSize));
      const ra = await s.get(a, [0, 1]);
      const rb = await s.get(b, [0, 1]);
      expectPages(ra.data, a, [0, 1], s.pageSize);
      expect([...rb.found]).toEqual([1, 0]);
      expectPages(rb.data.subarray(0, s.pageSize), b, [0], s.pageSize);
      await s.remove(a, [0]);
      expect((await s.get(b, [0])).hits).toBe(1);
    });

    withStore('handles large page numbers and empty batches', async (s) => {
      const n = ns('big');
      const pages = [2 ** 32 + 5, 2 ** 40, Number.MAX_SAFE_INTEGER];
      await s.put(n, pages, makePages(n, pages, s.pageSize));
      expectPages((await s.get(n, pages)).data, n, pages, s.pageSize);
      const e = await s.get(n, []);
      expect(e.hits).toBe(0);
      expect(e.data.length).toBe(0);
      await s.put(n, [], Buffer.alloc(0));
      await s.remove(n, []);
    });

    withStore('writes into a caller-supplied output buffer', async (s) => {
      const n = ns('out');
      await s.put(n, [1], makePages(n, [1], s.pageSize));
      const out = Buffer.alloc(2 * s.pageSize, 0xee);
      const r = await s.get(n, [1, 2], { out });
      expect(r.data).toBe(out);
      expectPages(out.subarray(0, s.pageSize), n, [1], s.pageSize);
      expect(out.subarray(s.pageSize).every((b) => b === 0)).toBe(true);
      await expectCode(s.get(n, [1], { out: Buffer.alloc(s.pageSize + 1) }), 'TS_ERR_BAD_ARGUMENT');
    });

    withStore('rejects a wrong page size and malformed batches with typed errors', async (s) => {
      const n = ns('bad');
      await expectCode(s.put(n, [0], Buffer.alloc(s.pageSize + 1)), 'TS_ERR_PAGE_SIZE');
      await expectCode(s.put(n, [0], Buffer.alloc(s.pageSize / 2)), 'TS_ERR_PAGE_SIZE');
      await expectCode(s.put(n, [0, 1], Buffer.alloc(s.pageSize)), 'TS_ERR_BAD_ARGUMENT');
      await expectCode(s.get(n, [-1]), 'TS_ERR_BAD_ARGUMENT');
      await expectCode(s.get(n, [1.5]), 'TS_ERR_BAD_ARGUMENT');
      await expectCode(s.get(n, [2 ** 53]), 'TS_ERR_BAD_ARGUMENT');
      await expectCode(s.get('', [0]), 'TS_ERR_BAD_ARGUMENT');
      await expectCode(s.put(n, [0], 'nope' as unknown as Buffer), 'TS_ERR_BAD_ARGUMENT');
      // Nothing was stored by the rejected calls.
      expect((await s.get(n, [0, 1])).hits).toBe(0);
    });

    it(
      'fails every call after close with TS_ERR_CLOSED; close is idempotent',
      async () => {
        const s = await factory();
        const n = ns('closed');
        await s.put(n, [0], makePages(n, [0], s.pageSize));
        await s.close();
        await s.close();
        await expectCode(s.get(n, [0]), 'TS_ERR_CLOSED');
        await expectCode(s.put(n, [0], makePages(n, [0], s.pageSize)), 'TS_ERR_CLOSED');
        await expectCode(s.remove(n, [0]), 'TS_ERR_CLOSED');
        await options.cleanup?.();
      },
      timeout,
    );

    withStore('runs concurrent batches without mixing them up', async (s) => {
      const n = ns('conc');
      const batches = Array.from({ length: 16 }, (_, b) => Array.from({ length: 16 }, (_, k) => b * 16 + k));
      await Promise.all(batches.map((pages, b) => s.put(n, pages, makePages(n, pages, s.pageSize, b))));
      const results = await Promise.all(batches.map((pages) => s.get(n, pages)));
      results.forEach((r, b) => {
        expect(r.hits).toBe(16);
        expectPages(r.data, n, batches[b]!, s.pageSize, b);
      });
      // Interleaved writers and readers of disjoint pages.
      await Promise.all(
        batches.map(async (pages, b) => {
          await s.put(n, pages, makePages(n, pages, s.pageSize, 100 + b));
          expectPages((await s.get(n, pages)).data, n, pages, s.pageSize, 100 + b);
        }),
      );
    });

    withStore('moves batches of 1 and of 1024 pages', async (s) => {
      const n = ns('sizes');
      await s.put(n, [42], makePages(n, [42], s.pageSize));
      expectPages((await s.get(n, [42])).data, n, [42], s.pageSize);
      const pages = Array.from({ length: 1024 }, (_, i) => 1000 + i * 3);
      await s.put(n, pages, makePages(n, pages, s.pageSize));
      const r = await s.get(n, pages);
      expect(r.hits).toBe(1024);
      expectPages(r.data, n, pages, s.pageSize);
    });

    withStore('counts operations in stats()', async (s) => {
      const n = ns('stats');
      await s.put(n, [0, 1], makePages(n, [0, 1], s.pageSize));
      await s.get(n, [0, 1, 2]);
      const st = s.stats();
      expect(st.name).toBe(s.name);
      expect(st.ops.put.pages).toBeGreaterThanOrEqual(2);
      expect(st.ops.get.pages).toBeGreaterThanOrEqual(3);
      expect(st.ops.get.hits).toBeGreaterThanOrEqual(2);
      expect(st.ops.get.latency.count).toBeGreaterThanOrEqual(1);
    });
  });
}
