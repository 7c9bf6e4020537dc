import { spawn } from 'node:child_process';

export interface ExecResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface ExecOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** argv[0] seen by the program (kmod dispatches on it: depmod, modprobe). */
  argv0?: string;
}

/** Runs a program to completion and collects its output; never throws for a non-zero exit. */
export function exec(file: string, args: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      argv0: options.argv0,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code, signal) =>
      resolve({
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        code: code ?? (signal ? 128 : 1),
      }),
    );
  });
}

/** Like exec, but a non-zero exit becomes an Error naming the command and its stderr. */
export async function execOk(file: string, args: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
  const r = await exec(file, args, options);
  if (r.code !== 0) {
    const msg = (r.stderr || r.stdout).trim().split('\n').slice(-10).join('\n');
    throw new Error(`${options.argv0 ?? file} ${args.join(' ')} exited with ${r.code}: ${msg}`);
  }
  return r;
}
