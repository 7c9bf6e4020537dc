/** runInGuest: boot the guest, run one command, return its output and exact exit status. */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { GuestErrorCode, GuestVmError, tail } from './errors.js';
import { GUEST_JOB_DIR } from './initramfs.js';
import { JOB_STARTED_MARKER, jobScript, setupStepsScript } from './job-script.js';
import { prepareGuest } from './prepare.js';
import { hostLoopsPerJiffy, qemuArgs, type QemuPlan } from './qemu-args.js';
import { runQemu } from './qemu-process.js';
import { SETUP_STEPS, type GuestSetupStep } from './setup-steps.js';

export interface RunInGuestOptions {
  /** A shell command line (run by /bin/sh -c) or an argv array (exec'd as is). */
  command: string | readonly string[];
  /** Kill the guest after this long and throw TS_ERR_TIMEOUT. Default 60 s. */
  timeoutMs?: number;
  /** Setup steps run as root before the command: 'ublk' -> /dev/ublk-control; 'cxl-devdax' -> /dev/dax0.0 (needs `cxl`). */
  setup?: readonly GuestSetupStep[];
  /** Adds an emulated persistent CXL type-3 device backed by a host file. */
  cxl?: {
    /** Device size in MiB, a multiple of 256. Default 256. */
    sizeMiB?: number;
    /**
     * Host file backing the device memory (created sparse if absent); default: a temporary file.
     * Its bytes survive the run; the label area does not (each run starts with empty labels, so
     * the 'cxl-devdax' step can create the region and namespace again).
     */
    backingFile?: string;
  };
  /** Adds a virtio-blk disk, /dev/vda in the guest (raw image, created sparse if absent). */
  disk?: {
    sizeMiB: number;
    /** Host path of the image; default: a temporary file removed after the run. */
    path?: string;
  };
  /**
   * Environment of the command, added to the defaults: PATH (the host's, then the cache's modprobe,
   * cxl, ndctl, daxctl), HOME=/root, LANG=C.UTF-8, TERM=dumb,
   * TIERSTACK_GUEST=1 and TIERSTACK_GUEST_RESULTS (a writable directory whose files appear in `resultsDir`).
   */
  env?: Record<string, string>;
  /** Working directory of the command (host path, seen read-only + overlay). Default process.cwd(). */
  cwd?: string;
  /**
   * Host directory shared writable with the guest at $TIERSTACK_GUEST_RESULTS; default: a temporary
   * directory removed after the run. Everything else the guest writes is lost at power-off.
   */
  resultsDir?: string;
  /** Guest memory in MiB (at most 2048). Default 1024. */
  memoryMiB?: number;
  /** Guest vCPUs. Default 2. */
  cpus?: number;
  /** Extra kernel command-line arguments. */
  kernelArgs?: readonly string[];
  /** Keep the per-run job directory (job script, console log, output files) and print its path. */
  keepJobDir?: boolean;
  /**
   * Called with the command's output as it is written (polled a few times a second), for
   * progress in long runs; the result still carries all of it.
   */
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
}

export interface GuestResult {
  stdout: string;
  stderr: string;
  /** The command's exit status exactly as the guest's shell saw it (128+n for a signal). */
  exitCode: number;
  /** From QEMU start to exit. */
  durationMs: number;
  /** The guest's serial console (kernel messages, init); usually short (quiet boot). */
  console: string;
  /** Output of the setup steps (set -x trace), if any ran. */
  setupLog: string;
  /** uname -r of the guest kernel. */
  kernelRelease: string;
  /** Host paths of the files the run used, for inspection after the run. */
  files: { cxlBackingFile?: string; disk?: string; jobDir?: string };
}

/** Where TIERSTACK_GUEST_RESULTS points inside the guest. */
export const GUEST_RESULTS_DIR = `${GUEST_JOB_DIR}/results`;

function badArgument(message: string): GuestVmError {
  return new GuestVmError(GuestErrorCode.BadArgument, message);
}

function validate(o: RunInGuestOptions): void {
  if (typeof o.command === 'string' ? o.command.length === 0 : !Array.isArray(o.command) || o.command.length === 0) {
    throw badArgument('runInGuest: command must be a non-empty string or argv array');
  }
  for (const s of o.setup ?? []) {
    if (!SETUP_STEPS.includes(s)) throw badArgument(`runInGuest: unknown setup step ${JSON.stringify(s)} (known: ${SETUP_STEPS.join(', ')})`);
  }
  if (o.setup?.includes('cxl-devdax') && !o.cxl) throw badArgument("runInGuest: setup 'cxl-devdax' needs the cxl option");
  const size = o.cxl?.sizeMiB ?? 256;
  if (o.cxl && (!Number.isInteger(size) || size <= 0 || size % 256 !== 0)) {
    throw badArgument(`runInGuest: cxl.sizeMiB must be a positive multiple of 256, got ${size}`);
  }
  if (o.disk && (!Number.isInteger(o.disk.sizeMiB) || o.disk.sizeMiB <= 0)) throw badArgument('runInGuest: disk.sizeMiB must be a positive integer');
  const mem = o.memoryMiB ?? 1024;
  if (!Number.isInteger(mem) || mem < 256 || mem > 2048) throw badArgument(`runInGuest: memoryMiB must be 256..2048, got ${mem}`);
  if (o.timeoutMs !== undefined && !(o.timeoutMs > 0)) throw badArgument('runInGuest: timeoutMs must be positive');
  const cpus = o.cpus ?? 2;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 8) throw badArgument(`runInGuest: cpus must be 1..8, got ${cpus}`);
  for (const k of Object.keys(o.env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw badArgument(`runInGuest: bad environment variable name ${JSON.stringify(k)}`);
  }
}

async function sparseFile(path: string, sizeMiB: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const fh = await open(path, existsSync(path) ? 'r+' : 'w+');
  try {
    const { size } = await fh.stat();
    if (size < sizeMiB * 1024 * 1024) await fh.truncate(sizeMiB * 1024 * 1024);
  } finally {
    await fh.close();
  }
}

/** Boots after a panic that struck before the job started (see runInGuest). */
const BOOT_RETRIES = 2;

const readOr = (path: string, fallback = ''): Promise<string> => readFile(path, 'utf8').catch(() => fallback);

/**
 * Boots a guest (Debian 6.12 kernel under QEMU TCG) whose root is the host's root filesystem
 * (read-only, with a throw-away tmpfs overlay), runs `command` as root in it and returns its
 * stdout, stderr and exit status. A non-zero status is a result, not an error; the errors are
 * TS_ERR_TIMEOUT, TS_ERR_GUEST_CRASH and TS_ERR_GUEST_SETUP (with the console tail) and
 * TS_ERR_UNSUPPORTED (the harness cannot run here; see guestCapability()).
 */
export async function runInGuest(options: RunInGuestOptions): Promise<GuestResult> {
  validate(options);
  const guest = await prepareGuest();
  const timeoutMs = options.timeoutMs ?? 60_000;
  const jobDir = await mkdtemp(join(tmpdir(), 'tierstack-guest-'));
  const ownResults = options.resultsDir === undefined;
  const resultsDir = ownResults ? join(jobDir, 'results') : resolve(options.resultsDir!);
  await mkdir(join(jobDir, 'results'), { recursive: true }); // the mount point inside the job share
  await mkdir(resultsDir, { recursive: true });
  const files: GuestResult['files'] = {};
  try {
    const plan: QemuPlan = {
      tools: guest.tools,
      kernel: guest.kernel,
      initramfs: guest.initramfs,
      memoryMiB: options.memoryMiB ?? 1024,
      cpus: options.cpus ?? 2,
      jobDir,
      resultsDir,
      consoleLog: join(jobDir, 'console.log'),
      extraKernelArgs: options.kernelArgs,
      lpj: hostLoopsPerJiffy(await readOr('/proc/cpuinfo'), await readOr(join(guest.kernel.root, 'boot', `config-${guest.kernel.release}`))),
    };
    if (options.disk) {
      plan.diskPath = resolve(options.disk.path ?? join(jobDir, 'disk.img'));
      await sparseFile(plan.diskPath, options.disk.sizeMiB);
      files.disk = plan.diskPath;
    }
    if (options.cxl) {
      const sizeMiB = options.cxl.sizeMiB ?? 256;
      const backingFile = resolve(options.cxl.backingFile ?? join(jobDir, 'cxl-mem0.raw'));
      plan.cxl = { backingFile, sizeMiB, lsaFile: join(jobDir, 'cxl-lsa0.raw'), lsaSizeMiB: 1 };
      await sparseFile(backingFile, sizeMiB);
      files.cxlBackingFile = backingFile;
    }
    const hostPath = process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin';
    const env: Record<string, string> = {
      // The cache's modprobe/cxl/ndctl/daxctl come last: host tools win where both exist.
      PATH: `${hostPath}:${guest.tools.binDir}`,
      HOME: '/root',
      LANG: 'C.UTF-8',
      TERM: 'dumb',
      TIERSTACK_GUEST: '1',
      TIERSTACK_GUEST_RESULTS: GUEST_RESULTS_DIR,
      ...options.env,
    };
    await writeFile(join(jobDir, 'setup.sh'), setupStepsScript(options.setup ?? []));
    await writeFile(
      join(jobDir, 'job.sh'),
      jobScript({
        command: options.command,
        env,
        cwd: resolve(options.cwd ?? process.cwd()),
        setup: options.setup ?? [],
        tools: guest.tools,
        kernel: guest.kernel,
        hostPath,
      }),
    );
    const started = Date.now();
    const boot = () =>
      runQemu(guest.tools.qemu, qemuArgs(plan), {
        timeoutMs,
        consoleLog: plan.consoleLog,
        follow: [
          ...(options.onStdout ? [{ path: join(jobDir, 'stdout'), onData: options.onStdout }] : []),
          ...(options.onStderr ? [{ path: join(jobDir, 'stderr'), onData: options.onStderr }] : []),
        ],
        env: { ...process.env, LD_LIBRARY_PATH: guest.tools.libraryPath, QEMU_MODULE_DIR: guest.tools.qemuModuleDir },
      });
    let outcome = await boot();
    // Multi-threaded TCG occasionally runs a stale translation of kernel text that another vCPU
    // is live-patching (an int3 from text_poke_bp outlives the patch: "Oops: int3" in
    // sched_clock_cpu at ~1.3 s, once in dozens of boots). That kills the boot before any of
    // our code runs; it says nothing about the command, so boot again — never once the job
    // started (its marker is the first thing the job script writes).
    for (let retry = 1; retry <= BOOT_RETRIES && outcome.panicked && !existsSync(join(jobDir, JOB_STARTED_MARKER)); retry++) {
      const reason = /(Oops|BUG|Kernel panic)[^\n]*/.exec(await readOr(plan.consoleLog))?.[0] ?? 'kernel panic';
      process.stderr.write(`guestvm: guest kernel panicked while booting (${reason.trim()}); booting again (${retry}/${BOOT_RETRIES})\n`);
      await rm(plan.consoleLog, { force: true });
      outcome = await boot();
    }
    const durationMs = Date.now() - started;
    const consoleText = await readOr(plan.consoleLog);
    const stdout = await readOr(join(jobDir, 'stdout'));
    const stderr = await readOr(join(jobDir, 'stderr'));
    const setupLog = await readOr(join(jobDir, 'setup.log'));
    const status = await readOr(join(jobDir, 'status'), '');
    const consoleTail = consoleSummary(consoleText, outcome.qemuStderr);
    // A status file means the command finished: that is the result, even if the guest then
    // failed to power off in time.
    if (status.trim() === '') {
      if (outcome.timedOut) {
        throw new GuestVmError(GuestErrorCode.Timeout, `guest did not finish within ${timeoutMs} ms`, { consoleTail, setupLog: tail(setupLog), stdout, stderr });
      }
      if (existsSync(join(jobDir, 'setup-failed'))) {
        throw new GuestVmError(GuestErrorCode.Setup, `guest setup (${(options.setup ?? []).join(', ')}) failed`, { consoleTail, setupLog: tail(setupLog) });
      }
      throw new GuestVmError(
        GuestErrorCode.Crash,
        outcome.panicked
          ? 'guest kernel panicked before the command finished'
          : `guest stopped without reporting an exit status (qemu exit ${outcome.exitCode ?? outcome.signal})`,
        { consoleTail, setupLog: tail(setupLog), stdout, stderr },
      );
    }
    if (options.keepJobDir) files.jobDir = jobDir;
    return { stdout, stderr, exitCode: Number.parseInt(status, 10), durationMs, console: consoleText, setupLog, kernelRelease: guest.kernel.release, files };
  } finally {
    if (options.keepJobDir) {
      process.stderr.write(`guestvm: job directory kept at ${jobDir}\n`);
    } else {
      // Caller-supplied files (resultsDir, cxl.backingFile, disk.path) live outside jobDir.
      await rm(jobDir, { recursive: true, force: true });
      if (files.disk?.startsWith(jobDir)) delete files.disk;
      if (files.cxlBackingFile?.startsWith(jobDir)) delete files.cxlBackingFile;
    }
  }
}

/** The console's last lines, plus the kernel's panic/oops headline if it scrolled out of them. */
function consoleSummary(consoleText: string, qemuStderr: string): string {
  const text = `${consoleText}\n${qemuStderr ? `[qemu] ${qemuStderr}` : ''}`;
  const last = tail(text, 50);
  const headline = text
    .replace(/\r/g, '')
    .split('\n')
    .find((l) => /Kernel panic - not syncing|BUG:|Oops:/.test(l));
  return headline && !last.includes(headline) ? `${headline}\n[...]\n${last}` : last;
}
