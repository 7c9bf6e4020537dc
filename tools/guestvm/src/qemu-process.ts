/** Runs QEMU to completion with a deadline, watching the guest console for a kernel panic. */
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { GuestErrorCode, GuestVmError } from './errors.js';

export interface QemuOutcome {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** The console showed a kernel panic (QEMU was then stopped if the guest did not reset itself). */
  panicked: boolean;
  qemuStderr: string;
}

export interface QemuRunOptions {
  timeoutMs: number;
  env: NodeJS.ProcessEnv;
  /** The file QEMU writes the serial console to. */
  consoleLog: string;
}

const PANIC = /Kernel panic - not syncing/;
// After a panic the kernel should reset at once (panic=-1 + -no-reboot ends QEMU), but under
// TCG it sometimes stalls on the way; give it this long to flush the console, then stop it.
const PANIC_GRACE_MS = 2_000;
const CONSOLE_POLL_MS = 500;

export function runQemu(qemu: string, args: readonly string[], o: QemuRunOptions): Promise<QemuOutcome> {
  return new Promise((resolvePromise, reject) => {
    // coreutils timeout is a backstop that outlives us: if this process is SIGKILLed (a test
    // worker torn down), the guest still dies shortly after its deadline.
    const backstopSeconds = String(Math.ceil(o.timeoutMs / 1000) + 10);
    const child = spawn('timeout', ['-s', 'KILL', backstopSeconds, qemu, ...args], { env: o.env, stdio: ['ignore', 'ignore', 'pipe'] });
    let qemuStderr = '';
    child.stderr.on('data', (b: Buffer) => {
      qemuStderr = (qemuStderr + b.toString('utf8')).slice(-8192);
    });
    // timeout(1) puts itself and QEMU in their own process group: kill the whole group.
    const killGuest = () => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    };
    let timedOut = false;
    let panicked = false;
    let panicTimer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      killGuest();
    }, o.timeoutMs);

    let consoleOffset = 0;
    let consoleCarry = '';
    let polling = false;
    const poll = setInterval(() => {
      if (polling || panicked) return;
      polling = true;
      readFrom(o.consoleLog, consoleOffset)
        .then((chunk) => {
          consoleOffset += chunk.length;
          const text = consoleCarry + chunk.toString('utf8');
          consoleCarry = text.slice(-64); // a match may straddle two reads
          if (PANIC.test(text)) {
            panicked = true;
            panicTimer = setTimeout(killGuest, PANIC_GRACE_MS);
          }
        })
        .catch(() => undefined)
        .finally(() => {
          polling = false;
        });
    }, CONSOLE_POLL_MS);

    // If the test process exits (vitest tearing down), take the guest with it.
    const onExit = killGuest;
    process.once('exit', onExit);
    const cleanup = () => {
      clearTimeout(timer);
      clearTimeout(panicTimer);
      clearInterval(poll);
      process.removeListener('exit', onExit);
    };
    child.on('error', (err) => {
      cleanup();
      reject(new GuestVmError(GuestErrorCode.Unsupported, `cannot start QEMU (${qemu}): ${err.message}`, { cause: err }));
    });
    child.on('close', (exitCode, signal) => {
      cleanup();
      // Known noise from TCG emulating -cpu max; keep real messages only.
      qemuStderr = qemuStderr
        .split('\n')
        .filter((l) => l && !/host doesn't support requested feature|TCG doesn't support requested feature/.test(l))
        .join('\n');
      resolvePromise({ exitCode, signal, timedOut: timedOut && !panicked, panicked, qemuStderr });
    });
  });
}

async function readFrom(path: string, offset: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    if (size <= offset) return Buffer.alloc(0);
    const buf = Buffer.alloc(size - offset);
    const { bytesRead } = await fh.read(buf, 0, buf.length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}
