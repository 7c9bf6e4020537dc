/**
 * RunStore (the page store a `tierstack run` server's engine serves from): the PageStore
 * conformance suite over a native stack, and the copy-on-write layers that give a fork child its
 * own copy of the parent's arena — checked page by page.
 */
import { describe, it, expect } from 'vitest';
import { createTierStack, MemoryTier, type TierStack } from '@tierstack/core';
import { runPageStoreConformance, makePages, pageMatches } from '@tierstack/core/testing';
import { CxlTier } from '@tierstack/cxl';
import { RunStore } from '../src/index.js';

const PS = 4096;
let stacks: TierStack[] = [];

async function nativeStack(): Promise<TierStack> {
  const dram = await CxlTier.open({ backing: { kind: 'memfd', size: 16 << 20 }, name: 'dram' });
  const s = createTierStack({ tiers: [dram, new MemoryTier({ maxSize: 64 << 20 })] });
  stacks.push(s);
  return s;
}

runPageStoreConformance('RunStore over a native stack', async () => new RunStore(await nativeStack()), {
  cleanup: async () => {
    await Promise.all(stacks.map((s) => s.close()));
    stacks = [];
  },
});

/** Bitmap (64 pages a word) with the given pages set. */
function bitmap(pages: number[], words: number): BigUint64Array {
  const b = new BigUint64Array(words);
  for (const p of pages) b[p >> 6] = b[p >> 6]! | (1n << BigInt(p & 63));
  return b;
}

const ok = (data: Buffer, ns: string, pages: number[], version: number): boolean[] =>
  pages.map((p, i) => pageMatches(data.subarray(i * PS, (i + 1) * PS), ns, p, version));

describe('RunStore copy-on-write layers (fork)', () => {
  it('a child reads the parent snapshot until it writes; the parent changing or freeing a page copies it aside first', async () => {
    const stack = await nativeStack();
    const store = new RunStore(stack);
    try {
      const parent = `cow-parent-${Date.now()}`;
      const child = `${parent}.f1`;
      const pages = Array.from({ length: 128 }, (_, i) => i);
      await store.put(parent, pages, makePages(parent, pages, PS, 1));
      await store.addLayer(child, parent, bitmap(pages, 2));
      expect(await store.pendingPages(child)).toBe(128);

      // Reads resolve to the parent's copies (which were written under the parent's name).
      let got = await store.get(child, pages);
      expect(got.hits).toBe(128);
      expect(ok(got.data, parent, pages, 1).every(Boolean)).toBe(true);

      // The parent rewrites pages 0..31 and frees 32..47: the child keeps the old copies.
      const rewritten = pages.slice(0, 32);
      await store.put(parent, rewritten, makePages(parent, rewritten, PS, 2));
      await store.remove(parent, pages.slice(32, 48));
      expect(store.cowStats().cowCopies).toBe(48);
      expect(await store.pendingPages(child)).toBe(128 - 48);
      got = await store.get(child, pages);
      expect(got.hits).toBe(128);
      expect(ok(got.data, parent, pages, 1).every(Boolean)).toBe(true);
      // ... and the parent sees its own new copies.
      const mine = await store.get(parent, rewritten);
      expect(ok(mine.data, parent, rewritten, 2).every(Boolean)).toBe(true);
      expect((await store.get(parent, pages.slice(32, 48))).hits).toBe(0);

      // The child writes pages 100..127: its own now, no longer the parent's.
      const own = pages.slice(100);
      await store.put(child, own, makePages(child, own, PS, 3));
      expect(await store.pendingPages(child)).toBe(128 - 48 - 28);
      got = await store.get(child, own);
      expect(ok(got.data, child, own, 3).every(Boolean)).toBe(true);

      // A grandchild of the child resolves through both layers.
      const grand = `${child}.f1`;
      await store.addLayer(grand, child, bitmap(pages, 2));
      got = await store.get(grand, pages);
      expect(got.hits).toBe(128);
      expect(ok(got.data.subarray(0, 100 * PS), parent, pages.slice(0, 100), 1).every(Boolean)).toBe(true);
      expect(ok(got.data.subarray(100 * PS), child, own, 3).every(Boolean)).toBe(true);

      // The parent goes away (its release removes every page): the children keep their copies.
      await store.remove(parent, pages);
      await store.dropLayer(parent);
      got = await store.get(child, pages);
      expect(got.hits).toBe(128);
      expect(ok(got.data.subarray(0, 100 * PS), parent, pages.slice(0, 100), 1).every(Boolean)).toBe(true);
      got = await store.get(grand, pages.slice(0, 100));
      expect(ok(got.data, parent, pages.slice(0, 100), 1).every(Boolean)).toBe(true);

      for (const ns of [grand, child]) {
        await store.remove(ns, pages);
        await store.dropLayer(ns);
      }
      for (const ns of [parent, child, grand]) expect((await stack.get(ns, pages)).hits).toBe(0);
      expect(store.cowStats().errors).toBe(0);
    } finally {
      await store.close();
      await stack.close();
      stacks = stacks.filter((s) => s !== stack);
    }
  });
});
