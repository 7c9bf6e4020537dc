/**
 * `tierstack run` (big allocations of an unmodified program served from the tier stack under a
 * residency budget) against BigMaac's approach and against plain malloc, in one run:
 *
 *   - tierstack:  run_pass (packages/interposer/bench/run_pass.c) mallocs an array 4x the budget
 *                 under `tierstack run --budget 64M`, in a cgroup v1 memory limit of budget + 8 MiB.
 *                 Two stacks: one FileTier with O_DIRECT on the local disk (pages really leave for
 *                 the disk, as the baseline's do: the headline case), and a DRAM tier (CxlTier on a
 *                 memfd, outside the program's limit — where pages go on a machine with a memory
 *                 pool, CXL or RDMA: what the tier stack is for).
 *   - BigMaac:    the same program maps the array from an unlinked file on the same disk
 *                 (MAP_SHARED), in the same cgroup limit: the kernel pages it.
 *   - plain:      the same program, plain malloc, no preload and no limit.
 *
 * Each round runs the two disk-heavy sides in alternating order, each after a 1 s pause.
 * The program times its own passes (init: write every page; sequential: every page in order, read
 * its 512 words and write one; random: RAND_PAGES pages by xorshift, same work), so start-up and
 * teardown stay out. Rounds alternate the sides; the medians are reported. Every side must compute
 * the same checksum of what it read, or the suite fails.
 * Bar (issue 17): sequential >= 0.7x the file mapping under the same limit; the random pass is reported.
 * A last case measures what the library costs allocations it passes through: small malloc/free/
 * calloc/realloc in a program connected to the server (one big allocation made) vs without it.
 */
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createTierStack, FileTier, type TierStack } from '@tierstack/core';
import { median, result, type Measurement, type Suite } from '../harness.js';

const MiB = 2 ** 20;
const BUDGET = 64 * MiB;
const ARRAY_MIB = 256; // 4x the budget
const LIMIT = BUDGET + 8 * MiB; // the program's own memory beyond its big array
const RAND_PAGES = 2048; // the kernel's file mapping needs ~5-7 ms per random page under the limit
const CG_ROOT = '/sys/fs/cgroup/memory';
const SMALL_OPS = 5_000_000;

interface Pass {
  pages: number;
  rand_pages: number;
  init_ns: number;
  seq_ns: number;
  rand_ns: number;
  check: string;
}

function parsePass(out: string, who: string): Pass {
  const line = out.split('\n').find((l) => l.startsWith('{'));
  if (!line) throw new Error(`run bench: ${who} printed no result:\n${out}`);
  return JSON.parse(line) as Pass;
}

function spawnOut(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env } : {}) });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    c.once('error', reject);
    c.once('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

const measurement = (rates: number[]): Measurement => {
  const m = median(rates);
  return { opsPerSec: m, p50Us: 1e6 / m, p99Us: 1e6 / Math.min(...rates), calls: rates.length };
};

export const runSuite: Suite = {
  name: 'run',
  description: 'tierstack run (LD_PRELOAD, big allocations in the stack under a budget) vs an mmap of an unlinked file under the same cgroup limit (BigMaac), and vs plain malloc',
  async *run(ctx) {
    if (process.getuid?.() !== 0 || !existsSync(join(CG_ROOT, 'memory.limit_in_bytes'))) {
      ctx.log('run: skipped (needs root and the cgroup v1 memory controller at /sys/fs/cgroup/memory)');
      return;
    }
    const { runWithTierStack, sharedRegionsSupportedHere } = await loadInterposer();
    if (!sharedRegionsSupportedHere()) {
      ctx.log('run: skipped (this kernel cannot serve shared-memory userfaultfd regions)');
      return;
    }
    const pkg = dirname(createRequire(import.meta.url).resolve('@tierstack/interposer/package.json'));
    const exe = join(ctx.tmpDir, 'run_pass');
    execFileSync('gcc', ['-O2', '-o', exe, join(pkg, 'bench', 'run_pass.c')]);
    const fileDir = join(ctx.tmpDir, 'bigmaac');
    mkdirSync(fileDir);
    const cg = join(CG_ROOT, `tierstack-bench-run-${process.pid}`);
    mkdirSync(cg);
    writeFileSync(join(cg, 'memory.limit_in_bytes'), String(LIMIT));
    const inCg = (cmd: string): string[] => ['-c', `echo $$ > ${cg}/cgroup.procs && exec ${cmd}`];
    const file = await FileTier.open({ dir: join(ctx.tmpDir, 'file-tier'), direct: true });
    const stack = createTierStack({ tiers: [file] });
    let dramStack: TierStack | undefined;
    try {
      const { CxlTier } = await import('@tierstack/cxl');
      dramStack = createTierStack({ tiers: [await CxlTier.open({ backing: { kind: 'memfd', size: 2 * ARRAY_MIB * MiB }, name: 'dram' })] });
    } catch (err) {
      ctx.log(`run: no DRAM-tier case (${(err as Error).message})`);
    }
    const load0 = loadavg();
    const rounds = Math.max(5, ctx.measure.rounds); // whole-program rounds on a shared VM: at least 5 a side
    const sides: Record<'bigmaac' | 'tierstack' | 'dram' | 'plain', Pass[]> = { bigmaac: [], tierstack: [], dram: [], plain: [] };
    const peak: Record<'bigmaac' | 'tierstack', number[]> = { bigmaac: [], tierstack: [] };
    const small: Record<'preloaded' | 'plain', number[]> = { preloaded: [], plain: [] };
    const smallRate = (out: string): number => {
      const j = JSON.parse(out.split('\n').find((l) => l.startsWith('{'))!) as { small_ops: number; small_ns: number };
      return j.small_ops / (j.small_ns / 1e9);
    };
    // A short pause before a disk-heavy side: the previous side's writes finish landing first.
    const settle = (): Promise<void> => new Promise((res) => setTimeout(res, 1000));
    const peakOf = (): number => {
      const v = Number(readFileSync(join(cg, 'memory.max_usage_in_bytes'), 'utf8'));
      writeFileSync(join(cg, 'memory.max_usage_in_bytes'), '0');
      return v;
    };
    try {
      // Warm-up (not measured): one smaller pass a side, so that the JS side of the tier stack (the
      // file tier's write path) runs JIT-compiled in the measured rounds, as in a long-running server.
      ctx.log('run: warm-up');
      await spawnOut('sh', inCg(`${exe} file ${ARRAY_MIB / 2} 256 ${fileDir} 1`));
      await runWithTierStack({ stack, command: 'sh', args: inCg(`${exe} malloc ${ARRAY_MIB / 2} 256 1`), budget: BUDGET, stdio: ['ignore', 'ignore', 'inherit'] });
      peakOf();
      for (let r = 0; r < rounds; r++) {
        const seed = String(1000 + r);
        const underFile = async (): Promise<void> => {
          ctx.log(`run: round ${r + 1}/${rounds}: file mapping (BigMaac) under the limit`);
          await settle();
          sides.bigmaac.push(parsePass(await spawnOut('sh', inCg(`${exe} file ${ARRAY_MIB} ${RAND_PAGES} ${fileDir} ${seed}`)), 'the file mapping'));
          peak.bigmaac.push(peakOf());
        };
        const underTierstack = async (st: TierStack, label: string): Promise<Pass> => {
          ctx.log(`run: round ${r + 1}/${rounds}: tierstack run under the limit (${label})`);
          let out = '';
          let closed: Promise<void> = Promise.resolve();
          const res = await runWithTierStack({
            stack: st,
            command: 'sh',
            args: inCg(`${exe} malloc ${ARRAY_MIB} ${RAND_PAGES} ${seed}`),
            budget: BUDGET,
            stdio: ['ignore', 'pipe', 'inherit'],
            onStart: ({ child }) => {
              child.stdout!.on('data', (d) => (out += d));
              closed = new Promise((res) => child.once('close', () => res()));
            },
          });
          await closed;
          if (res.status !== 0) throw new Error(`run bench: tierstack side (${label}) exited ${res.status}`);
          return parsePass(out, `tierstack run (${label})`);
        };
        const underTierstackFile = async (): Promise<void> => {
          await settle();
          sides.tierstack.push(await underTierstack(stack, 'FileTier O_DIRECT'));
          peak.tierstack.push(peakOf());
        };
        // Both disk-heavy sides go first in turn (the one after inherits the other's disk writes in flight).
        if (r % 2 === 0) {
          await underFile();
          await underTierstackFile();
        } else {
          await underTierstackFile();
          await underFile();
        }
        if (dramStack) {
          sides.dram.push(await underTierstack(dramStack, 'DRAM tier'));
          peakOf();
        }
        ctx.log(`run: round ${r + 1}/${rounds}: plain malloc, no limit`);
        sides.plain.push(parsePass(await spawnOut(exe, ['malloc', String(ARRAY_MIB), String(RAND_PAGES), seed]), 'plain malloc'));
        let smallOut = '';
        let closed: Promise<void> = Promise.resolve();
        await runWithTierStack({
          stack,
          command: exe,
          args: ['small', String(SMALL_OPS)],
          stdio: ['ignore', 'pipe', 'inherit'],
          onStart: ({ child }) => {
            child.stdout!.on('data', (d) => (smallOut += d));
            closed = new Promise((res) => child.once('close', () => res()));
          },
        });
        await closed;
        small.preloaded.push(smallRate(smallOut));
        small.plain.push(smallRate(await spawnOut(exe, ['small', String(SMALL_OPS)])));
        const pps = (p: Pass): string => `${Math.round(p.pages / (p.seq_ns / 1e9))} seq / ${Math.round(p.rand_pages / (p.rand_ns / 1e9))} rand pages/s`;
        ctx.log(`run: round ${r + 1}: file ${pps(sides.bigmaac[r]!)}; tierstack ${pps(sides.tierstack[r]!)}${dramStack ? `; tierstack, DRAM tier ${pps(sides.dram[r]!)}` : ''}`);
        const checks = new Set([sides.bigmaac[r]!.check, sides.tierstack[r]!.check, sides.plain[r]!.check, ...(dramStack ? [sides.dram[r]!.check] : [])]);
        if (checks.size !== 1) throw new Error(`run bench: the sides read different data in round ${r + 1}: ${[...checks].join(' ')}`);
      }
    } finally {
      await stack.close();
      await dramStack?.close();
      try {
        rmdirSync(cg);
      } catch {
        /* a straggler still in it: left for the next run's cleanup */
      }
    }
    const load1 = loadavg();
    const rate = (ps: Pass[], k: 'seq' | 'rand' | 'init'): number[] =>
      ps.map((p) => (k === 'rand' ? p.rand_pages : p.pages) / ((k === 'seq' ? p.seq_ns : k === 'rand' ? p.rand_ns : p.init_ns) / 1e9));
    const mib = (b: number[]): string => `${(median(b) / MiB).toFixed(0)} MiB`;
    const common = `array ${ARRAY_MIB} MiB = 4x the budget ${BUDGET / MiB} MiB; cgroup v1 limit ${LIMIT / MiB} MiB (peak usage: tierstack ${mib(peak.tierstack)}, file ${mib(peak.bigmaac)}); tierstack stack: FileTier O_DIRECT on the local disk; load ${load0.map((l) => l.toFixed(1)).join('/')} -> ${load1.map((l) => l.toFixed(1)).join('/')}`;
    const cmp = (k: 'seq' | 'rand' | 'init', base: 'bigmaac' | 'plain', side: 'tierstack' | 'dram' = 'tierstack') => ({
      case: measurement(rate(sides[side], k)),
      baseline: measurement(rate(sides[base], k)),
    });
    yield result('run', 'sequential pass, same limit (pages/s)', 'mmap of an unlinked file (BigMaac)', cmp('seq', 'bigmaac'), `bar >= 0.7x; ${common}`);
    yield result('run', `random pass (${RAND_PAGES} pages), same limit`, 'mmap of an unlinked file (BigMaac)', cmp('rand', 'bigmaac'), common);
    yield result('run', 'init: first write of every page, same limit', 'mmap of an unlinked file (BigMaac)', cmp('init', 'bigmaac'), common);
    if (dramStack) {
      const dram = common.replace('tierstack stack: FileTier O_DIRECT on the local disk', 'tierstack stack: a DRAM tier (CxlTier on a memfd) outside the limit');
      yield result('run', 'sequential pass, same limit, DRAM tier (pages/s)', 'mmap of an unlinked file (BigMaac)', cmp('seq', 'bigmaac', 'dram'), dram);
      yield result('run', `random pass (${RAND_PAGES} pages), same limit, DRAM tier`, 'mmap of an unlinked file (BigMaac)', cmp('rand', 'bigmaac', 'dram'), dram);
    }
    yield result('run', 'sequential pass (pages/s)', 'plain malloc, no limit', cmp('seq', 'plain'), common);
    yield result('run', `random pass (${RAND_PAGES} pages)`, 'plain malloc, no limit', cmp('rand', 'plain'), common);
    yield result(
      'run',
      'small malloc/free/calloc/realloc passed through (library loaded and connected)',
      'the same program without the library',
      { case: measurement(small.preloaded), baseline: measurement(small.plain) },
      `${SMALL_OPS} ops of 16..4096 bytes; the library adds one size comparison on allocation and one range comparison on free`,
    );
  },
};

async function loadInterposer() {
  const m = await import('@tierstack/interposer');
  const { sharedRegionsSupported } = await import('@tierstack/uffd');
  return { runWithTierStack: m.runWithTierStack, sharedRegionsSupportedHere: () => sharedRegionsSupported().supported };
}
