/**
 * Time for a restored function to serve its first request (@tierstack/faas over @tierstack/uffd).
 *
 * 1. In-process (kept from before): eager (install every page, then run) vs lazy (first-touch
 *    faults) vs lazy + working-set prefetch, stack [DRAM (CxlTier memfd) 32 MiB, FileTier]. The "function" is a
 *    native toucher thread reading its working set (10% of the snapshot, clusters of 16 pages, a
 *    fixed order); one op = restore + request + close, its figure is pages touched per second.
 *
 * 2. Against the handler Firecracker users run today (restoreFirecrackerCases below): a C
 *    on-demand UFFD handler (packages/uffd/bench/uffd_ondemand.c: one UFFDIO_COPY of one page per fault from a
 *    MAP_PRIVATE mmap of the memory file) vs tierstack's Firecracker handler
 *    (`createRestoreHook(stack).serveFirecracker`) on the default native stack
 *    [CxlTier(memfd), FileTier]. Both serve the same Firecracker-faithful client process
 *    (@tierstack/faas native-test/fc_client.c: creates the uffd, maps two guest regions
 *    anonymously, registers them, connects, sends the JSON mappings + uffd, touches its request,
 *    checks every touched byte against the memory file) over the same two-region memory file.
 *    The figure of one op is the client's own time from connect to the end of its request
 *    (pages touched / that time); spawning the client, resetting the CXL tier and closing the
 *    restore stay outside it. Handler and client are pinned (ondemand.ts restoreCpus: both on CPU 1
 *    by default, TIERSTACK_BENCH_RESTORE_CPUS to change); each case's note says where every thread may run.
 */
import { closeSync, openSync, readdirSync, readSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { createTierStack, MemoryTier, FileTier, type PageStore, type TierStack } from '@tierstack/core';
import type { SnapshotCatalog, RestoreStats, RestoreOptions } from '@tierstack/faas';
import { compare, compareTimed, result, rng, type CaseResult, type SuiteContext, type TimedOp } from '../harness.js';
import { buildOnDemandHandler, OnDemandHandler, canPin, pinProcess, pinnedCommand, restoreCpus, threadPlacement, type OnDemandStats } from '../ondemand.js';

const PS = 4096;
const CLIENT_TIMEOUT_MS = 120_000;

/** Why restores cannot run here (the uffd addon or userfaultfd missing), or undefined. */
async function uffdUnavailable(): Promise<string | undefined> {
  try {
    const { createUffdEngine } = await import('@tierstack/uffd');
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 })] });
    const engine = createUffdEngine({ stack, faultThreads: 1 });
    try {
      await engine.createRegion({ size: 16 * PS, namespace: 'probe' }).close();
    } finally {
      await engine.close();
      await stack.close();
    }
    return undefined;
  } catch (err) {
    return (err as Error).message.split('\n')[0];
  }
}

export async function* restoreUffdCases(ctx: SuiteContext, _criuCatalog: SnapshotCatalog): AsyncIterable<CaseResult> {
  const why = await uffdUnavailable();
  if (why) {
    ctx.log(`restore cases with userfaultfd skipped: ${why}`);
    return;
  }
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
  // The default native stack (tierstack restore's): a DRAM cache (CxlTier over a memfd) over a FileTier.
  const { CxlTier } = await import('@tierstack/cxl');
  const dram = await CxlTier.open({ backing: { kind: 'memfd', size: 32 << 20 }, name: 'dram' });
  const stack = createTierStack({ tiers: [dram as PageStore, await FileTier.open({ dir: join(ctx.tmpDir, 'restore-file') })] });
  const catalog = new faas.SnapshotCatalog(stack);
  ctx.log(`importing a ${mib} MiB function snapshot`);
  await faas.importRawFile(catalog, 'fn', file);
  const hook = faas.createRestoreHook(stack, { catalog }); // the hook's defaults (fault-around 16)
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
  const note = `${mib} MiB snapshot, ${working.length}-page working set (10%), stack [DRAM (CxlTier memfd) 32 MiB, FileTier]`;
  ctx.log('restore: lazy vs eager');
  yield result('restore', 'first request: lazy (pages/s)', 'eager restore', await compare(lazy, eager, measure), `${note}; bar >= 5x`);
  ctx.log('restore: lazy + prefetch vs lazy');
  yield result('restore', 'first request: lazy+prefetch (pages/s)', 'lazy restore', await compare(prefetch, lazy, measure), `${note}; bar >= 2x`);
  await stack.close();

  yield* restoreFirecrackerCases(ctx);
}

// ---------------------------------------------------------------------------------------------
// tierstack's Firecracker handler vs the C on-demand handler.

/**
 * A Firecracker-like memory file: two guest regions (2/3 and 1/3 of it) laid end to end, 25% zero
 * pages in runs (1-64 pages), the rest random. The request: 10% of the pages in clusters of 4-32
 * consecutive pages at unaligned places, visited cluster by cluster in a fixed random order.
 */
function writeFirecrackerImage(path: string, pages: number): { request: number[]; zero: Uint8Array } {
  const next = rng(0xf1c0);
  const zero = new Uint8Array(pages);
  let nz = 0;
  while (nz < pages / 4) {
    const start = next() % pages;
    const len = 1 + (next() % 64);
    for (let p = start; p < Math.min(pages, start + len); p++) if (!zero[p]) (zero[p] = 1), nz++;
  }
  const inRequest = new Uint8Array(pages);
  const clusters: number[][] = [];
  let n = 0;
  while (n < pages / 10) {
    const start = next() % pages;
    const len = 4 + (next() % 29);
    const c: number[] = [];
    for (let p = start; p < Math.min(pages, start + len); p++) if (!inRequest[p]) (inRequest[p] = 1), c.push(p), n++;
    if (c.length) clusters.push(c);
  }
  for (let i = clusters.length - 1; i > 0; i--) {
    const j = next() % (i + 1);
    [clusters[i], clusters[j]] = [clusters[j]!, clusters[i]!];
  }
  const fd = openSync(path, 'w');
  try {
    const chunk = Buffer.alloc(4096 * PS);
    for (let first = 0; first < pages; first += 4096) {
      const k = Math.min(4096, pages - first);
      randomFillSync(chunk, 0, k * PS);
      for (let i = 0; i < k; i++) if (zero[first + i]) chunk.fill(0, i * PS, (i + 1) * PS);
      writeSync(fd, chunk, 0, k * PS, first * PS);
    }
  } finally {
    closeSync(fd);
  }
  return { request: clusters.flat(), zero };
}

/** Reads every file under `path` once (puts it in the page cache). */
function readThrough(path: string): void {
  const st = statSync(path);
  if (st.isDirectory()) {
    for (const e of readdirSync(path)) readThrough(join(path, e));
    return;
  }
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    while (readSync(fd, buf, 0, buf.length, null) > 0);
  } finally {
    closeSync(fd);
  }
}

async function* restoreFirecrackerCases(ctx: SuiteContext): AsyncIterable<CaseResult> {
  const faas = await import('@tierstack/faas');
  const { buildFirecrackerTestClient, runFirecrackerTestClient } = await import('@tierstack/faas/testing');
  const mib = Number(process.env['TIERSTACK_BENCH_FC_MIB'] ?? 384);
  const pages = (mib << 20) / PS;
  const r0 = Math.floor((pages * 2) / 3);
  const r1 = pages - r0;
  const cpus = restoreCpus();

  // What this needs: a C compiler, userfaultfd, the CXL tier's addon, taskset for pinning.
  let client: string;
  let cExe: string;
  let CxlTier: typeof import('@tierstack/cxl').CxlTier;
  try {
    client = buildFirecrackerTestClient(ctx.tmpDir);
    cExe = buildOnDemandHandler(ctx.tmpDir);
    ({ CxlTier } = await import('@tierstack/cxl'));
  } catch (err) {
    ctx.log(`restore vs C on-demand skipped: ${(err as Error).message.split('\n')[0]}`);
    return;
  }
  if (cpus && !canPin()) {
    ctx.log('restore vs C on-demand skipped: taskset (util-linux) is needed to pin handler and client (TIERSTACK_BENCH_RESTORE_CPUS=none to run unpinned)');
    return;
  }

  const memFile = join(ctx.tmpDir, 'vm.mem');
  ctx.log(`restore vs C on-demand: writing a ${mib} MiB two-region memory file`);
  const { request, zero } = writeFirecrackerImage(memFile, pages);
  const wsFile = join(ctx.tmpDir, 'vm.request');
  writeFileSync(wsFile, request.join('\n'));
  const clientArgs = (sock: string): string[] => [sock, memFile, '--region', `${r0 * PS}:0`, '--region', `${r1 * PS}:${r0 * PS}`, '--touch-file', wsFile];
  const storedInRequest = request.filter((p) => !zero[p]);

  // Runs the client once against the handler on `sock`: its pages and its connect → request-end time.
  const runClient = async (sock: string): Promise<{ pages: number; ns: number }> => {
    const [bin, args] = pinnedCommand(client, clientArgs(sock), cpus?.client);
    const run = runFirecrackerTestClient(bin, args);
    // A handler that never answers would leave the client blocked on its first fault for good.
    const limit = setTimeout(() => run.child.kill('SIGKILL'), CLIENT_TIMEOUT_MS);
    const r = await run.result.finally(() => clearTimeout(limit));
    if (r.error) throw new Error(`the Firecracker client failed (killed after ${CLIENT_TIMEOUT_MS / 1000} s if it hung): ${r.error}`);
    if (r.mismatches !== 0 || r.pages !== request.length) {
      throw new Error(`the Firecracker client read wrong data: ${r.mismatches} of ${r.pages} touched pages differ from the memory file (first ${r.first_bad})`);
    }
    return { pages: r.pages, ns: r.t_done! - r.t_connect! };
  };

  // The C side: one handler process, pinned, serving every baseline op of every case.
  const c = await OnDemandHandler.start(cExe, { socketPath: join(ctx.tmpDir, 'c.sock'), memFile, cpu: cpus?.handler });
  let cLast: OnDemandStats | undefined;
  const cOp: TimedOp = async () => {
    const serving = c.serving();
    const run = runClient(c.socketPath);
    const [r] = await Promise.all([run, serving]);
    cLast = await c.done();
    return { ops: r.pages, ns: r.ns };
  };
  try {
    // Preflight (also: the client and userfaultfd work here at all).
    try {
      await cOp();
    } catch (err) {
      ctx.log(`restore vs C on-demand skipped: ${(err as Error).message.split('\n')[0]}`);
      return;
    }
    const cThreads = threadPlacement(c.pid);

    // tierstack's side: the default native stack, the snapshot imported as Firecracker's.
    const cxl = await CxlTier.open({ backing: { kind: 'memfd', size: Math.max(4 * pages * PS, 64 << 20) } });
    const stack: TierStack = createTierStack({ tiers: [cxl as PageStore, await FileTier.open({ dir: join(ctx.tmpDir, 'fc-file') })] });
    const unpin = cpus ? pinProcess([cpus.handler]) : () => undefined;
    try {
      const catalog = new faas.SnapshotCatalog(stack);
      ctx.log(`restore vs C on-demand: importing the memory file (${pages} pages, 2 regions)`);
      const imp = await faas.importFirecracker(catalog, 'vm', memFile, { regions: [{ size: r0 * PS }, { size: r1 * PS, guest_phys_addr: 0x1_0000_0000 }] });
      const m = await catalog.get('vm');
      const ns = m.namespace;
      const stored = m.storedPageList();
      const hook = faas.createRestoreHook(stack, { catalog });

      let handlerSeq = 0;
      let tsThreads = '';
      /** A tierstack Firecracker handler with per-restore options; ops wait for the restore's end. */
      const tierstack = async (restore: RestoreOptions) => {
        const ends: RestoreStats[] = [];
        let wake: (() => void) | undefined;
        const socketPath = join(ctx.tmpDir, `ts-${handlerSeq++}.sock`);
        const handler = await hook.serveFirecracker({
          socketPath,
          snapshotId: 'vm',
          restore,
          // Where tierstack's threads may run, read once while the first (untimed) restore runs.
          onRestore: () => {
            if (!tsThreads) tsThreads = threadPlacement();
          },
          onRestoreEnd: (s) => {
            ends.push(s);
            wake?.();
          },
        });
        let last: RestoreStats | undefined;
        return {
          handler,
          last: () => last,
          async request(): Promise<{ pages: number; ns: number }> {
            const r = await runClient(socketPath);
            const deadline = Date.now() + CLIENT_TIMEOUT_MS;
            while (ends.length === 0) {
              if (Date.now() > deadline) throw new Error(`tierstack's restore did not end ${CLIENT_TIMEOUT_MS / 1000} s after its VM exited`);
              await new Promise<void>((res) => {
                wake = res;
                setTimeout(res, 1000);
              });
            }
            last = ends.shift();
            return r;
          },
        };
      };
      const dropCxl = async (): Promise<void> => {
        for (let i = 0; i < stored.length; i += 4096) await cxl.remove(ns, stored.slice(i, i + 4096));
      };
      const cxlHolds = async (): Promise<number> => (await cxl.get(ns, storedInRequest)).found.reduce((n, f) => n + f, 0);

      // A first restore records the working set (and shows where tierstack's threads run).
      {
        await dropCxl();
        const rec = await tierstack({ prefetch: 'none', recordWorkingSet: true });
        await rec.request();
        await rec.handler.close();
        ctx.log(`restore vs C on-demand: recorded a working set of ${rec.last()?.workingSetRecorded ?? 0} pages`);
      }
      readThrough(join(ctx.tmpDir, 'fc-file'));
      readThrough(memFile);

      const placement = cpus
        ? `placement: handler CPU ${cpus.handler} (C: ${cThreads}; tierstack: ${tsThreads}), client CPU ${cpus.client}`
        : `placement: unpinned (C: ${cThreads}; tierstack: ${tsThreads})`;
      const base = `${mib} MiB memory file, 2 regions, ${imp.zeroPages} zero pages; request ${request.length} pages (10%, clusters of 4-32); stack [CxlTier(memfd), FileTier], hook defaults`;
      const describe = (s: RestoreStats | undefined): string =>
        s
          ? `tierstack last op: ${s.faults} faults, ${s.pagesInstalled} installed (${s.zeroPages} zero, ${s.prefetched} prefetched)` +
            // Where the pages came from: per stack level natively / through the JS path (newer
            // RestoreStats), and what the JS-visible tier counters saw.
            (Array.isArray((s as { pagesByLevel?: unknown }).pagesByLevel) ? `, pages by level [${(s as { pagesByLevel: number[] }).pagesByLevel.join(',')}]` : '') +
            (typeof (s as { jsPathPages?: unknown }).jsPathPages === 'number' ? `, JS path ${(s as { jsPathPages: number }).jsPathPages}` : '') +
            `, JS tier gets ${s.tiers.map((t) => `${t.tier} ${t.hits}/${t.requested}`).join(' ')}`
          : '';
      const cDescribe = (): string => (cLast ? `C: ${cLast.faults} faults, ${cLast.copies} copies` : '');
      // One tierstack op takes 0.1-1.5 s here, so a round is one op: at least 5 rounds a side.
      const measure = { ...ctx.measure, roundMs: Math.max(ctx.measure.roundMs, 300), rounds: Math.max(5, ctx.measure.rounds) };

      // 1. Lazy, the pages in the file tier (its files in the page cache), the CXL tier cold.
      {
        const ts = await tierstack({ prefetch: 'none', recordWorkingSet: false });
        ctx.log('restore: lazy (CXL cold) vs C on-demand');
        const op: TimedOp = async () => {
          await dropCxl();
          const r = await ts.request();
          return { ops: r.pages, ns: r.ns };
        };
        const res = await compareTimed(op, cOp, measure).finally(() => ts.handler.close());
        yield result('restore', 'first request: lazy vs C on-demand', 'C on-demand handler', res, `pages/s; CXL cold, pages in the file tier's page cache; ${base}; ${describe(ts.last())}; ${cDescribe()}; ${placement}; bar >= 1.0`);
      }
      // 2. Lazy, every stored page already in the CXL tier.
      {
        for (let i = 0; i < stored.length; i += 1024) await stack.get(ns, stored.slice(i, i + 1024));
        const held = await cxlHolds();
        const ts = await tierstack({ prefetch: 'none', recordWorkingSet: false });
        ctx.log(`restore: lazy (CXL hit: ${held}/${storedInRequest.length} of the request's stored pages) vs C on-demand`);
        const op: TimedOp = async () => {
          const r = await ts.request();
          return { ops: r.pages, ns: r.ns };
        };
        const res = await compareTimed(op, cOp, measure).finally(() => ts.handler.close());
        yield result('restore', 'first request: lazy (CXL hit) vs C on-demand', 'C on-demand handler', res, `pages/s; CXL held ${held}/${storedInRequest.length} of the request's stored pages; ${base}; ${describe(ts.last())}; ${cDescribe()}; ${placement}; bar >= 1.2`);
      }
      // 3. The recorded working set prefetched, the CXL tier cold again.
      {
        const ts = await tierstack({ prefetch: 'latest' });
        ctx.log('restore: lazy + prefetch (CXL cold) vs C on-demand');
        const op: TimedOp = async () => {
          await dropCxl();
          const r = await ts.request();
          return { ops: r.pages, ns: r.ns };
        };
        const res = await compareTimed(op, cOp, measure).finally(() => ts.handler.close());
        yield result('restore', 'first request: lazy+prefetch vs C on-demand', 'C on-demand handler', res, `pages/s; recorded working set prefetched, CXL cold, pages in the file tier's page cache; ${base}; ${describe(ts.last())}; ${cDescribe()}; ${placement}; bar >= 3.0`);
      }
    } finally {
      unpin();
      await stack.close();
    }
  } finally {
    c.stop();
  }
}
