/**
 * The restore anchor and the tools to measure against it fairly, shared by the `restore` suite
 * and `tierstack demo`:
 *   - the C on-demand UFFD handler (packages/uffd/bench/uffd_ondemand.c: Firecracker's example "on_demand"
 *     handler's way: one UFFDIO_COPY of one page per fault from a MAP_PRIVATE mmap of the memory
 *     file, REMOVE → zero pages), compiled with the system C compiler and driven over stdio;
 *   - the Firecracker-faithful client (@tierstack/faas's native-test/fc_client.c, built from its
 *     source, not modified) run pinned to a CPU;
 *   - thread placement: pinning every thread of this process (so tierstack's handler threads —
 *     JS, fault threads, libuv pool, and any created later, which inherit it — share the CPU the
 *     C handler gets) and reading back where each thread may run.
 */
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { cpus as osCpus } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';

/** The C baselines of the uffd suites live with the package they measure: packages/uffd/bench/. */
export const uffdBenchDir = join(dirname(createRequire(import.meta.url).resolve('@tierstack/uffd/package.json')), 'bench');

export const ONDEMAND_SOURCE = join(uffdBenchDir, 'uffd_ondemand.c');

/** Compiles the C on-demand handler into `dir` (again when the source is newer). */
export function buildOnDemandHandler(dir: string): string {
  const out = join(dir, 'uffd_ondemand');
  if (existsSync(out) && statSync(out).mtimeMs > statSync(ONDEMAND_SOURCE).mtimeMs) return out;
  try {
    execFileSync(process.env['CC'] ?? 'gcc', ['-O2', '-o', out, ONDEMAND_SOURCE], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw new Error(`cannot compile the C on-demand handler (is gcc installed? apt-get install -y gcc): ${(err as Error).message.split('\n')[0]}`);
  }
  return out;
}

export interface OnDemandStats {
  faults: number;
  copies: number;
  zeropages: number;
  removes: number;
  eexist: number;
  eagain: number;
}

/** A running C on-demand handler (one VM at a time, as many VMs in a row as connect). */
export class OnDemandHandler {
  private readonly lines: AsyncIterator<string>;
  private stderr = '';
  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    readonly socketPath: string,
  ) {
    this.lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    child.stderr.on('data', (d) => (this.stderr += String(d)));
  }

  /** Starts the handler on `socketPath` for `memFile`, pinned to `cpu` (undefined: not pinned). */
  static async start(exe: string, o: { socketPath: string; memFile: string; cpu?: number | undefined }): Promise<OnDemandHandler> {
    const child = spawn(exe, [o.socketPath, o.memFile, String(o.cpu ?? -1)], { stdio: ['pipe', 'pipe', 'pipe'] });
    const h = new OnDemandHandler(child, o.socketPath);
    const first = await h.next();
    if (first !== 'ready') throw new Error(`the C on-demand handler did not start: ${first ?? ''} ${h.stderr}`.trim());
    return h;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  private async next(): Promise<string | undefined> {
    const r = await this.lines.next();
    return r.done ? undefined : r.value;
  }

  /** Waits for the next VM's handshake: its pid. */
  async serving(): Promise<number> {
    const l = await this.next();
    const m = /^serving (\d+)/.exec(l ?? '');
    if (!m) throw new Error(`C on-demand handler: expected a VM, got: ${l ?? `exit ${this.stderr}`}`);
    return Number(m[1]);
  }

  /** Waits for the VM being served to hang up: what the handler did for it. */
  async done(): Promise<OnDemandStats> {
    const l = await this.next();
    if (!l?.startsWith('done ')) throw new Error(`C on-demand handler: expected the end of a VM, got: ${l ?? `exit ${this.stderr}`}`);
    const s: Record<string, number> = {};
    for (const kv of l.slice(5).split(' ')) {
      const [k, v] = kv.split('=');
      s[k!] = Number(v);
    }
    return s as unknown as OnDemandStats;
  }

  stop(): void {
    this.child.stdin.end();
    setTimeout(() => this.child.kill(), 200).unref();
  }
}

// ---------------------------------------------------------------------------------------------
// Thread placement.

/** CPUs this machine has (from the kernel's view of this process). */
export function cpuCount(): number {
  return osCpus().length;
}

/**
 * Where the restore comparisons run handler and client: TIERSTACK_BENCH_RESTORE_CPUS =
 * "<handler cpu>,<client cpu>" (default "1,1" on a machine with 2+ CPUs: both on one CPU, so a
 * fault is a switch on that CPU rather than two cross-CPU wake-ups, which cost ~40 us each way on
 * these VMs and vary with the neighbours' load); "none" pins nothing (undefined).
 */
export function restoreCpus(): { handler: number; client: number } | undefined {
  const env = process.env['TIERSTACK_BENCH_RESTORE_CPUS'];
  if (env === 'none') return undefined;
  const [h, c] = (env ?? (cpuCount() > 1 ? '1,1' : '0,0')).split(',').map(Number);
  if (!Number.isInteger(h) || h! < 0) throw new Error(`TIERSTACK_BENCH_RESTORE_CPUS: expected "<handler cpu>,<client cpu>" or "none", got "${env}"`);
  return { handler: h!, client: Number.isInteger(c) ? c! : h! };
}

/** Whether `taskset` (util-linux) is there to pin processes with. */
export function canPin(): boolean {
  try {
    execFileSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Pins every thread of this process to `cpus` (threads created later inherit the mask of the
 * thread creating them). Returns a function that gives every thread the main thread's former CPUs again.
 */
export function pinProcess(cpus: number[]): () => void {
  const before = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? `0-${cpuCount() - 1}`;
  execFileSync('taskset', ['-a', '-p', '-c', cpus.join(','), String(process.pid)], { stdio: 'ignore' });
  return () => execFileSync('taskset', ['-a', '-p', '-c', before, String(process.pid)], { stdio: 'ignore' });
}

/** Where this process's threads may run, e.g. "24 threads on CPU 1" (or the exceptions). */
export function threadPlacement(pid = process.pid): string {
  const by = new Map<string, string[]>();
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return 'unknown (no /proc)';
  }
  for (const t of tasks) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
      const cpus = /Cpus_allowed_list:\s*(\S+)/.exec(status)?.[1] ?? '?';
      const name = /Name:\s*(.*)/.exec(status)?.[1]?.trim() ?? t;
      by.set(cpus, [...(by.get(cpus) ?? []), name]);
    } catch {
      // the thread ended meanwhile
    }
  }
  return [...by.entries()].map(([cpus, names]) => `${names.length} thread${names.length === 1 ? '' : 's'} on CPU ${cpus}`).join(', ');
}

/** `taskset -c <cpu> <binary> <args...>`, or the bare command when not pinning. */
export function pinnedCommand(binary: string, args: string[], cpu: number | undefined): [string, string[]] {
  return cpu === undefined ? [binary, args] : ['taskset', ['-c', String(cpu), binary, ...args]];
}
