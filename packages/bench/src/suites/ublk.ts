/**
 * The block front-end against the kernel's own loop device, on the host: fio 4 KiB random
 * read/write (50/50) at queue depth 32 with direct I/O, through a tierstack fuse-loop device
 * (stack: one MemoryTier, so the device is a RAM disk behind the whole tierstack path: loop →
 * FUSE → native handler → StackClient → JS stack) and through a plain loop device on a tmpfs
 * file (the kernel-only RAM-disk baseline). Rounds alternate baseline/case; medians reported.
 * (The ublk transport needs a kernel with ublk_drv: measured in the QEMU guest, see BENCHMARKS.md.)
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { createTierStack, MemoryTier } from '@tierstack/core';
import { createBlockDevice, type BlockDevice } from '@tierstack/ublk';
import { CxlTier } from '@tierstack/cxl';
import { result, type Measurement, type Suite } from '../harness.js';

const run = promisify(execFile);
const SIZE = 64 << 20;

interface FioSide {
  iops: number;
  p50Us: number;
  p99Us: number;
}

interface FioJob {
  jobs: Array<Record<'read' | 'write', { iops: number; clat_ns: { percentile: Record<string, number> } }>>;
}

function fioSide(json: string): FioSide {
  const job = (JSON.parse(json) as FioJob).jobs[0]!;
  const pct = (k: string): number => ((job.read.clat_ns.percentile[k] ?? 0) + (job.write.clat_ns.percentile[k] ?? 0)) / 2 / 1000;
  return { iops: job.read.iops + job.write.iops, p50Us: pct('50.000000'), p99Us: pct('99.000000') };
}

async function fio(device: string, seconds: number): Promise<FioSide> {
  const { stdout } = await run(
    'fio',
    ['--name=b', `--filename=${device}`, '--rw=randrw', '--rwmixread=50', '--bs=4k', '--iodepth=32', '--ioengine=libaio', '--direct=1',
      `--size=${SIZE}`, `--runtime=${seconds}`, '--time_based', '--output-format=json', '--randrepeat=1'],
    { timeout: (seconds + 30) * 1000, maxBuffer: 16 << 20 },
  );
  return fioSide(stdout);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const combine = (s: FioSide[]): Measurement => ({
  opsPerSec: median(s.map((x) => x.iops)),
  p50Us: median(s.map((x) => x.p50Us)),
  p99Us: median(s.map((x) => x.p99Us)),
  calls: s.length,
});

export const ublkSuite: Suite = {
  name: 'ublk',
  description: 'fio 4 KiB randrw QD32: tierstack fuse-loop device vs a plain loop device on a tmpfs file',
  async *run(ctx) {
    if (!existsSync('/dev/fuse') || process.getuid?.() !== 0) {
      ctx.log('ublk suite skipped: needs root and /dev/fuse');
      return;
    }
    const seconds = Math.max(1, Math.round(ctx.measure.roundMs / 1000) || 1);
    // Baseline: a loop device (direct I/O) on a tmpfs file.
    const shm = existsSync('/dev/shm') ? '/dev/shm' : ctx.tmpDir;
    const img = join(shm, `tierstack-bench-${process.pid}.img`);
    writeFileSync(img, Buffer.alloc(0));
    await run('truncate', ['-s', String(SIZE), img]);
    const loop = (await run('losetup', ['-f', '--show', '--direct-io=on', img])).stdout.trim();
    // Two stacks: a CxlTier on a memfd (native C ABI: served on the FUSE threads, no JS) and a
    // MemoryTier (every request through the batched hand-off to the JS thread).
    const cases: Array<{ label: string; open: () => Promise<{ close(): Promise<void> } & Parameters<typeof createTierStack>[0]['tiers'][number]> }> = [
      { label: 'fuse-loop [CxlTier memfd, native path]', open: async () => CxlTier.open({ backing: { kind: 'memfd', size: SIZE * 4 } }) },
      { label: 'fuse-loop [MemoryTier, JS path]', open: async () => new MemoryTier({ maxSize: SIZE * 2 }) },
    ];
    try {
      await run('dd', ['if=/dev/zero', `of=${loop}`, 'bs=1M', `count=${SIZE >> 20}`, 'oflag=direct', 'status=none']);
      for (const c of cases) {
        const stack = createTierStack({ tiers: [await c.open()] });
        let dev: BlockDevice | undefined;
        try {
          dev = await createBlockDevice({ stack, sizeBytes: SIZE, transport: 'fuse-loop', name: 'bench' });
          await run('dd', ['if=/dev/zero', `of=${dev.path}`, 'bs=1M', `count=${SIZE >> 20}`, 'oflag=direct', 'status=none']);
          const base: FioSide[] = [];
          const mine: FioSide[] = [];
          ctx.log(`ublk: ${c.label}: fio randrw 4k qd32, ${ctx.measure.rounds} rounds of ${seconds}s per side`);
          await fio(loop, 1);
          await fio(dev.path, 1);
          for (let r = 0; r < ctx.measure.rounds; r++) {
            base.push(await fio(loop, seconds));
            mine.push(await fio(dev.path, seconds));
          }
          yield result('ublk', `${c.label} 4k randrw qd32`, 'loop on tmpfs', { case: combine(mine), baseline: combine(base) }, 'bar >= 0.7x; fio completion latencies');
        } finally {
          await dev?.close();
          await stack.close();
        }
      }
    } finally {
      await run('losetup', ['-d', loop]).catch(() => undefined);
      await run('rm', ['-f', img]);
    }
    if (process.env.TIERSTACK_BENCH_UBLK_GUEST === '1') yield* guestCases(ctx, seconds);
    else ctx.log('ublk: the ublk transport cases run in a QEMU guest: set TIERSTACK_BENCH_UBLK_GUEST=1 (one boot, a few minutes)');
  },
};

/** ublk in the guest: tierstack devices vs a minimal C RAM-disk ublk server, one boot. */
async function* guestCases(ctx: Parameters<Suite['run']>[0], seconds: number): AsyncIterable<ReturnType<typeof result>> {
  const { runInGuest, guestCapability } = await import('@tierstack/guestvm');
  const cap = await guestCapability();
  if (!cap.ok) {
    ctx.log(`ublk guest cases skipped: ${cap.reason}`);
    return;
  }
  const ublkDir = dirname(createRequire(import.meta.url).resolve('@tierstack/ublk/package.json'));
  const repo = join(ublkDir, '..', '..');
  const ramdisk = join(ublkDir, '.cache', 'ublk-ramdisk');
  mkdirSync(dirname(ramdisk), { recursive: true });
  await run('cc', ['-O2', '-o', ramdisk, join(ublkDir, 'bench', 'ublk-ramdisk.c'), '-luring', '-lpthread']);
  const results = join(ctx.tmpDir, 'guest');
  mkdirSync(results, { recursive: true });
  const rounds = ctx.measure.rounds;
  ctx.log(`ublk: guest: C RAM disk vs tierstack ublk (CxlTier / MemoryTier), ${rounds} rounds of ${seconds}s`);
  const r = await runInGuest({
    command: `bash ${join(ublkDir, 'bench', 'guest-bench.sh')} ${repo} ${ramdisk} ${seconds} ${rounds}`,
    setup: ['ublk'],
    resultsDir: results,
    memoryMiB: 1024,
    timeoutMs: 600_000,
  });
  if (!r.stdout.includes('BENCH-OK')) throw new Error(`guest bench failed (exit ${r.exitCode}): ${r.stderr.slice(-2000)}`);
  const side = (name: string): Measurement =>
    combine(Array.from({ length: rounds }, (_, i) => fioSide(readFileSync(join(results, `${name}-${i + 1}.json`), 'utf8'))));
  const base = side('c');
  yield result('ublk', 'ublk [CxlTier memfd, native path] 4k randrw qd32 (guest, TCG)', 'C RAM-disk ublk server', { case: side('cxl'), baseline: base }, 'bar >= 0.7x; 1 queue, depth 32');
  yield result('ublk', 'ublk [MemoryTier, JS path] 4k randrw qd32 (guest, TCG)', 'C RAM-disk ublk server', { case: side('memory'), baseline: base }, 'bar >= 0.7x; 1 queue, depth 32');
}
