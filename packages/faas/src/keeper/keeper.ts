/**
 * Starting and asking the restore keeper (`tierstack-keeper`, built from native/keeper/ by this
 * package's `build:native`). The keeper holds what a restore must not lose when its page-serving
 * worker dies and restarts the worker; see README.md, "Restarts".
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TierStackError, ErrorCode } from '@tierstack/core';

/** Where the keeper binary is built (packages/faas/build/tierstack-keeper). */
export function keeperBinaryPath(): string {
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'tierstack-keeper');
}

/** The keeper binary, or TS_ERR_NATIVE_MISSING saying how to build it. */
export function keeperBinary(): string {
  const p = keeperBinaryPath();
  if (!existsSync(p)) {
    throw new TierStackError(
      ErrorCode.NativeMissing,
      `the restore keeper (${p}) is not built: install gcc and run \`pnpm --filter @tierstack/faas build:native\` (or bash scripts/setup.sh); --no-keeper runs without it`,
    );
  }
  return p;
}

export interface KeeperOptions {
  /** Bind this Unix socket as the Firecracker UFFD handler socket. */
  firecracker?: string;
  /** Or: relay CRIU page-server connections on this TCP port (0: any). */
  criuPort?: number;
  criuHost?: string;
  /** A Unix socket answering each connection with one JSON status line. */
  status?: string;
  /**
   * Firecracker: a directory where the keeper writes down its workers and every VM it holds (pid,
   * start time, the uffd's identity, the handshake). A keeper started on it takes back the VMs a
   * dead (or stopped) keeper left — their uffds duplicated from the VMs with pidfd_getfd, which
   * needs ptrace rights over them — after killing that keeper's workers if they still run.
   */
  stateDir?: string;
  /** memfds the workers share (their DRAM cache), created and held by the keeper. */
  memfds?: Array<{ name: string; bytes: number }>;
  /** Keep a booted spare worker, promoted the moment the serving one dies (default true). */
  standby?: boolean;
  handshakeTimeoutMs?: number;
  maxPendingHandshakes?: number;
  /** A worker that served this long before dying is replaced at once (default 5000). */
  stableMs?: number;
  /** Delay after the second quick death in a row, doubling (default 100) up to backoffMaxMs (10000). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Give up (exit 1) when this many workers in a row died before any served and nothing is held
   *  (a worker that cannot start at all); default: never. */
  giveUpAfter?: number;
  label?: string;
  /** The worker's argv (it finds the channel in $TIERSTACK_KEEPER_CTL_FD). */
  worker: string[];
}

export function keeperArgs(o: KeeperOptions): string[] {
  if ((o.firecracker === undefined) === (o.criuPort === undefined)) {
    throw new TierStackError(ErrorCode.BadArgument, 'a keeper needs exactly one of firecracker (a socket path) or criuPort');
  }
  if (!Array.isArray(o.worker) || o.worker.length === 0) throw new TierStackError(ErrorCode.BadArgument, 'a keeper needs the worker command');
  const a: string[] = [];
  const num = (flag: string, v: number | undefined): void => {
    if (v === undefined) return;
    if (!Number.isSafeInteger(v) || v < 0) throw new TierStackError(ErrorCode.BadArgument, `${flag} must be a non-negative integer`);
    a.push(flag, String(v));
  };
  if (o.firecracker !== undefined) a.push('--firecracker', o.firecracker);
  num('--criu-port', o.criuPort);
  if (o.criuHost !== undefined) a.push('--criu-host', o.criuHost);
  if (o.status !== undefined) a.push('--status', o.status);
  if (o.stateDir !== undefined) a.push('--state-dir', o.stateDir);
  for (const m of o.memfds ?? []) {
    if (!/^[A-Za-z0-9_.-]{1,31}$/.test(m.name) || !Number.isSafeInteger(m.bytes) || m.bytes <= 0) {
      throw new TierStackError(ErrorCode.BadArgument, `bad keeper memfd ${m.name}:${m.bytes}`);
    }
    a.push('--memfd', `${m.name}:${m.bytes}`);
  }
  if (o.standby !== false) a.push('--standby');
  num('--handshake-timeout-ms', o.handshakeTimeoutMs);
  num('--max-pending', o.maxPendingHandshakes);
  num('--stable-ms', o.stableMs);
  num('--backoff-base-ms', o.backoffBaseMs);
  num('--backoff-max-ms', o.backoffMaxMs);
  num('--give-up-after', o.giveUpAfter);
  if (o.label !== undefined) a.push('--label', o.label);
  return [...a, '--', ...o.worker];
}

/** Starts a keeper (stdout: its JSON lines; stderr: logs). */
export function spawnKeeper(o: KeeperOptions, options: { stdio?: StdioOptions; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  return spawn(keeperBinary(), keeperArgs(o), { stdio: options.stdio ?? ['ignore', 'pipe', 'pipe'], ...(options.env ? { env: options.env } : {}) });
}

/** One line of the keeper's stdout when a worker starts serving. */
export interface KeeperWorkerLine {
  keeperPid: number;
  workerPid: number;
  gen: number;
  restarts: number;
  /** The worker this one replaced, how it ended, and the deaths in a row so far. */
  replaced?: number;
  exit?: { signal: string | null; code: number | null };
  consecutiveFailures?: number;
  socket?: string;
  port?: number;
  status?: string;
  vms: number;
  connections: number;
}

export interface KeeperStatus {
  keeperPid: number;
  uptimeMs: number;
  state: 'serving' | 'starting' | 'backoff' | 'stopping';
  healthy: boolean;
  socket?: string;
  port?: number;
  worker: { pid: number; gen: number; state: string; upMs: number; servingMs: number; stats?: Record<string, unknown> } | null;
  standby: { pid: number; gen: number; state: string; upMs: number } | null;
  restarts: number;
  consecutiveFailures: number;
  backoffMs: number;
  nextStartInMs: number;
  lastExit: { pid: number; exit: { signal: string | null; code: number | null }; agoMs: number } | null;
  handshakes: { accepted: number; rejected: number; pending: number };
  wakes: number;
  wakeErrors: number;
  vmsEnded: number;
  /** VMs taken back from a dead keeper's --state-dir. */
  recovered: number;
  vms: Array<{ id: number; pid: number; state: 'held' | 'sent' | 'served'; workersLost: number; ranges: number }>;
  criu?: { connections: number; open: number; replays: number; conns: Array<{ id: number; answerBytes: number; requestBytesKept: number; replays: number; served: boolean }> };
  memfds: Array<{ name: string; bytes: number; fd: number }>;
  lastError: string | null;
}

/** Asks a keeper's status socket. */
export function queryKeeperStatus(path: string, timeoutMs = 5000): Promise<KeeperStatus> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let data = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new TierStackError(ErrorCode.Timeout, `no status from ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => (data += d));
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(new TierStackError(ErrorCode.Unavailable, `cannot ask the keeper at ${path}: ${err.message}`, { cause: err }));
    });
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(data) as KeeperStatus);
      } catch (err) {
        reject(new TierStackError(ErrorCode.Protocol, `the keeper at ${path} answered no JSON: ${data.slice(0, 200)}`, { cause: err }));
      }
    });
  });
}
