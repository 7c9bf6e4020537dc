import { randomBytes } from 'node:crypto';
import { makePages, pageMatches } from '@tierstack/core/testing';
import type { PageStore } from '@tierstack/core';

export const PS = 4096;
export const uniqueNs = (label: string): string => `uffd-${label}-${randomBytes(4).toString('hex')}`;

/** Writes the pattern pages [0, n) of `ns` (offset by pageOffset) into `store`, in batches. */
export async function seed(store: PageStore, ns: string, n: number, pageOffset = 0, skip: Set<number> = new Set()): Promise<void> {
  for (let p = 0; p < n; p += 256) {
    const pages = [];
    for (let k = p; k < Math.min(n, p + 256); k++) if (!skip.has(k)) pages.push(k + pageOffset);
    if (pages.length) await store.put(ns, pages, makePages(ns, pages, PS));
  }
}

/** Page numbers of `buf` (in touch order `pages`, plus pageOffset) whose content is wrong. */
export function wrongPages(buf: Buffer, ns: string, pages: number[], pageOffset = 0): number[] {
  const bad: number[] = [];
  pages.forEach((p, i) => {
    if (!pageMatches(buf.subarray(i * PS, (i + 1) * PS), ns, p + pageOffset)) bad.push(p);
  });
  return bad;
}

export function shuffled(n: number, seed = 12345): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  let x = seed;
  for (let i = n - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const j = x % (i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/**
 * Region stats are updated by the fault thread right after it wakes the toucher, so the last
 * fault's figures may land a moment after the toucher finished: poll briefly.
 */
export async function eventually(check: () => void, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      check();
      return;
    } catch (err) {
      if (Date.now() > end) throw err;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}
