/**
 * Helpers for tests, benchmarks and the demo: the Firecracker stand-in client (a small C program
 * compiled on first use with the system C compiler) and how to run it.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TierStackError, ErrorCode } from '@tierstack/core';

export const FC_CLIENT_SOURCE = fileURLToPath(new URL('../native-test/fc_client.c', import.meta.url));

/** Compiles native-test/fc_client.c into `dir` (once; again when the source is newer). */
export function buildFirecrackerTestClient(dir: string): string {
  const out = join(dir, 'fc_client');
  if (existsSync(out) && statSync(out).mtimeMs > statSync(FC_CLIENT_SOURCE).mtimeMs) return out;
  try {
    execFileSync(process.env['CC'] ?? 'gcc', ['-O2', '-o', out, FC_CLIENT_SOURCE], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw new TierStackError(ErrorCode.Unsupported, `cannot compile the Firecracker test client (is gcc installed? apt-get install -y gcc): ${(err as Error).message}`, {
      cause: err,
    });
  }
  return out;
}

export interface FcClientResult {
  pages?: number;
  mismatches?: number;
  first_bad?: number;
  dontneed_nonzero?: number;
  sigbus?: boolean;
  closed_by_handler?: boolean;
  error?: string;
  /** CLOCK_MONOTONIC ns (comparable with process.hrtime.bigint()). */
  t_connect?: number;
  t_sent?: number;
  t_start?: number;
  t_done?: number;
}

/** Starts the client; `result` resolves with its JSON report when it exits. */
export function runFirecrackerTestClient(binary: string, args: string[]): { child: ChildProcess; result: Promise<FcClientResult> } {
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  const result = new Promise<FcClientResult>((resolve) =>
    child.on('exit', (code, signal) => {
      const line = out.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(line) as FcClientResult);
      } catch {
        resolve({ error: `client exited (${signal ?? code}) without a report: ${line}` });
      }
    }),
  );
  return { child, result };
}
