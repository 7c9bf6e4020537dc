/**
 * Running memd as a process: size parsing, a pino logger on stderr, one "ready" JSON line on
 * stdout (addresses, for scripts and tests), and a clean shutdown on SIGINT/SIGTERM. Used by
 * `tierstack memd` (packages/cli) and by memd-main.ts (the standalone entry tests spawn).
 */
import { pino } from 'pino';
import { TierStackError, ErrorCode } from '@tierstack/core';
import { startMemd, type MemdOptions, type MemdServer } from './memd.js';

const UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Parses "4096", "64M", "1G", "512k", "1GiB" into bytes. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new TierStackError(ErrorCode.BadArgument, `not a size: "${text}" (use e.g. 4096, 64M, 1G)`);
  const n = Math.round(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!);
  if (!Number.isSafeInteger(n)) throw new TierStackError(ErrorCode.BadArgument, `size out of range: "${text}"`);
  return n;
}

/** Parses a positive whole number ("4"); anything else is TS_ERR_BAD_ARGUMENT naming the flag. */
export function parseCount(text: string, what: string): number {
  if (!/^\s*\d+\s*$/.test(text) || Number(text) <= 0 || !Number.isSafeInteger(Number(text))) {
    throw new TierStackError(ErrorCode.BadArgument, `${what} must be a positive whole number, not "${text}"`);
  }
  return Number(text);
}

export interface DaemonOptions extends Omit<MemdOptions, 'logger'> {
  logLevel?: string;
}

/** Starts the daemon with a stderr logger, prints the ready line, stops on SIGINT/SIGTERM. */
export async function runMemdDaemon(options: DaemonOptions, out: (line: string) => void = (l) => process.stdout.write(l + '\n')): Promise<MemdServer> {
  const logger = pino({ name: 'memd', level: options.logLevel ?? 'info' }, pino.destination(2));
  const token = options.token ?? process.env.TIERSTACK_MEMD_TOKEN;
  const server = await startMemd({ ...options, ...(token ? { token } : {}), logger });
  out(JSON.stringify({ ready: true, pid: process.pid, ...server.address() }));
  const stop = (signal: string): void => {
    logger.info({ signal }, 'memd stopping');
    // Slabs die with the process anyway: do not let a slow provider teardown keep it alive.
    setTimeout(() => {
      logger.warn('memd: shutdown took longer than 3 s; exiting');
      process.exit(0);
    }, 3000).unref();
    void server.close().then(() => process.exit(0));
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
  return server;
}
