/**
 * `tierstack demo`: the snapshot-restore demo (runRestoreDemo, below): a function-like memory
 * snapshot imported into the stack and restored three ways into a process that serves one
 * request, next to the handler Firecracker users run today (a C on-demand UFFD handler, one
 * page copy per fault from the memory file) serving the same process the same request. `tierstack demo --basic` (runDemo) is the original page round trip: a stack of the
 * tiers that exist, a few thousand pages written and read back (every byte checked), stats.
 */
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, MemoryTier, FileTier, type StoreStats, type PageStore, type TierStack } from '@tierstack/core';
import { makePages, pageMatches } from '@tierstack/core/testing';
import { rng, buildOnDemandHandler, OnDemandHandler, canPin, pinProcess, pinnedCommand, restoreCpus, threadPlacement } from '@tierstack/bench';

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

// ---------------------------------------------------------------------------------------------
// The snapshot-restore demo.

export interface RestoreDemoOptions {
  /** Snapshot size (default 256 MiB). */
  snapshotMiB?: number;
  /** Share of pages that are zero (default 30) and in the request's working set (default 10). */
  zeroPct?: number;
  workingSetPct?: number;
  /** CXL (or DRAM) cache size in MiB (default 64). */
  cacheMiB?: number;
  /** Keep the stack and files here instead of a temporary directory. */
  dir?: string;
  out?: (line: string) => void;
}

export interface RestoreDemoRow {
  mode: string;
  ttfrMs: number;
  faults: number;
  installed: number;
  prefetched: number;
  tiers: Array<{ tier: string; hits: number; requested: number }>;
  topHitRatio: number | undefined;
  /** Pages served per stack level by the native fault path ("cxl 9000, rdma 2000, JS path 0"). */
  levels?: string;
  touched: number;
  wrong: number;
}

/** The C on-demand handler's run of the same request (the anchor tierstack's modes are compared with). */
export interface OnDemandDemoRow {
  ttfrMs: number;
  faults: number;
  installed: number;
  touched: number;
  wrong: number;
}

interface DemoStack {
  stack: TierStack;
  describe: string;
  topIsCxl: boolean;
  close: () => Promise<void>;
}

/** The embedded defaults: a memfd CXL tier over a local memd donor; fall back tier by tier. */
async function demoStack(dir: string, cacheMiB: number, note: (l: string) => void): Promise<DemoStack> {
  const tiers: PageStore[] = [];
  const cleanups: Array<() => Promise<void>> = [];
  const names: string[] = [];
  let topIsCxl = false;
  const load = (name: string): Promise<Record<string, unknown>> => import(name) as Promise<Record<string, unknown>>;
  try {
    const cxl = await load('@tierstack/cxl');
    const CxlTier = cxl['CxlTier'] as { open(o: unknown): Promise<PageStore> };
    tiers.push(await CxlTier.open({ backing: { kind: 'memfd', size: cacheMiB << 20 }, name: 'cxl' }));
    names.push(`cxl (memfd ${cacheMiB} MiB)`);
    topIsCxl = true;
  } catch (err) {
    note(`  (CXL tier unavailable: ${(err as Error).message.split('\n')[0]}; using a DRAM cache)`);
    tiers.push(new MemoryTier({ maxSize: cacheMiB << 20, name: 'dram' }));
    names.push(`dram ${cacheMiB} MiB`);
  }
  try {
    const rdma = await load('@tierstack/rdma');
    const startMemd = rdma['startMemd'] as (o: unknown) => Promise<{ address(): { host: string; port: number }; close(): Promise<void> }>;
    const RdmaPoolTier = rdma['RdmaPoolTier'] as { open(o: unknown): Promise<PageStore> };
    const memd = await startMemd({ capacityBytes: 1 << 30, slabBytes: 64 << 20, provider: 'tcp' });
    cleanups.push(() => memd.close());
    const a = memd.address();
    tiers.push(await RdmaPoolTier.open({ donors: [`${a.host}:${a.port}`], name: 'rdma' }));
    names.push('rdma pool (1 local memd donor, tcp)');
  } catch (err) {
    note(`  (RDMA pool unavailable: ${(err as Error).message.split('\n')[0]}; using a FileTier)`);
    tiers.push(await FileTier.open({ dir: join(dir, 'file-tier') }));
    names.push('file');
  }
  const stack = createTierStack({ tiers });
  return {
    stack,
    describe: names.join(' → '),
    topIsCxl,
    close: async () => {
      await stack.close();
      for (const c of cleanups) await c().catch(() => undefined);
    },
  };
}

/** Writes a function-like memory image: zero runs, hot clusters (the request's working set), cold data. */
function writeFunctionImage(path: string, pages: number, zeroPct: number, wsPct: number): { working: number[]; zero: number } {
  const ps = 4096;
  const next = rng(0x5eed);
  const kind = new Uint8Array(pages); // 0 cold, 1 zero, 2 hot
  // Zero pages come in runs (untouched heap, bss, freed arenas).
  let zero = 0;
  while (zero < (pages * zeroPct) / 100) {
    const start = next() % pages;
    const len = 1 + (next() % 64);
    for (let p = start; p < Math.min(pages, start + len); p++) if (kind[p] === 0) (kind[p] = 1), zero++;
  }
  // The working set: clusters of 4-32 pages (objects the request walks), visited in a random order.
  const clusters: number[][] = [];
  let hot = 0;
  while (hot < (pages * wsPct) / 100) {
    const start = next() % pages;
    const len = 4 + (next() % 29);
    const c: number[] = [];
    for (let p = start; p < Math.min(pages, start + len); p++) if (kind[p] === 0) (kind[p] = 2), c.push(p), hot++;
    if (c.length) clusters.push(c);
  }
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(4096 * ps);
  for (let first = 0; first < pages; first += 4096) {
    const n = Math.min(4096, pages - first);
    randomFillSync(chunk, 0, n * ps);
    for (let k = 0; k < n; k++) if (kind[first + k] === 1) chunk.fill(0, k * ps, (k + 1) * ps);
    writeSync(fd, chunk, 0, n * ps, first * ps);
  }
  closeSync(fd);
  for (let i = clusters.length - 1; i > 0; i--) {
    const j = next() % (i + 1);
    [clusters[i], clusters[j]] = [clusters[j]!, clusters[i]!];
  }
  return { working: clusters.flat(), zero };
}


export async function runRestoreDemo(
  opts: RestoreDemoOptions = {},
): Promise<{ rows: RestoreDemoRow[]; onDemand: OnDemandDemoRow | undefined; verified: number; wrong: number }> {
  const out = opts.out ?? ((l: string) => console.log(l));
  const mib = opts.snapshotMiB ?? 256;
  const pages = (mib << 20) / 4096;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'tierstack-demo-'));
  mkdirSync(dir, { recursive: true });
  const { SnapshotCatalog, importRawFile, createRestoreHook, serveFirecracker } = await import('@tierstack/faas');
  const { buildFirecrackerTestClient, runFirecrackerTestClient } = await import('@tierstack/faas/testing');
  const client = buildFirecrackerTestClient(dir);
  const ds = await demoStack(dir, opts.cacheMiB ?? 64, out);
  const rows: RestoreDemoRow[] = [];
  let onDemand: OnDemandDemoRow | undefined;
  let unpin = (): void => undefined;
  try {
    out(`tierstack demo: restoring a ${mib} MiB function snapshot from [${ds.describe}]`);
    const memFile = join(dir, 'function.mem');
    const t0 = performance.now();
    const { working, zero } = writeFunctionImage(memFile, pages, opts.zeroPct ?? 30, opts.workingSetPct ?? 10);
    const wsFile = join(dir, 'request.pages');
    writeFileSync(wsFile, working.join('\n'));
    out(`  snapshot: ${pages} pages — ${zero} zero, ${working.length} in the request's working set, the rest cold (written in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    const catalog = new SnapshotCatalog(ds.stack);
    const imp = await importRawFile(catalog, 'demo-fn', memFile, { replace: true, progressBar: process.stderr.isTTY === true });
    out(`  imported: ${imp.storedPages} pages stored, ${imp.zeroPages} zero pages elided, ${(imp.ms / 1000).toFixed(1)} s`);

    // Placement: the handler side (every thread of this process for tierstack, the one thread of
    // the C handler) on one CPU and the client pinned too, the same for every row.
    let cpus: ReturnType<typeof restoreCpus>;
    try {
      cpus = restoreCpus();
      if (cpus && !canPin()) throw new Error('taskset (util-linux) is missing');
      if (cpus) unpin = pinProcess([cpus.handler]);
    } catch (err) {
      out(`  (not pinning handler and client: ${(err as Error).message})`);
      cpus = undefined;
    }
    const clientCommand = (args: string[]): [string, string[]] => pinnedCommand(client, args, cpus?.client);

    const modes = [
      { mode: 'eager (copy all, then run)', restore: { eager: true } },
      { mode: 'lazy (first touch)', restore: { prefetch: 'none' as const, recordWorkingSet: true } },
      { mode: 'lazy + working-set prefetch', restore: { prefetch: 'latest' as const } },
    ];
    const hook = createRestoreHook(ds.stack, { catalog, faultAround: 16 });
    for (const [i, m] of modes.entries()) {
      const socketPath = join(dir, `fc-${i}.sock`);
      let end: ((s: import('@tierstack/faas').RestoreStats) => void) | undefined;
      const ended = new Promise<import('@tierstack/faas').RestoreStats>((r) => (end = r));
      let started: ((pid: number) => void) | undefined;
      const ready = new Promise<number>((r) => (started = r));
      const handler = await serveFirecracker(hook, {
        socketPath,
        snapshotId: 'demo-fn',
        restore: m.restore,
        // With a working set, the function resumes once it is installed (REAP: one bulk fetch,
        // installs without waking, then run) — the time to first response includes it. Resuming
        // at once would race the prefetch thread against the request's own faults.
        onRestore: (h, pid) => {
          if ('prefetch' in m.restore && m.restore.prefetch === 'latest') void h.prefetched.then(() => started!(pid), () => started!(pid));
          else started!(pid);
        },
        onRestoreEnd: (s) => end!(s),
      });
      try {
        // The "function": a process that maps the memory (like Firecracker), hands over the uffd,
        // waits to be resumed, then serves one request that walks its working set.
        const run = runFirecrackerTestClient(...clientCommand([socketPath, memFile, '--touch-file', wsFile, '--wait-signal']));
        await Promise.race([ready, run.result]);
        run.child.kill('SIGUSR1');
        const r = await run.result;
        if (r.error) throw new Error(`the function process failed: ${r.error}`);
        const s = await ended;
        const top = s.tiers[0];
        // Pages the engine fetched natively, per stack level (the tiers with a C ABI handle, top
        // down, then the JS path): the JS-side tier counters above do not see those.
        const byLevel = (s as { pagesByLevel?: number[] }).pagesByLevel ?? [];
        const jsLevel = ds.stack.nativeChain().jsLevel;
        const nativeServed = byLevel.reduce((n, x) => n + x, 0);
        const levels = byLevel.map((n, i) => `${i < jsLevel ? ds.stack.tiers[i]!.name : 'JS path'} ${n}`).join(', ');
        rows.push({
          mode: m.mode,
          ttfrMs: (r.t_done! - r.t_connect!) / 1e6,
          faults: s.faults,
          installed: s.pagesInstalled,
          prefetched: s.prefetched,
          tiers: s.tiers,
          topHitRatio: top && top.requested > 0 ? top.hits / top.requested : jsLevel > 0 && nativeServed > 0 ? (byLevel[0] ?? 0) / nativeServed : undefined,
          ...(nativeServed > 0 ? { levels } : {}),
          touched: r.pages ?? 0,
          wrong: r.mismatches ?? 0,
        });
      } finally {
        await handler.close();
      }
    }
    // The anchor: the C on-demand handler serves the same client the same request from the memory file.
    let cThreads = '';
    try {
      const exe = buildOnDemandHandler(dir);
      const c = await OnDemandHandler.start(exe, { socketPath: join(dir, 'c-ondemand.sock'), memFile, cpu: cpus?.handler });
      try {
        cThreads = threadPlacement(c.pid);
        const run = runFirecrackerTestClient(...clientCommand([c.socketPath, memFile, '--touch-file', wsFile, '--wait-signal']));
        await Promise.race([c.serving(), run.result]);
        run.child.kill('SIGUSR1');
        const r = await run.result;
        if (r.error) throw new Error(`the function process failed: ${r.error}`);
        const s = await c.done();
        onDemand = { ttfrMs: (r.t_done! - r.t_connect!) / 1e6, faults: s.faults, installed: s.copies + s.zeropages, touched: r.pages ?? 0, wrong: r.mismatches ?? 0 };
      } finally {
        c.stop();
      }
    } catch (err) {
      out(`  (C on-demand handler not run: ${(err as Error).message.split('\n')[0]})`);
    }
    const placement = cpus
      ? `handler on CPU ${cpus.handler} (tierstack: ${threadPlacement()}; C handler: ${cThreads || '-'}), client on CPU ${cpus.client}`
      : 'unpinned';
    unpin();
    unpin = () => undefined;

    out('');
    out(restoreTable(rows, ds.topIsCxl ? 'CXL hit %' : 'cache hit %', onDemand));
    const verified = rows.reduce((n, r) => n + r.touched - r.wrong, 0) + (onDemand ? onDemand.touched - onDemand.wrong : 0);
    const wrong = rows.reduce((n, r) => n + r.wrong, 0) + (onDemand?.wrong ?? 0);
    out('');
    out(
      wrong === 0
        ? `every touched page was byte-correct (${verified} page checks against the memory file)`
        : `${wrong} touched pages were WRONG`,
    );
    const [eager, lazy, pre] = rows;
    if (eager && lazy && pre) {
      out(`lazy restore answered ${(eager.ttfrMs / lazy.ttfrMs).toFixed(1)}x sooner than eager; working-set prefetch ${(lazy.ttfrMs / pre.ttfrMs).toFixed(1)}x sooner than lazy`);
      if (onDemand) {
        const vs = (r: RestoreDemoRow): string => {
          const x = onDemand!.ttfrMs / r.ttfrMs;
          return x >= 1 ? `${x.toFixed(2)}x faster` : `${(1 / x).toFixed(2)}x slower`;
        };
        out(
          `against the C on-demand handler (Firecracker's example handler: one page copy per fault from the memory file, ${onDemand.ttfrMs.toFixed(1)} ms): ` +
            `tierstack lazy ${vs(lazy)}, lazy + prefetch ${vs(pre)} (same client, same request, one run)`,
        );
      }
    }
    out(`placement: ${placement}`);
    return { rows, onDemand, verified, wrong };
  } finally {
    unpin();
    await ds.close();
    if (!opts.dir) rmSync(dir, { recursive: true, force: true });
  }
}

export function restoreTable(rows: RestoreDemoRow[], hitLabel: string, onDemand?: OnDemandDemoRow): string {
  const head = ['restore', 'time to first response', 'faults', 'pages installed', 'prefetched', 'pages per tier (JS path: served/asked; native: served)', hitLabel, 'touched ok'];
  const table = [head];
  if (onDemand) {
    table.push([
      'C on-demand handler (anchor)',
      `${onDemand.ttfrMs.toFixed(1)} ms`,
      String(onDemand.faults),
      String(onDemand.installed),
      '0',
      'memory file (page cache)',
      '-',
      `${onDemand.touched - onDemand.wrong}/${onDemand.touched}`,
    ]);
  }
  for (const r of rows) {
    table.push([
      r.mode,
      `${r.ttfrMs.toFixed(1)} ms`,
      String(r.faults),
      String(r.installed),
      String(r.prefetched),
      [
        r.tiers.some((t) => t.requested > 0) || !r.levels ? r.tiers.map((t) => `${t.tier} ${t.hits}/${t.requested}`).join(', ') : '',
        r.levels ? `native: ${r.levels}` : '',
      ]
        .filter(Boolean)
        .join('; '),
      r.topHitRatio === undefined ? '-' : `${(100 * r.topHitRatio).toFixed(1)}`,
      `${r.touched - r.wrong}/${r.touched}`,
    ]);
  }
  const widths = head.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
  return table.map((row) => row.map((cell, c) => cell.padEnd(widths[c]!)).join('  ')).join('\n');
}
