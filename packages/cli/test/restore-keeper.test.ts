/**
 * `tierstack restore --firecracker` under its keeper (the default), against the real CLI process,
 * a real kernel uffd and a Firecracker-faithful client (@tierstack/faas native-test/fc_client.c):
 * the first stdout line names the keeper and the worker, a new line follows each replacement, the
 * status socket answers, killed workers are replaced while the VM restores, and Ctrl-C stops it
 * all. `--no-keeper` serves in the CLI process as before.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { prepareFirecrackerClient } from './helpers/firecracker.js';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const cli = (args: string[]): string => execFileSync(process.execPath, [bin, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const PAGES = 4096;

let dir: string;
let dd: string[];
let client: string;
const img = Buffer.alloc(PAGES * 4096);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ts-cli-keeper-'));
  dd = ['--data-dir', join(dir, 'data')];
  for (let p = 0; p < PAGES; p++) if (p % 7 !== 2) for (let w = 0; w < 1024; w++) img.writeUInt32LE((Math.imul(p + 1, 2654435761) ^ Math.imul(w, 40503)) >>> 0, p * 4096 + w * 4);
  writeFileSync(join(dir, 'mem'), img);
  cli(['snapshot', 'import', ...dd, 'fn', join(dir, 'mem')]);
  client = prepareFirecrackerClient(dir);
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Line {
  keeperPid: number;
  workerPid: number;
  restarts: number;
  replaced?: number;
  exit?: { signal: string | null };
  status?: string;
}

function start(args: string[]): { proc: ChildProcess; lines: () => string[]; line: (i: number) => Promise<string>; stderr: () => string; exit: Promise<number | null> } {
  const proc = spawn(process.execPath, [bin, 'restore', ...dd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((r) => proc.on('exit', (c) => r(c)));
  const lines = (): string[] => out.split('\n').filter(Boolean);
  return {
    proc,
    lines,
    stderr: () => err,
    exit,
    async line(i) {
      for (let t = 0; t < 600 && lines().length <= i; t++) {
        if (proc.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const l = lines()[i];
      if (l === undefined) throw new Error(`no stdout line ${i}: ${out}\n${err.slice(-3000)}`);
      return l;
    },
  };
}

function status(path: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let d = '';
    connect(path)
      .on('data', (x) => (d += x))
      .on('end', () => resolve(JSON.parse(d) as Record<string, unknown>))
      .on('error', reject);
  });
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

describe('tierstack restore --firecracker (keeper)', () => {
  it('first line names keeper and worker; killed workers are replaced mid-restore; the VM is byte-correct; Ctrl-C stops everything', async () => {
    const sock = join(dir, 'fc.sock');
    const r = start(['--firecracker', sock, 'fn']);
    const first = JSON.parse(await r.line(0)) as Line;
    expect(first).toMatchObject({ restarts: 0, status: `${sock}.status` });
    expect(await r.line(1)).toBe(`Firecracker UFFD handler for fn listening on ${sock}; Ctrl-C stops`);
    const vm = spawn(client, [sock, join(dir, 'mem'), '--touch-delay-us', '900', '--threads', '2', '--dontneed', '1000:16'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let vmOut = '';
    vm.stdout!.on('data', (d) => (vmOut += d));
    const vmExit = new Promise<number | null>((res) => vm.on('exit', (c) => res(c)));
    const workers = [first.workerPid];
    for (let i = 0; i < 2; i++) {
      for (let t = 0; t < 100; t++) {
        const s = (await status(`${sock}.status`)) as { vms: Array<{ state: string }>; standby: unknown };
        if (s.vms.length === 1 && s.vms[0]!.state === 'served' && s.standby) break;
        await new Promise((res) => setTimeout(res, 100));
      }
      await new Promise((res) => setTimeout(res, 200 + Math.random() * 500));
      expect(vm.exitCode).toBe(null); // still restoring
      process.kill(workers.at(-1)!, 'SIGKILL');
      const next = JSON.parse(await r.line(2 + i)) as Line;
      expect(next).toMatchObject({ keeperPid: first.keeperPid, replaced: workers.at(-1), exit: { signal: 'SIGKILL' } });
      workers.push(next.workerPid);
    }
    expect(await vmExit).toBe(0);
    expect(JSON.parse(vmOut.trim())).toMatchObject({ pages: PAGES, mismatches: 0, dontneed_nonzero: 0 });
    const st = (await status(`${sock}.status`)) as { healthy: boolean; restarts: number; handshakes: { accepted: number } };
    expect(st).toMatchObject({ healthy: true, restarts: 2, handshakes: { accepted: 1 } });
    r.proc.kill('SIGINT');
    expect(await r.exit).toBe(0);
    // The last line: the final worker's stats (the VM it resumed and served to the end).
    const final = JSON.parse(r.lines().at(-1)!) as { resumedRestores: number; restores: number; rejected: number };
    expect(final).toMatchObject({ restores: 1, resumedRestores: 1, rejected: 0 });
    for (let t = 0; t < 50 && [first.keeperPid, ...workers].some(alive); t++) await new Promise((res) => setTimeout(res, 100));
    expect([first.keeperPid, ...workers].filter(alive)).toEqual([]);
  }, 60_000);

  it('--no-keeper serves in the CLI process (no JSON line), and an unknown snapshot fails before any keeper starts', async () => {
    const sock = join(dir, 'nk.sock');
    const r = start(['--no-keeper', '--firecracker', sock, 'fn']);
    expect(await r.line(0)).toBe(`Firecracker UFFD handler for fn listening on ${sock}; Ctrl-C stops`);
    const c = JSON.parse(execFileSync(client, [sock, join(dir, 'mem'), '--touch', '0:512'], { encoding: 'utf8' }).trim()) as { mismatches: number; pages: number };
    expect(c).toMatchObject({ pages: 512, mismatches: 0 });
    r.proc.kill('SIGINT');
    await r.exit;
    expect(() => cli(['restore', ...dd, '--firecracker', join(dir, 'x.sock'), 'nope'])).toThrow(/TS_ERR_NOT_FOUND/);
  }, 60_000);
});

describe('tierstack restore --trace', () => {
  it('under the keeper: each VM that ends leaves its fault records (page, tier, latency) in the file and a summary on stderr', async () => {
    const sock = join(dir, 'trace.sock');
    const file = join(dir, 'faults.jsonl');
    const r = start(['--firecracker', sock, '--trace', file, '--prefetch', 'none', '--no-record', 'fn']);
    await r.line(1);
    const vm = spawn(client, [sock, join(dir, 'mem'), '--touch', '100:300'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let vmOut = '';
    vm.stdout!.on('data', (d) => (vmOut += d));
    await new Promise((res) => vm.on('close', res));
    expect(JSON.parse(vmOut.trim().split('\n').pop()!)).toMatchObject({ pages: 300, mismatches: 0 });
    for (let t = 0; t < 100 && !/fault trace of VM/.test(r.stderr()); t++) await new Promise((res) => setTimeout(res, 100));
    expect(r.stderr()).toMatch(/fault trace of VM \d+ \(\d+ records\)/);
    const recs = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { vm: number; op: string; offset: number; tier: string; latencyUs: number });
    const faults = recs.filter((x) => x.op === 'fault');
    expect(faults.length).toBeGreaterThan(0);
    // Every fault is in the touched range; zero pages (p % 7 === 2 in this image) are answered as 'zero', the rest by a tier.
    for (const f of faults) {
      const p = f.offset / 4096;
      expect(p).toBeGreaterThanOrEqual(100);
      expect(p).toBeLessThan(400);
      expect(f.tier === 'zero').toBe(p % 7 === 2);
      expect(f.latencyUs).toBeGreaterThan(0);
    }
    r.proc.kill('SIGINT');
    expect(await r.exit).toBe(0);
  });
});
