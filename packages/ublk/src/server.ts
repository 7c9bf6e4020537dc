/**
 * A device server: builds a stack from a small configuration, brings a block device up over it,
 * optionally makes it a swap area, and publishes its state and live stats under a state
 * directory so that `tierstack ublk list|del` and `tierstack monitor` (other processes) find it.
 * The CLI's `tierstack ublk add` runs this in the foreground until SIGINT/SIGTERM.
 *
 * Servers that survive themselves (ublk): the device is added with user recovery, so a server
 * that dies (kill -9, OOM, abort) leaves it waiting instead of gone; the next `serveDevice` of
 * the same name finds the dead server in the state directory and takes the device over
 * (`recover`), with the stack the state names — the swap area and the processes swapping to it
 * carry on, the requests the dead server had taken are re-issued. That only works if no
 * acknowledged write lived in the dead server alone: the default stack writes through to a file
 * tier (see defaultStack) and `serveDevice` makes a stack it is given write-through as well.
 */
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { createTierStack, MemoryTier, FileTier, ErrorCode, TierStackError, badArgument, silentLogger, type Logger, type PageStore, type TierStack } from '@tierstack/core';
import { createBlockDevice, defaultTransport, type BlockDevice, type Transport } from './device.js';
import { swapOn, swapOff, activeSwaps } from './swap.js';
import type { DeviceStats } from './stats.js';
import { nativeAddon } from './native.js';
import { serveControl } from './control.js';

export const DEFAULT_STATE_DIR = '/run/tierstack/ublk';

export interface ServeOptions {
  name: string;
  sizeBytes: number;
  transport?: Transport;
  queues?: number;
  depth?: number;
  /** FileTier directory (default `<stateDir>/<name>.pages`, removed by deleteDevice). */
  dataDir?: string;
  /** A DRAM cache above the file tier, MiB (default none: the page cache of the file does it). */
  memoryMiB?: number;
  /** ublk: add the device with user recovery so that it outlives this server (default true). */
  recovery?: boolean;
  /** ublk: take over the device a dead server of this name left: true (required), false (never:
   *  delete it and add a new one), 'auto' (default: when the state names a dead server). */
  recover?: boolean | 'auto';
  /** Make the device a swap area with this priority. */
  swapPriority?: number;
  /** Serve this stack instead of one built from dataDir/memoryMiB; the server closes it when it stops. */
  stack?: TierStack;
  stateDir?: string;
  logger?: Logger;
}

export interface DeviceState {
  name: string;
  pid: number;
  transport: Transport;
  path: string;
  id: number;
  sizeBytes: number;
  namespace: string;
  dataDir?: string;
  /** The data dir is the default one under the state dir (deleteDevice removes it). */
  ownsData?: boolean;
  memoryMiB?: number;
  swap: boolean;
  /** ublk user recovery: the device outlives its server; `recoveries` servers took it over so far. */
  recoverable?: boolean;
  recoveries?: number;
  startedAt: string;
  /** The control socket (request traces, page locations): see control.ts. */
  control?: string;
}

export interface RunningServer {
  device: BlockDevice;
  stack: TierStack;
  state: DeviceState;
  stop(): Promise<void>;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * The default stack: [DRAM cache (only with memoryMiB), FileTier(dataDir)], write-through. A write
 * is acknowledged once it is in the file (the kernel's page cache of it outlives this process; a
 * reboot does not keep it, and swap does not need it to), so a server killed at any moment has
 * lost nothing it acknowledged. The DRAM cache never holds the only copy of a page. Reads are
 * served natively from the file tier's C ABI handle when there is no DRAM cache.
 */
async function defaultStack(o: ServeOptions, dataDir: string, log: Logger): Promise<TierStack> {
  const tiers: PageStore[] = [];
  if (o.memoryMiB !== undefined && o.memoryMiB > 0) tiers.push(new MemoryTier({ maxSize: o.memoryMiB << 20, name: 'dram' }));
  tiers.push(await FileTier.open({ dir: dataDir, name: 'file' }));
  return createTierStack({ tiers, name: `ublk-${o.name}`, logger: log, policy: { write: 'write-through' } });
}

/** A stack the caller built, made write-through (same tiers) unless it is already, or has one tier. */
function writeThrough(stack: TierStack, log: Logger): TierStack {
  if (stack.writePolicy !== 'write-back' || stack.tiers.length < 2) return stack;
  return createTierStack({ tiers: [...stack.tiers], name: stack.name, logger: log, policy: { write: 'write-through' } });
}

export async function serveDevice(o: ServeOptions): Promise<RunningServer> {
  const log = o.logger ?? silentLogger;
  if (!NAME_RE.test(o.name)) throw badArgument(`device name must match ${NAME_RE} (got ${o.name})`);
  const stateDir = o.stateDir ?? DEFAULT_STATE_DIR;
  mkdirSync(stateDir, { recursive: true });
  const existing = readState(stateDir, o.name);
  if (existing && pidAlive(existing.pid)) throw new TierStackError(ErrorCode.Exists, `device ${o.name} is already served by pid ${existing.pid}`);
  // A dead server's recoverable ublk device: take it over (its size, pages and swap area with it).
  const orphan = existing?.transport === 'ublk' && existing.recoverable === true && existsSync(`/dev/ublkc${existing.id}`) ? existing : undefined;
  const recover = o.recover ?? 'auto';
  if (recover === true && !orphan) throw new TierStackError(ErrorCode.NotFound, `no recoverable ublk device named ${o.name} whose server died in ${stateDir}`);
  const takeOver = orphan !== undefined && recover !== false ? orphan : undefined;
  if (orphan && !takeOver) {
    log.warn({ name: o.name, id: orphan.id }, 'deleting the device a dead server left (recover: false)');
    nativeAddon().ublkDelete(orphan.id);
  }
  const sizeBytes = takeOver?.sizeBytes ?? o.sizeBytes;
  const ownsData = takeOver ? takeOver.ownsData === true : o.dataDir === undefined;
  const dataDir = takeOver?.dataDir ?? o.dataDir ?? join(stateDir, `${o.name}.pages`);
  const memoryMiB = takeOver ? takeOver.memoryMiB : o.memoryMiB;
  const transport = takeOver ? 'ublk' : o.transport;
  const recoverable = takeOver !== undefined || (o.recovery !== false && (transport ?? defaultTransport()) === 'ublk');
  const stack = o.stack ? writeThrough(o.stack, log) : await defaultStack({ ...o, ...(memoryMiB !== undefined ? { memoryMiB } : {}) }, dataDir, log);
  let device: BlockDevice;
  try {
    device = await createBlockDevice({
      stack,
      sizeBytes,
      name: o.name,
      namespace: takeOver?.namespace ?? `ublk/${o.name}`,
      logger: log,
      ...(transport ? { transport } : {}),
      ...(o.queues ? { queues: o.queues } : {}),
      ...(o.depth ? { depth: o.depth } : {}),
      recovery: recoverable,
      ...(takeOver ? { recover: true, devId: takeOver.id } : {}),
    });
  } catch (err) {
    await stack.close();
    throw err;
  }
  if (takeOver) log.warn({ name: o.name, id: takeOver.id, deadPid: takeOver.pid, recoveries: (takeOver.recoveries ?? 0) + 1 }, 'took over the device a dead server left');
  const state: DeviceState = {
    name: o.name,
    pid: process.pid,
    transport: device.transport,
    path: device.path,
    id: device.id,
    sizeBytes,
    namespace: device.namespace,
    ...(o.stack ? (o.dataDir ? { dataDir: o.dataDir } : {}) : { dataDir, ownsData }),
    ...(memoryMiB !== undefined ? { memoryMiB } : {}),
    swap: takeOver ? takeOver.swap : o.swapPriority !== undefined,
    recoverable,
    recoveries: takeOver ? (takeOver.recoveries ?? 0) + 1 : 0,
    startedAt: new Date().toISOString(),
  };
  const statePath = join(stateDir, `${o.name}.json`);
  const statsPath = join(stateDir, `${o.name}.stats.json`);
  const control = await serveControl(join(stateDir, `${o.name}.ctl`), device, stack, log).catch((err: unknown) => {
    // Tracing and page locations are extras: a device without them still serves.
    log.warn({ err }, 'no control socket');
    return undefined;
  });
  if (control) state.control = control.path;
  const publishStats = (): void => {
    const tmp = `${statsPath}.tmp`;
    writeFileSync(tmp, JSON.stringify({ at: Date.now(), device: device.stats(), stack: stack.stats() }));
    renameSync(tmp, statsPath);
  };
  writeFileSync(statePath, JSON.stringify(state, null, 2));
  publishStats();
  const timer = setInterval(publishStats, 1000);
  timer.unref();
  // A taken-over device is still the swap area it was (the kernel never let go of it).
  if (o.swapPriority !== undefined && !(takeOver && (await activeSwaps()).includes(device.path))) {
    try {
      await swapOn(device.path, { priority: o.swapPriority });
    } catch (err) {
      clearInterval(timer);
      await control?.close();
      await device.close();
      await stack.close();
      rmSync(statePath, { force: true });
      rmSync(statsPath, { force: true });
      throw err;
    }
  }
  log.info({ ...state }, 'device served');

  let stopping: Promise<void> | undefined;
  return {
    device,
    stack,
    state,
    stop() {
      stopping ??= (async () => {
        clearInterval(timer);
        await control?.close();
        if ((await activeSwaps()).includes(device.path)) await swapOff(device.path);
        await device.close();
        await stack.flush().catch((err: unknown) => log.error({ err }, 'flushing the stack failed'));
        await stack.close();
        rmSync(statePath, { force: true });
        rmSync(statsPath, { force: true });
      })();
      return stopping;
    },
  };
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function readState(stateDir: string, name: string): DeviceState | undefined {
  const p = join(stateDir, `${name}.json`);
  if (!existsSync(p)) return undefined;
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as DeviceState;
  } catch {
    return undefined;
  }
}

export function listStates(stateDir = DEFAULT_STATE_DIR): Array<DeviceState & { alive: boolean }> {
  if (!existsSync(stateDir)) return [];
  return readdirSync(stateDir)
    .filter((f) => f.endsWith('.json') && !f.endsWith('.stats.json'))
    .map((f) => readState(stateDir, f.slice(0, -5)))
    .filter((s): s is DeviceState => s !== undefined)
    .map((s) => ({ ...s, alive: pidAlive(s.pid) }));
}

export function readDeviceStats(name: string, stateDir = DEFAULT_STATE_DIR): { at: number; device: DeviceStats; stack: ReturnType<TierStack['stats']> } | undefined {
  const p = join(stateDir, `${name}.stats.json`);
  try {
    return JSON.parse(readFileSync(p, 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Stops a served device: SIGTERM to its server and wait for it to go; a ublk device whose
 * server died is stopped and deleted through /dev/ublk-control.
 */
export async function deleteDevice(name: string, options: { stateDir?: string; timeoutMs?: number } = {}): Promise<void> {
  const stateDir = options.stateDir ?? DEFAULT_STATE_DIR;
  const st = readState(stateDir, name);
  if (!st) throw new TierStackError(ErrorCode.NotFound, `no device named ${name} in ${stateDir}`);
  if (pidAlive(st.pid)) {
    process.kill(st.pid, 'SIGTERM');
    const deadline = Date.now() + (options.timeoutMs ?? 120_000);
    while (pidAlive(st.pid)) {
      if (Date.now() > deadline) throw new TierStackError(ErrorCode.Timeout, `server pid ${st.pid} of ${name} did not stop`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } else if (st.transport === 'ublk' && existsSync(`/dev/ublkc${st.id}`)) {
    nativeAddon().ublkDelete(st.id);
  }
  rmSync(join(stateDir, `${name}.json`), { force: true });
  rmSync(join(stateDir, `${name}.stats.json`), { force: true });
  if (st.ownsData && st.dataDir) rmSync(st.dataDir, { recursive: true, force: true });
}
