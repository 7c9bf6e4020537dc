/**
 * `tierstack pagemap` on a process pushed into a tierstack swap device: a real `tierstack ublk add
 * --transport fuse-loop --swap` server, a process filling 96 MiB under a 32 MiB cgroup v1 limit
 * (the server stays outside it). Every swapped page is found in a tier, the counts agree with the
 * swap area and the device's stats, and the stack key is right: the device page at the swap
 * offset holds exactly the bytes of the process's page.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PagemapReport } from '../src/commands/pagemap.js';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const CG_ROOT = '/sys/fs/cgroup/memory';
const canRun = existsSync(`${CG_ROOT}/memory.limit_in_bytes`) && existsSync('/dev/fuse') && process.getuid?.() === 0;

function mix(x: bigint): bigint {
  const M = (1n << 64n) - 1n;
  x ^= x >> 33n;
  x = (x * 0xff51afd7ed558ccdn) & M;
  x ^= x >> 33n;
  x = (x * 0xc4ceb9fe1a85ec53n) & M;
  x ^= x >> 33n;
  return x;
}

function lines(proc: ChildProcess, stream: 'stdout' | 'stderr' = 'stdout') {
  let text = '';
  proc[stream]!.on('data', (d) => (text += d));
  return async (re: RegExp): Promise<string> => {
    for (let i = 0; i < 1200; i++) {
      const m = re.exec(text);
      if (m) return m[0];
      if (proc.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`no ${re} in: ${text.slice(-2000)}`);
  };
}

describe.skipIf(!canRun)('tierstack pagemap', () => {
  let dir: string;
  let cg: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ts-cli-pagemap-'));
    execFileSync('cc', ['-O2', '-o', join(dir, 'hold'), fileURLToPath(new URL('./fixtures/swap-hold.c', import.meta.url))]);
    cg = join(CG_ROOT, `tierstack-pagemap-${process.pid}`);
    mkdirSync(cg);
    writeFileSync(join(cg, 'memory.limit_in_bytes'), String(32 << 20));
    writeFileSync(join(cg, 'memory.swappiness'), '100');
  });
  afterAll(() => {
    if (cg && existsSync(cg)) rmdirSync(cg);
    rmSync(dir, { recursive: true, force: true });
  });

  it('finds every swapped page of a process in a tier, with counts that match the area and the device', async () => {
    const stateDir = join(dir, 'state');
    const server = spawn(process.execPath, [bin, 'ublk', 'add', '--name', 'pm', '--size', '256M', '--transport', 'fuse-loop', '--swap', '32000', '--state-dir', stateDir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const serverExit = new Promise<number | null>((r) => server.on('exit', (c) => r(c)));
    const serverOut = lines(server);
    let hold: ChildProcess | undefined;
    try {
      const ready = JSON.parse(await serverOut(/^\{"event":"ready".*$/m)) as { path: string; namespace: string };
      hold = spawn('sh', ['-c', `echo $$ > ${cg}/cgroup.procs && exec ${join(dir, 'hold')} 96`], { stdio: ['pipe', 'pipe', 'inherit'] });
      const holdOut = lines(hold);
      const { base } = JSON.parse(await holdOut(/^\{"base".*$/m)) as { base: number };

      const r = JSON.parse(execFileSync(process.execPath, [bin, 'pagemap', String(hold.pid), '--json', '--state-dir', stateDir], { encoding: 'utf8', maxBuffer: 256 << 20 })) as PagemapReport;
      // At least what does not fit under the limit is out (64 of 96 MiB, less what the kernel keeps).
      expect(r.swappedPages).toBeGreaterThan((48 << 20) / 4096);
      expect(r.areas).toHaveLength(1);
      const area = r.areas[0]!;
      expect(area).toMatchObject({ area: ready.path, device: 'pm', namespace: ready.namespace, pages: r.swappedPages, outOfRange: 0 });
      // Swap slots in use cover at least this process's swapped pages (it is the only one swapping here).
      expect(area.areaUsedPages).toBeGreaterThanOrEqual(area.pages);
      // Every swapped page is held by a tier of the server's stack (its file tier).
      expect(r.tiers).toEqual({ file: r.swappedPages });
      expect(r.pages.every((p) => p.tier === 'file' && p.page === p.offset && p.offset > 0)).toBe(true);
      // The device wrote at least one page for every swapped page.
      const stats = JSON.parse(readFileSync(join(stateDir, 'pm.stats.json'), 'utf8')) as { device: { write: { bytes: number } } };
      expect(stats.device.write.bytes / 4096).toBeGreaterThanOrEqual(r.swappedPages);

      // The key is right: device page `offset` holds the process's page at `vaddr`, word for word.
      const inHeap = r.pages.filter((p) => Number(p.vaddr) >= base && Number(p.vaddr) + 4096 <= base + (96 << 20));
      expect(inHeap.length).toBeGreaterThan(r.swappedPages / 2);
      for (let k = 0; k < 12; k++) {
        const p = inHeap[Math.floor((k * inHeap.length) / 12)]!;
        const page = execFileSync('dd', [`if=${ready.path}`, 'bs=4096', 'count=1', `skip=${p.offset}`, 'iflag=direct', 'status=none'], { maxBuffer: 8192 });
        const first = (Number(p.vaddr) - base) / 8; // index of the page's first word (base is 8-aligned)
        for (let w = 0; w < 512; w += 37) expect(page.readBigUInt64LE(w * 8)).toBe(mix(BigInt(first + w)));
      }

      // The text summary says the same, per area and per tier.
      const text = execFileSync(process.execPath, [bin, 'pagemap', String(hold.pid), '--summary', '--state-dir', stateDir], { encoding: 'utf8' });
      const m = new RegExp(`^pid ${hold.pid}: (\\d+) pages swapped out\\n  area ${ready.path}: (\\d+) pages of \\d+ used — tierstack device pm \\(${ready.namespace}\\)\\n  tier file: (\\d+) pages\\n$`).exec(text);
      expect(m, text).not.toBeNull();
      expect(new Set([m![1], m![2], m![3]]).size).toBe(1);

      // Nothing was changed: the process still has every byte.
      hold.stdin!.write('check\n');
      expect(JSON.parse(await holdOut(/^\{"badWords".*$/m))).toEqual({ badWords: 0 });
    } finally {
      if (hold && hold.exitCode === null) hold.kill('SIGKILL');
      server.kill('SIGTERM');
      expect(await serverExit).toBe(0);
    }
  }, 120_000);
});
