/**
 * Time for a restored function to serve its first request (@tierstack/faas over @tierstack/uffd):
 * eager (install every page, then run) vs lazy (first-touch faults) vs lazy + working-set
 * prefetch, same run, same stack [DRAM 32 MiB, FileTier]. The "function" is a native toucher
 * thread that reads its working set (10% of the snapshot, in clusters, in a fixed order); one op
 * = restore + request + close, and its figure is pages touched per second, so the ratio of two
 * cases is their speed-up.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { createTierStack, MemoryTier, FileTier } from '@tierstack/core';
import type { SnapshotCatalog } from '@tierstack/faas';
import { compare, result, rng, type CaseResult, type SuiteContext } from '../harness.js';

const PS = 4096;

export async function* restoreUffdCases(ctx: SuiteContext, _criuCatalog: SnapshotCatalog): AsyncIterable<CaseResult> {
  const faas = await import('@tierstack/faas');
  const { touchPages } = await import('@tierstack/uffd/testing');
  const mib = Number(process.env['TIERSTACK_BENCH_SNAPSHOT_MIB'] ?? 128);
  const pages = (mib << 20) / PS;
  // The image: 25% zero pages, the rest random; the working set: clusters of 16 pages, 10%.
  const img = Buffer.alloc(pages * PS);
  randomFillSync(img);
  const next = rng(42);
  for (let p = 0; p < pages; p++) if (next() % 4 === 0) img.fill(0, p * PS, (p + 1) * PS);
  const working: number[] = [];
  const clusters = Math.floor(pages / 10 / 16);
  for (let c = 0; c < clusters; c++) {
    const start = (next() % (pages / 16)) * 16;
    for (let k = 0; k < 16; k++) working.push(start + k);
  }
  const file = join(ctx.tmpDir, 'function.mem');
  writeFileSync(file, img);
  const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 32 << 20 }), await FileTier.open({ dir: join(ctx.tmpDir, 'restore-file') })] });
  const catalog = new faas.SnapshotCatalog(stack);
  ctx.log(`importing a ${mib} MiB function snapshot`);
  await faas.importRawFile(catalog, 'fn', file);
  const hook = faas.createRestoreHook(stack, { catalog, faultAround: 8 });
  // One lazy restore records the working set the prefetch cases use.
  {
    const h = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none', recordWorkingSet: true });
    await touchPages(h.region!.address, working, PS);
    await h.close();
  }
  const request = (opts: import('@tierstack/faas').RestoreOptions) => async (): Promise<number> => {
    const h = await hook.restore('fn', { kind: 'in-process' }, { recordWorkingSet: false, ...opts });
    await touchPages(h.region!.address, working, PS);
    await h.close();
    return working.length;
  };
  const eager = request({ eager: true });
  const lazy = request({ prefetch: 'none' });
  const prefetch = request({ prefetch: 'latest' });
  const measure = { ...ctx.measure, roundMs: Math.max(ctx.measure.roundMs, 300) };
  const note = `${mib} MiB snapshot, ${working.length}-page working set (10%), stack [DRAM 32 MiB, FileTier]`;
  ctx.log('restore: lazy vs eager');
  yield result('restore', 'first request: lazy (pages/s)', 'eager restore', await compare(lazy, eager, measure), `${note}; bar >= 5x`);
  ctx.log('restore: lazy + prefetch vs lazy');
  yield result('restore', 'first request: lazy+prefetch (pages/s)', 'lazy restore', await compare(prefetch, lazy, measure), `${note}; bar >= 2x`);
  await stack.close();
}
