/**
 * Test helpers: real memd processes on loopback (ephemeral ports), spawned from the package's
 * built entry (dist/memd-main.js, rebuilt here when the sources are newer) and killed after.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const repo = join(pkgDir, '..', '..');
const entry = join(pkgDir, 'dist', 'memd-main.js');

function newest(path: string): number {
  if (!existsSync(path)) return 0;
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  return Math.max(0, ...readdirSync(path).map((e) => newest(join(path, e))));
}

let built = false;
/** Builds the addon and the daemon's JavaScript if they are missing or older than the sources. */
export function ensureBuilt(): void {
  if (built) return;
  const build = (): void => void execFileSync(process.execPath, [join(repo, 'scripts', 'build-native.mjs')], { cwd: pkgDir, stdio: 'pipe' });
  // A concurrent rebuild of the same build directory (another test run or setup) can fail: retry.
  for (let attempt = 0; ; attempt++) {
    try {
      build();
      break;
    } catch (err) {
      if (attempt >= 3) throw err;
      execFileSync('sleep', ['2']);
    }
  }
  if (newest(entry) < Math.max(newest(join(pkgDir, 'src')), newest(join(repo, 'packages', 'core', 'src')))) {
    execFileSync(join(repo, 'node_modules', '.bin', 'tsc'), ['-b', pkgDir], { cwd: repo, stdio: 'inherit' });
  }
  built = true;
}

export interface MemdProcess {
  proc: ChildProcess;
  host: string;
  port: number;
  address: string;
  pid: number;
  metricsPort?: number;
  stderr: () => string;
  /** SIGKILL (no goodbye) and wait for the exit. */
  kill9(): Promise<void>;
  stop(): Promise<void>;
}

export interface SpawnOptions {
  capacity?: string;
  slabSize?: string;
  token?: string;
  headroom?: string;
  freeMemoryFile?: string;
  evictGraceMs?: number;
  headroomPollMs?: number;
  metricsPort?: number;
  provider?: string;
  port?: number;
  /** Control and data address (default 127.0.0.1; any other address needs a token). */
  host?: string;
  /** Command the daemon runs under, e.g. ['prlimit', '--memlock=65536', '--'] (execs node). */
  wrapper?: string[];
  extra?: string[];
}

const live = new Set<MemdProcess>();

export async function spawnMemd(o: SpawnOptions = {}): Promise<MemdProcess> {
  ensureBuilt();
  const args = [entry, '--port', String(o.port ?? 0), '--capacity', o.capacity ?? '64M', '--slab-size', o.slabSize ?? '1M', '--log-level', 'info', '--die-with-parent'];
  if (o.token) args.push('--token', o.token);
  if (o.provider) args.push('--provider', o.provider);
  if (o.headroom) args.push('--headroom', o.headroom);
  if (o.freeMemoryFile) args.push('--free-memory-file', o.freeMemoryFile);
  if (o.evictGraceMs !== undefined) args.push('--evict-grace-ms', String(o.evictGraceMs));
  if (o.headroomPollMs !== undefined) args.push('--headroom-poll-ms', String(o.headroomPollMs));
  if (o.metricsPort !== undefined) args.push('--metrics-port', String(o.metricsPort));
  if (o.host) args.push('--host', o.host, '--data-host', o.host);
  args.push(...(o.extra ?? []));
  const [cmd, ...pre] = o.wrapper?.length ? [...o.wrapper, process.execPath] : [process.execPath];
  // A donor starts without the libfabric defaults this test process may have set for its own
  // pools (providerDefaults): the daemon applies its provider's defaults itself.
  const ours = new Set(['FI_MR_CACHE_MONITOR', 'FI_UNIVERSE_SIZE', 'FI_OFI_RXM_MSG_TX_SIZE', 'FI_OFI_RXM_MSG_RX_SIZE']);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !ours.has(k)));
  const proc = spawn(cmd!, [...pre, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let err = '';
  proc.stderr!.on('data', (c: Buffer) => {
    err += c.toString();
    if (err.length > 1 << 20) err = err.slice(-(1 << 19));
  });
  const ready = await new Promise<{ host: string; port: number; pid: number; metricsPort?: number }>((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout! });
    // Under emulation (the QEMU guest) a node process takes many seconds to start.
    const t = setTimeout(() => reject(new Error(`memd did not start: ${err}`)), process.env.TIERSTACK_GUEST === '1' ? 120_000 : 20_000);
    rl.on('line', (line) => {
      try {
        const j = JSON.parse(line) as { ready?: boolean; host: string; port: number; pid: number; metricsPort?: number };
        if (j.ready) {
          clearTimeout(t);
          resolve(j);
        }
      } catch {
        /* not the ready line */
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`memd exited (${code}): ${err}`));
    });
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const m: MemdProcess = {
    proc,
    host: ready.host,
    port: ready.port,
    address: `${ready.host}:${ready.port}`,
    pid: ready.pid,
    ...(ready.metricsPort !== undefined ? { metricsPort: ready.metricsPort } : {}),
    stderr: () => err,
    kill9: async () => {
      proc.kill('SIGKILL');
      await exited;
      live.delete(m);
    },
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
      live.delete(m);
    },
  };
  live.add(m);
  return m;
}

export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((m) => m.stop()));
}

export function tempDir(label: string): string {
  return mkdtempSync(join(tmpdir(), `tierstack-rdma-${label}-`));
}

export function writeFreeMemory(file: string, bytes: number): void {
  writeFileSync(file, String(bytes));
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` until it holds (tests wait on state, never on time). */
export async function until(cond: () => boolean | Promise<boolean>, what: string, limitMs = 20_000): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > limitMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}
