/**
 * Making a block device a swap area and taking it away again (util-linux mkswap/swapon/swapoff).
 * The commands run asynchronously: swapping to a tierstack device needs this process's event
 * loop free while the kernel writes through it.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { ErrorCode, TierStackError, badArgument } from '@tierstack/core';

const run = promisify(execFile);

async function cmd(file: string, args: string[], what: string): Promise<string> {
  try {
    const { stdout } = await run(file, args, { timeout: 600_000 });
    return stdout;
  } catch (err) {
    const e = err as { code?: string; stderr?: string; message: string };
    if (e.code === 'ENOENT') throw new TierStackError(ErrorCode.Unsupported, `${what}: ${file} is not installed (apt-get install util-linux)`, { cause: err });
    throw new TierStackError(ErrorCode.Io, `${what}: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
}

export interface SwapOnOptions {
  /** swapon priority (-p), -1..32767; higher is used first. Default 100. */
  priority?: number;
  /** Pass discard to swapon (the device then removes freed swap pages from the stack). Default true. */
  discard?: boolean;
}

/** mkswap + swapon. */
export async function swapOn(device: string, options: SwapOnOptions = {}): Promise<void> {
  const prio = options.priority ?? 100;
  if (!Number.isInteger(prio) || prio < -1 || prio > 32767) throw badArgument(`swap priority must be an integer in -1..32767 (got ${prio})`);
  await cmd('mkswap', ['-L', 'tierstack', device], `mkswap ${device}`);
  const args = ['-p', String(prio)];
  if (options.discard !== false) args.push('--discard=pages');
  await cmd('swapon', [...args, device], `swapon ${device}`);
}

/** swapoff (brings every swapped-out page back into RAM first: may take a while). */
export async function swapOff(device: string): Promise<void> {
  await cmd('swapoff', [device], `swapoff ${device}`);
}

/** Active swap areas (paths from /proc/swaps). */
export async function activeSwaps(): Promise<string[]> {
  const text = await readFile('/proc/swaps', 'utf8');
  return text
    .split('\n')
    .slice(1)
    .map((l) => l.split(/\s+/)[0]!)
    .filter((p) => p.length > 0);
}
