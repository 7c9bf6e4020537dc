/**
 * runWithTierStack: what `tierstack run -- <cmd>` does. Starts a RunServer on a private socket,
 * starts the command with libtierstack_run.so preloaded (and the TIERSTACK_RUN_* variables that
 * configure it), forwards SIGINT/SIGTERM/SIGHUP to it, waits for it and for every process still
 * using the server (children that outlive it), then closes the server. The command's exit status
 * is passed through.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { type Logger, type MetricsRegistry, type PageStore, badArgument } from '@tierstack/core';
import { preloadLibraryPath } from './native.js';
import { RunServer, DEFAULT_MIN_SIZE, type SessionEnd } from './server.js';
import type { CowStoreStats } from './native.js';

export interface RunOptions {
  stack: PageStore;
  command: string;
  args?: string[];
  /** Allocations of at least this many bytes go to the tier stack (default 16 MiB). */
  minSize?: number;
  /** Resident bytes of big allocations allowed per process (default: no limit). */
  budget?: number;
  /** Virtual size of each process's arena (default 32 GiB). */
  arena?: number;
  /** Pages installed per fault (1..64, default 16). */
  faultAround?: number;
  faultThreads?: number;
  /** Pin the fault threads to these CPUs (sched_setaffinity); the command itself is not pinned. */
  cpus?: number[];
  /** Extra environment for the command (on top of this process's). */
  env?: NodeJS.ProcessEnv;
  stdio?: StdioOptions;
  /** TIERSTACK_RUN_DEBUG=1 in the command: the library logs its decisions on stderr. */
  debug?: boolean;
  logger?: Logger;
  registry?: MetricsRegistry;
  /** Called once the server is up and the command started (with `stdio: 'pipe'`, read its output here). */
  onStart?: (info: { pid: number; server: RunServer; child: ChildProcess }) => void;
}

export interface RunResult {
  /** Exit code of the command, or null when a signal ended it. */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The status a shell would report: code, or 128 + signal number. */
  status: number;
  sessions: SessionEnd[];
  store: CowStoreStats;
}

const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** The environment that makes a process use a RunServer at `socketPath`. */
export function runEnvironment(socketPath: string, o: { minSize?: number; budget?: number; arena?: number; debug?: boolean } = {}): Record<string, string> {
  const lib = preloadLibraryPath();
  const pre = process.env['LD_PRELOAD'];
  return {
    LD_PRELOAD: pre ? `${lib}:${pre}` : lib,
    TIERSTACK_RUN_SOCKET: socketPath,
    TIERSTACK_RUN_MIN_SIZE: String(o.minSize ?? DEFAULT_MIN_SIZE),
    ...(o.budget !== undefined ? { TIERSTACK_RUN_BUDGET: String(o.budget) } : {}),
    ...(o.arena !== undefined ? { TIERSTACK_RUN_ARENA: String(o.arena) } : {}),
    ...(o.debug ? { TIERSTACK_RUN_DEBUG: '1' } : {}),
  };
}

export async function runWithTierStack(o: RunOptions): Promise<RunResult> {
  if (!o.command) throw badArgument('runWithTierStack needs a command');
  for (const [k, v] of [
    ['minSize', o.minSize],
    ['budget', o.budget],
    ['arena', o.arena],
  ] as const) {
    if (v !== undefined && (!Number.isSafeInteger(v) || v <= 0)) throw badArgument(`${k} must be a positive number of bytes`);
  }
  if (o.budget !== undefined && o.budget < 64 * 4096) throw badArgument('budget must be at least 256 KiB');
  preloadLibraryPath(); // fails clearly before anything starts
  const server = await RunServer.start({
    stack: o.stack,
    ...(o.faultAround !== undefined ? { faultAround: o.faultAround } : {}),
    ...(o.faultThreads !== undefined ? { faultThreads: o.faultThreads } : {}),
    ...(o.cpus !== undefined ? { cpus: o.cpus } : {}),
    ...(o.logger ? { logger: o.logger } : {}),
    ...(o.registry ? { registry: o.registry } : {}),
  });
  const forwarders = new Map<NodeJS.Signals, () => void>();
  try {
    const env = { ...process.env, ...o.env, ...runEnvironment(server.socketPath, o) };
    const child = spawn(o.command, o.args ?? [], { env, stdio: o.stdio ?? 'inherit' });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    for (const sig of SIGNALS) {
      const fwd = (): void => void child.kill(sig);
      forwarders.set(sig, fwd);
      process.on(sig, fwd);
    }
    if (child.pid !== undefined) o.onStart?.({ pid: child.pid, server, child });
    const { code, signal } = await exited;
    // Processes the command left behind that still use big allocations keep the server busy.
    await server.idle();
    const { constants } = await import('node:os');
    const status = code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0);
    return { code, signal, status, sessions: server.endedSessions(), store: server.storeStats() };
  } finally {
    for (const [sig, fwd] of forwarders) process.off(sig, fwd);
    await server.close();
  }
}
