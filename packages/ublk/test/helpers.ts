import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Runs a command without blocking the event loop (the JS thread serves the device's JS tiers). */
export async function sh(cmd: string, opts: { timeout?: number } = {}): Promise<string> {
  const { stdout } = await execFileP('sh', ['-c', cmd], { timeout: opts.timeout ?? 60_000, maxBuffer: 64 << 20 });
  return stdout;
}
