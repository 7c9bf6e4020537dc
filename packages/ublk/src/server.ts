/**
 * A device server: builds a stack from a small configuration, brings a block device up over it,
 * optionally makes it a swap area, and publishes its state and live stats under a state
 * directory so that `tierstack ublk list|del` and `tierstack monitor` (other processes) find it.
 * The CLI's `tierstack ublk add` runs this in the foreground until SIGINT/SIGTERM.
 */
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { createTierStack, MemoryTier, FileTier, ErrorCode, TierStackError, badArgument, silentLogger, type Logger, type TierStack } from '@tierstack/core';
import { createBlockDevice, type BlockDevice, type Transport } from './device.js';
import { swapOn, swapOff, activeSwaps } from './swap.js';
import type { DeviceStats } from './stats.js';
import { nativeAddon } from './native.js';

export const DEFAULT_STATE_DIR = '/run/tierstack/ublk';

export interface ServeOptions {
  name: string;
  sizeBytes: number;
  transport?: Transport;
  queues?: number;
  depth?: number;
  /** FileTier directory under the DRAM tier; without it the stack is DRAM only. */
  dataDir?: string;
  /** DRAM tier budget (MiB); default 64, or the whole device when there is no data dir. */
  memoryMiB?: number;
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
  swap: boolean;
  startedAt: string;
}

export interface RunningServer {
  device: BlockDevice;
  stack: TierStack;
  state: DeviceState;
  stop(): Promise<void>;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

async function defaultStack(o: ServeOptions, log: Logger): Promise<TierStack> {
  const memoryMiB = o.memoryMiB ?? (o.dataDir ? 64 : Math.ceil(o.sizeBytes / (1 << 20)));
  const tiers = [new MemoryTier({ maxSize: memoryMiB << 20, name: 'dram' })];
  return createTierStack({
    tiers: o.dataDir ? [...tiers, await FileTier.open({ dir: o.dataDir, name: 'file' })] : tiers,
    name: `ublk-${o.name}`,
    logger: log,
  });
}

export async function serveDevice(o: ServeOptions): Promise<RunningServer> {
  const log = o.logger ?? silentLogger;
  if (!NAME_RE.test(o.name)) throw badArgument(`device name must match ${NAME_RE} (got ${o.name})`);
  const stateDir = o.stateDir ?? DEFAULT_STATE_DIR;
  mkdirSync(stateDir, { recursive: true });
  const existing = readState(stateDir, o.name);
  if (existing && pidAlive(existing.pid)) throw new TierStackError(ErrorCode.Exists, `device ${o.name} is already served by pid ${existing.pid}`);
  const stack = o.stack ?? (await defaultStack(o, log));
  let device: BlockDevice;
  try {
    device = await createBlockDevice({
      stack,
      sizeBytes: o.sizeBytes,
      name: o.name,
      namespace: `ublk/${o.name}`,
      logger: log,
      ...(o.transport ? { transport: o.transport } : {}),
      ...(o.queues ? { queues: o.queues } : {}),
      ...(o.depth ? { depth: o.depth } : {}),
    });
  } catch (err) {
    await stack.close();
    throw err;
  }
  const state: DeviceState = {
    name: o.name,
    pid: process.pid,
    transport: device.transport,
    path: device.path,
    id: device.id,
    sizeBytes: o.sizeBytes,
    namespace: device.namespace,
    ...(o.dataDir ? { dataDir: o.dataDir } : {}),
    swap: o.swapPriority !== undefined,
    startedAt: new Date().toISOString(),
  };
  const statePath = join(stateDir, `${o.name}.json`);
  const statsPath = join(stateDir, `${o.name}.stats.json`);
  const publishStats = (): void => {
    const tmp = `${statsPath}.tmp`;
    writeFileSync(tmp, JSON.stringify({ at: Date.now(), device: device.stats(), stack: stack.stats() }));
    renameSync(tmp, statsPath);
  };
  writeFileSync(statePath, JSON.stringify(state, null, 2));
  publishStats();
  const timer = setInterval(publishStats, 1000);
  timer.unref();
  if (o.swapPriority !== undefined) {
    try {
      await swapOn(device.path, { priority: o.swapPriority });
    } catch (err) {
      clearInterval(timer);
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
}
