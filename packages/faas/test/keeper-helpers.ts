/**
 * Helpers of the keeper tests: the keeper binary and the package's dist/ built (the worker is a
 * real Node process, it cannot run the TypeScript sources), a keeper started with the test worker
 * (test/fixtures/keeper-worker.mjs), its stdout lines, its status, Firecracker-style clients.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { queryKeeperStatus, keeperArgs, keeperBinaryPath, type KeeperOptions, type KeeperStatus, type KeeperWorkerLine } from '../src/index.js';

export const pkgDir = fileURLToPath(new URL('..', import.meta.url));
export const workerScript = join(pkgDir, 'test', 'fixtures', 'keeper-worker.mjs');

/** Builds the keeper binary and the package's dist/ (both incremental), and fc_client into `dir`. */
export function buildAll(dir: string): { client: string } {
  execFileSync(process.execPath, [join(pkgDir, 'scripts', 'build-keeper.mjs')], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (!existsSync(keeperBinaryPath())) throw new Error('the keeper did not build');
  const tsc = createRequire(join(pkgDir, '..', '..', 'package.json')).resolve('typescript/bin/tsc');
  try {
    execFileSync(process.execPath, [tsc, '-b', pkgDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    // A referenced package with type errors still emits; the worker needs only our dist.
    if (!existsSync(join(pkgDir, 'dist', 'keeper', 'worker.js'))) throw err;
  }
  const client = join(dir, 'fc_client');
  execFileSync('gcc', ['-O2', '-pthread', '-o', client, join(pkgDir, 'native-test', 'fc_client.c')]);
  return { client };
}

export interface RunningKeeper {
  proc: ChildProcess;
  pid: number;
  statusPath: string;
  /** Worker lines printed so far. */
  lines: KeeperWorkerLine[];
  /** Resolves with the next worker line after `count` lines were printed. */
  workerLine(count: number, timeoutMs?: number): Promise<KeeperWorkerLine>;
  status(): Promise<KeeperStatus>;
  /** Polls the status until `pred` holds (fails with the last status after timeoutMs). */
  waitStatus(pred: (s: KeeperStatus) => boolean, what: string, timeoutMs?: number): Promise<KeeperStatus>;
  stderr(): string;
  stdout(): string;
  exited: Promise<number | null>;
  stop(): Promise<void>;
}

export function startKeeper(
  o: Omit<KeeperOptions, 'worker' | 'status'> & { worker?: string[]; dataDir: string; snapshotId: string; mode?: 'firecracker' | 'criu'; faultAround?: number; statusPath: string },
): RunningKeeper {
  const worker = o.worker ?? [process.execPath, workerScript, o.dataDir, o.snapshotId, o.mode ?? 'firecracker', String(o.faultAround ?? 1), 'none'];
  const { dataDir: _d, snapshotId: _s, mode: _m, faultAround: _f, statusPath, ...rest } = o;
  // TIERSTACK_TEST_KEEPER_BIN: run another keeper build (e.g. an older one, to show a test fails without a change).
  const proc = spawn(process.env['TIERSTACK_TEST_KEEPER_BIN'] || keeperBinaryPath(), keeperArgs({ ...rest, status: statusPath, worker }), { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const lines: KeeperWorkerLine[] = [];
  const waiters: Array<() => void> = [];
  proc.stdout!.setEncoding('utf8');
  proc.stderr!.setEncoding('utf8');
  proc.stdout!.on('data', (d: string) => {
    out += d;
    const all = out.split('\n');
    lines.length = 0;
    for (const l of all) if (l.startsWith('{"keeperPid"')) lines.push(JSON.parse(l) as KeeperWorkerLine);
    for (const w of waiters.splice(0)) w();
  });
  proc.stderr!.on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const k: RunningKeeper = {
    proc,
    pid: proc.pid!,
    statusPath,
    lines,
    async workerLine(count, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      while (lines.length <= count) {
        if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`no worker line #${count + 1}; stdout:\n${out}\nstderr:\n${err.slice(-4000)}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
      return lines[count]!;
    },
    status: () => queryKeeperStatus(statusPath),
    async waitStatus(pred, what, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      let last: KeeperStatus | undefined;
      for (;;) {
        try {
          last = await queryKeeperStatus(statusPath);
          if (pred(last)) return last;
        } catch {
          // not listening yet
        }
        if (Date.now() > deadline) throw new Error(`keeper status never showed ${what}; last: ${JSON.stringify(last)}\nstderr:\n${err.slice(-4000)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    stderr: () => err,
    stdout: () => out,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
    },
  };
  return k;
}

export interface ClientResult {
  pages?: number;
  mismatches?: number;
  zero_mismatches?: number;
  dontneed_nonzero?: number;
  sigbus?: boolean;
  error?: string;
  t_start?: number;
  t_done?: number;
}

export interface RunningClient {
  proc: ChildProcess;
  result: Promise<{ code: number | null; signal: NodeJS.Signals | null; out: ClientResult }>;
  running(): boolean;
  /** What it printed so far. */
  output(): string;
}

export function startClient(client: string, socket: string, memfile: string, args: string[]): RunningClient {
  const proc = spawn(client, [socket, memfile, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  const result = new Promise<{ code: number | null; signal: NodeJS.Signals | null; out: ClientResult }>((resolve) =>
    proc.on('close', (code, signal) => resolve({ code, signal, out: JSON.parse(out.trim().split('\n').pop() || '{}') as ClientResult })),
  );
  return { proc, result, running: () => proc.exitCode === null && proc.signalCode === null, output: () => out };
}

/** Whether a process (any of its threads) sleeps in the kernel's userfaultfd fault path. */
export function blockedInUserfault(pid: number): boolean {
  try {
    const tasks = execFileSync('ls', [`/proc/${pid}/task`], { encoding: 'utf8' }).trim().split(/\s+/);
    return tasks.some((t) => {
      try {
        return readFileSync(`/proc/${pid}/task/${t}/wchan`, 'utf8').includes('userfault');
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(st);
  } catch {
    return false;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function writeList(path: string, pages: number[]): void {
  writeFileSync(path, pages.join('\n'));
}

/** Builds test/fixtures/fc_drop_client.c (touch, drop page by page, wait for SIGUSR1, read every page) into `dir`. */
export function buildDropClient(dir: string): string {
  const out = join(dir, 'fc_drop_client');
  execFileSync('gcc', ['-O2', '-o', out, join(pkgDir, 'test', 'fixtures', 'fc_drop_client.c')]);
  return out;
}

/** A process's start time (clock ticks since boot, /proc/<pid>/stat field 22), as the keeper records it. */
export function procStartTime(pid: number): bigint {
  const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return BigInt(st.slice(st.lastIndexOf(')') + 2).split(' ')[19]!);
}

// The keeper's removed-ranges log (native/keeper/state.c, vm-<pid>.removed): a 32-byte header
// {magic "TSRMLOG1", u32 pid, u32 0, u64 VM start time, u64 FNV-1a 64 of the 24 bytes before},
// then 32-byte records {u32 kind ('R' 0x52 range, 'O' 0x4f overflow), u32 0, u64 start, u64 end,
// u64 FNV-1a 64 of the 24 bytes before seeded with the header's sum}, native (little) endian.
const FNV_OFFSET = 0xcbf29ce484222325n;
function fnv1a(seed: bigint, b: Buffer): bigint {
  let h = seed;
  for (const c of b) h = ((h ^ BigInt(c)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return h;
}

/** Bytes of a removed-ranges log: header + records ('R' [start, end) in bytes, or 'O'). */
export function removedLogBytes(pid: number, start: bigint, records: Array<[number, number] | 'O'>): Buffer {
  const head = Buffer.alloc(32);
  head.write('TSRMLOG1', 0, 'latin1');
  head.writeUInt32LE(pid, 8);
  head.writeBigUInt64LE(start, 16);
  const seed = fnv1a(FNV_OFFSET, head.subarray(0, 24));
  head.writeBigUInt64LE(seed, 24);
  const recs = records.map((r) => {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(r === 'O' ? 0x4f : 0x52, 0);
    if (r !== 'O') {
      b.writeBigUInt64LE(BigInt(r[0]), 8);
      b.writeBigUInt64LE(BigInt(r[1]), 16);
    }
    b.writeBigUInt64LE(fnv1a(seed, b.subarray(0, 24)), 24);
    return b;
  });
  return Buffer.concat([head, ...recs]);
}

/** Reads a removed-ranges log: its ranges merged ([start, end) in bytes, sorted) and its overflow mark; null if absent or invalid. */
export function readRemovedLog(path: string): { ranges: Array<[number, number]>; overflow: boolean; records: number } | null {
  let b: Buffer;
  try {
    b = readFileSync(path);
  } catch {
    return null;
  }
  if (b.length < 32 || b.length % 32 !== 0 || b.toString('latin1', 0, 8) !== 'TSRMLOG1') return null;
  const seed = b.readBigUInt64LE(24);
  if (fnv1a(FNV_OFFSET, b.subarray(0, 24)) !== seed) return null;
  const raw: Array<[number, number]> = [];
  let overflow = false;
  for (let o = 32; o < b.length; o += 32) {
    if (fnv1a(seed, b.subarray(o, o + 24)) !== b.readBigUInt64LE(o + 24)) return null;
    const kind = b.readUInt32LE(o);
    if (kind === 0x4f) overflow = true;
    else raw.push([Number(b.readBigUInt64LE(o + 8)), Number(b.readBigUInt64LE(o + 16))]);
  }
  raw.sort((x, y) => x[0] - y[0]);
  const ranges: Array<[number, number]> = [];
  for (const r of raw) {
    const last = ranges.at(-1);
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else ranges.push([r[0], r[1]]);
  }
  return { ranges, overflow, records: b.length / 32 - 1 };
}
