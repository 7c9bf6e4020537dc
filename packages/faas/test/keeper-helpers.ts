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
  const proc = spawn(keeperBinaryPath(), keeperArgs({ ...rest, status: statusPath, worker }), { stdio: ['ignore', 'pipe', 'pipe'] });
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
