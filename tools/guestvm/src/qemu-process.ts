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
  /** Files (the command's stdout/stderr on the job share) whose new bytes are handed over as they grow. */
  follow?: readonly { path: string; onData: (chunk: Buffer) => void }[];
}

const PANIC = /Kernel panic - not syncing/;
// After a panic the kernel should reset at once (panic=-1 + -no-reboot ends QEMU), but under
// TCG it sometimes stalls on the way; give it this long to flush the console, then stop it.
const PANIC_GRACE_MS = 2_000;
const POLL_MS = 250;

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

    let consoleCarry = '';
    const followers = [
      new FileFollower(o.consoleLog, (chunk) => {
        const text = consoleCarry + chunk.toString('utf8');
        consoleCarry = text.slice(-64); // a match may straddle two reads
        if (!panicked && PANIC.test(text)) {
          panicked = true;
          panicTimer = setTimeout(killGuest, PANIC_GRACE_MS);
        }
      }),
      ...(o.follow ?? []).map((f) => new FileFollower(f.path, f.onData)),
    ];
    let polling: Promise<void> | undefined;
    const drainAll = async () => {
      // A failing read (or a throwing callback) must not stop the others or the run.
      for (const f of followers) await f.drain().catch(() => undefined);
    };
    const poll = setInterval(() => {
      polling ??= drainAll().finally(() => {
        polling = undefined;
      });
    }, POLL_MS);

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
    child.on('close', async (exitCode, signal) => {
      cleanup();
      // Deliver whatever the guest wrote last before reporting the outcome.
      await polling;
      await drainAll();
      // Known noise from TCG emulating -cpu max; keep real messages only.
      qemuStderr = qemuStderr
        .split('\n')
        .filter((l) => l && !/host doesn't support requested feature|TCG doesn't support requested feature/.test(l))
        .join('\n');
      resolvePromise({ exitCode, signal, timedOut: timedOut && !panicked, panicked, qemuStderr });
    });
  });
}

/** Hands over the bytes appended to a file since the last call (the file may not exist yet). */
class FileFollower {
  private offset = 0;

  constructor(
    private readonly path: string,
    private readonly onData: (chunk: Buffer) => void,
  ) {}

  async drain(): Promise<void> {
    let fh;
    try {
      fh = await open(this.path, 'r');
    } catch {
      return;
    }
    try {
      const { size } = await fh.stat();
      if (size <= this.offset) return;
      const buf = Buffer.alloc(size - this.offset);
      const { bytesRead } = await fh.read(buf, 0, buf.length, this.offset);
      this.offset += bytesRead;
      if (bytesRead > 0) this.onData(buf.subarray(0, bytesRead));
    } finally {
      await fh.close();
    }
  }
}
