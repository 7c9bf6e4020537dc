/**
 * `tierstack demo`: builds a stack of the tiers that exist, writes and reads back a few thousand
 * pages (checking every byte), and prints per-tier stats.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, MemoryTier, FileTier, type StoreStats } from '@tierstack/core';
import { makePages, pageMatches } from '@tierstack/core/testing';

export interface DemoOptions {
  pages: number;
  memoryMiB: number;
  dir?: string;
  out?: (line: string) => void;
}

export async function runDemo(opts: DemoOptions): Promise<{ verified: number; wrong: number }> {
  const out = opts.out ?? ((l: string) => console.log(l));
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'tierstack-demo-'));
  const stack = createTierStack({
    tiers: [new MemoryTier({ maxSize: opts.memoryMiB << 20 }), await FileTier.open({ dir: join(dir, 'file-tier') })],
  });
  const ns = 'demo';
  const pageSize = stack.pageSize;
  const batch = 64;
  out(`tierstack demo: stack [memory ${opts.memoryMiB} MiB, file ${dir}], ${opts.pages} pages of ${pageSize} bytes`);
  const t0 = performance.now();
  for (let p = 0; p < opts.pages; p += batch) {
    const pages = range(p, Math.min(batch, opts.pages - p));
    await stack.put(ns, pages, makePages(ns, pages, pageSize, 1));
  }
  const t1 = performance.now();
  let verified = 0;
  let wrong = 0;
  for (let p = 0; p < opts.pages; p += batch) {
    const pages = range(p, Math.min(batch, opts.pages - p));
    const r = await stack.get(ns, pages);
    pages.forEach((page, i) => {
      if (r.found[i] && pageMatches(r.data.subarray(i * pageSize, (i + 1) * pageSize), ns, page, 1)) verified++;
      else wrong++;
    });
  }
  const t2 = performance.now();
  await stack.flush();
  out(`wrote ${opts.pages} pages in ${(t1 - t0).toFixed(1)} ms, read back ${verified} byte-correct (${wrong} wrong) in ${(t2 - t1).toFixed(1)} ms`);
  out('');
  out(statsTable(stack.stats().tiers));
  await stack.close();
  if (!opts.dir) rmSync(dir, { recursive: true, force: true });
  return { verified, wrong };
}

const range = (start: number, n: number): number[] => Array.from({ length: n }, (_, i) => start + i);

export function statsTable(tiers: StoreStats[]): string {
  const rows = [['tier', 'get pages', 'hits', 'hit %', 'put pages', 'get p50 us', 'get p99 us', 'extra']];
  for (const t of tiers) {
    const g = t.ops.get;
    rows.push([
      t.name,
      String(g.pages),
      String(g.hits),
      g.pages ? ((100 * g.hits) / g.pages).toFixed(1) : '-',
      String(t.ops.put.pages),
      g.latency.p50Us.toFixed(1),
      g.latency.p99Us.toFixed(1),
      Object.entries(t.extra)
        .map(([k, v]) => `${k}=${v}`)
        .join(' '),
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ')).join('\n');
}
