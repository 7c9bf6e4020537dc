/**
 * userfaultfd fault service: @tierstack/uffd regions vs a C handler doing single-page
 * UFFDIO_COPY from plain memory (packages/uffd/bench/uffd_baseline.c, built here with gcc),
 * measured in the same run with the same thread placement: the fault-serving thread (engine
 * fault thread / C handler thread) and the touching threads pinned with sched_setaffinity, by
 * default all to CPU 1 (see HANDLER_CPU below; the JS thread is not pinned).
 * One op = drop a 16 MiB chunk of the region (MADV_DONTNEED) and read one word of each of its
 * 4096 pages (sequential or random order within the chunk), cycling over a 256 MiB region.
 * Cases (bars from issues 7 and 14):
 *   - native tier, single page: pages in CxlTier(memfd) served on the fault thread via the C ABI
 *     (>= 0.95x the C handler), sequential and random;
 *   - native tier, fault-around 64, sequential (>= 5x the single-page C handler in pages/s), and
 *     the same touch phase against the first-touch limit (first_touch.c: what a thread pays to
 *     touch pages already installed for it — on this VM's paging, ~7-9 us per page);
 *   - JS path (MemoryTier, batched hand-off) with 8 concurrent touchers (>= 0.5x the C handler
 *     serving the same 8 touchers).
 */
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { createTierStack, MemoryTier, type PageStore } from '@tierstack/core';
import { compare, compareTimed, result, type Suite, type TimedOp } from '../harness.js';
import { uffdBenchDir } from '../ondemand.js';

const PAGE = 4096;
const REGION_PAGES = 65536; // 256 MiB
const CHUNK = 4096; // pages per op (16 MiB): per-op overheads (thread start, madvise, promise) stay small
// Placement: the fault-serving thread and the touchers share one CPU by default (a fault is then
// a switch on that CPU, not a cross-CPU wake-up, which on a shared VM costs far more and varies
// with the neighbours' load). TIERSTACK_BENCH_UFFD_CPUS="<handler>,<toucher>" overrides it.
const [HANDLER_CPU, TOUCHER_CPU] = (process.env.TIERSTACK_BENCH_UFFD_CPUS ?? '1,1').split(',').map(Number) as [number, number];
const NS = 'bench-uffd';

class CBaseline {
  private readonly lines: AsyncIterator<string>;
  constructor(private readonly child: ChildProcessWithoutNullStreams) {
    this.lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  }
  static async start(exe: string): Promise<CBaseline> {
    const child = spawn(exe, [String(REGION_PAGES), String(HANDLER_CPU), String(TOUCHER_CPU)], { stdio: ['pipe', 'pipe', 'pipe'] });
    const b = new CBaseline(child);
    const first = await b.lines.next();
    if (first.value !== 'ready') throw new Error(`uffd baseline did not start: ${String(first.value)}`);
    return b;
  }
  async run(first: number, count: number, mode: 'seq' | 'rand', touchers: number): Promise<void> {
    this.child.stdin.write(`run ${first} ${count} ${mode} ${touchers}\n`);
    const line = await this.lines.next();
    if (typeof line.value !== 'string' || !line.value.startsWith('done')) throw new Error(`uffd baseline: ${String(line.value)}`);
  }
  stop(): void {
    this.child.stdin.end();
    this.child.kill();
  }
}

function permutation(n: number, seed: number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  let x = seed >>> 0 || 1;
  for (let i = n - 1; i > 0; i--) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const k = x % (i + 1);
    [a[i], a[k]] = [a[k]!, a[i]!];
  }
  return a;
}

async function fill(stores: PageStore[]): Promise<void> {
  const data = Buffer.alloc(256 * PAGE);
  for (let p = 0; p < REGION_PAGES; p += 256) {
    randomFillSync(data);
    const pages = Array.from({ length: 256 }, (_, k) => p + k);
    for (const s of stores) await s.put(NS, pages, data);
  }
}

export const uffdSuite: Suite = {
  name: 'uffd',
  description: 'uffd fault service (native tier, fault-around, JS path) vs a C single-page UFFDIO_COPY handler',
  async *run(ctx) {
    const { createUffdEngine } = await import('@tierstack/uffd');
    const { touchPages, pinCurrentThread } = await import('@tierstack/uffd/testing');
    const exe = join(ctx.tmpDir, 'uffd_baseline');
    execFileSync('gcc', ['-O2', '-pthread', '-o', exe, join(uffdBenchDir, 'uffd_baseline.c')]);
    const c = await CBaseline.start(exe);
    const firstTouchExe = join(ctx.tmpDir, 'first_touch');
    execFileSync('gcc', ['-O2', '-o', firstTouchExe, join(uffdBenchDir, 'first_touch.c')]);

    // The native tier: CxlTier on a memfd when @tierstack/cxl is built (4x the pages, so the
    // set-associative index keeps nearly all of them), backed by a MemoryTier for the rest.
    const memory = new MemoryTier({ maxSize: (REGION_PAGES + 1024) * PAGE });
    let native: PageStore | undefined;
    let nativeName = 'CxlTier(memfd)';
    try {
      const { CxlTier } = await import('@tierstack/cxl');
      native = await CxlTier.open({ backing: { kind: 'memfd', size: 4 * REGION_PAGES * PAGE } });
    } catch (err) {
      const { NativeTestTier } = await import('@tierstack/uffd/testing');
      native = new NativeTestTier();
      nativeName = 'native test store (CXL tier not built)';
      ctx.log(`uffd: CxlTier unavailable (${(err as Error).message}); using the in-process native test store`);
    }
    ctx.log('uffd: loading 256 MiB of pages into the tiers');
    await fill([native, memory]);
    const nativeStack = createTierStack({ tiers: [native, memory], closeTiers: false });
    const jsStack = createTierStack({ tiers: [memory], closeTiers: false });
    const nativeEngine = createUffdEngine({ stack: nativeStack, faultThreads: 1, cpus: [HANDLER_CPU] });
    const jsEngine = createUffdEngine({ stack: jsStack, faultThreads: 1, cpus: [HANDLER_CPU] });
    const perm = permutation(CHUNK, 0x5eed);
    const seqOrder = Array.from({ length: CHUNK }, (_, i) => i);
    // Fault service on a shared VM is noisy: at least 5 alternating rounds per side.
    const measure = { ...ctx.measure, rounds: Math.max(5, ctx.measure.rounds) };
    try {
      const regionCase = (engine: typeof nativeEngine, faultAround: number, mode: 'seq' | 'rand', touchers: number) => {
        const region = engine.createRegion({ size: REGION_PAGES * PAGE, namespace: NS, faultAround, missing: 'strict' });
        let next = 0;
        const op = async (): Promise<number> => {
          const first = next;
          next = (next + CHUNK) % REGION_PAGES;
          region.discard(first, CHUNK);
          const order = (mode === 'seq' ? seqOrder : perm).map((i) => first + i);
          const parts = Array.from({ length: touchers }, (_, t) => order.slice((CHUNK * t) / touchers, (CHUNK * (t + 1)) / touchers));
          await Promise.all(parts.map((p) => touchPages(region.address, p, PAGE, { cpu: TOUCHER_CPU })));
          return CHUNK;
        };
        return { region, op };
      };
      let cNext = 0;
      const cOp = (mode: 'seq' | 'rand', touchers: number) => async (): Promise<number> => {
        const first = cNext;
        cNext = (cNext + CHUNK) % REGION_PAGES;
        await c.run(first, CHUNK, mode, touchers);
        return CHUNK;
      };
      const placement = `fault thread CPU ${HANDLER_CPU}, touchers CPU ${TOUCHER_CPU}`;

      for (const mode of ['seq', 'rand'] as const) {
        const { region, op } = regionCase(nativeEngine, 1, mode, 1);
        ctx.log(`uffd native ${mode} fault-around 1`);
        const m = await compare(op, cOp(mode, 1), measure);
        const s = region.stats();
        yield result('uffd', `native ${mode} fa=1`, 'C 1-page UFFDIO_COPY', m, `${nativeName}; ${placement}; level0 ${s.pagesByLevel[0] ?? 0}/${s.pagesInstalled}; bar >= 0.95`);
        await region.close();
      }
      {
        const { region, op } = regionCase(nativeEngine, 64, 'seq', 1);
        ctx.log('uffd native seq fault-around 64');
        const m = await compare(op, cOp('seq', 1), measure);
        yield result('uffd', 'native seq fa=64', 'C 1-page UFFDIO_COPY', m, `${nativeName}; ${placement}; ${region.stats().faults} faults; bar >= 5`);
        // What bounds it: a thread's first access to each page installed for it (no fault, no
        // handler: the kernel populated them). On a VM with shadow/paravirtual paging this traps
        // into the hypervisor per page; no handler delivers pages faster than that.
        ctx.log('uffd native seq fault-around 64 vs the first-touch limit');
        let next = 0;
        const touchOnly: TimedOp = async () => {
          const first = next;
          next = (next + CHUNK) % REGION_PAGES;
          region.discard(first, CHUNK);
          const t0 = process.hrtime.bigint();
          await touchPages(region.address, seqOrder.map((i) => first + i), PAGE, { cpu: TOUCHER_CPU });
          return { ops: CHUNK, ns: Number(process.hrtime.bigint() - t0) };
        };
        const limit: TimedOp = async () => {
          const [pages, ns] = execFileSync(firstTouchExe, [String(CHUNK), String(TOUCHER_CPU), '1'], { encoding: 'utf8' }).trim().split(' ').map(Number);
          return { ops: pages!, ns: ns! };
        };
        const lim = await compareTimed(touchOnly, limit, measure);
        yield result('uffd', 'native seq fa=64 vs first-touch limit', 'first touch of installed pages (C)', lim, `touch phase only; ${placement}; the ceiling of any handler here (1.0 = at the limit)`);
        await region.close();
      }
      for (const fa of [1, 16]) {
        const { region, op } = regionCase(jsEngine, fa, 'rand', 8);
        ctx.log(`uffd JS path, 8 touchers, fault-around ${fa}`);
        // The JS path adds the JS thread to the fault's journey: it shares the handler's CPU too,
        // so a hand-off is a switch on one CPU rather than two cross-CPU wake-ups.
        pinCurrentThread([HANDLER_CPU]);
        let m;
        try {
          m = await compare(op, cOp('rand', 8), measure);
        } finally {
          pinCurrentThread([]);
        }
        const s = region.stats();
        yield result('uffd', `js-path rand fa=${fa} 8 touchers`, 'C 1-page, 8 touchers', m, `MemoryTier via batched JS hand-off, ${s.faults} faults; ${placement}, JS thread CPU ${HANDLER_CPU}; bar >= 0.5`);
        await region.close();
      }
    } finally {
      c.stop();
      await nativeEngine.close();
      await jsEngine.close();
      await nativeStack.close();
      await jsStack.close();
      await native.close();
      await memory.close();
    }
  },
};
