/**
 * createBlockDevice(): a tier stack as a kernel block device.
 *
 * Transports: 'ublk' (/dev/ublkbN, kernels with ublk_drv) and 'fuse-loop' (/dev/loopN over a
 * one-file FUSE filesystem, any kernel with FUSE and loop). Both serve requests on native
 * threads through one BlockHandler and a StackClient: native tiers directly, JS tiers through
 * one batched hand-off to this thread (so this thread must stay free: never block it on I/O to
 * the device).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createJsPath, ErrorCode, TierStackError, badArgument, silentLogger, type Logger, type PageStore } from '@tierstack/core';
import { nativeAddon, type NativeDevice } from './native.js';
import { summarize, type DeviceStats } from './stats.js';
import { DeviceTrace, levelNames } from './trace.js';

export type Transport = 'ublk' | 'fuse-loop';

export interface BlockDeviceOptions {
  /** The stack (or any PageStore) holding the device's pages; its page size must be 4096. */
  stack: PageStore;
  /** Device size in bytes (a multiple of 4096). */
  sizeBytes: number;
  /** Default: 'ublk' when /dev/ublk-control exists, else 'fuse-loop'. */
  transport?: Transport;
  /** The namespace of the device's pages (default `blockdev/<name>`). */
  namespace?: string;
  /** A name for logs and the namespace (default: a random one). */
  name?: string;
  /** ublk: hardware queues (one thread + io_uring each), depth per queue, largest request. */
  queues?: number;
  depth?: number;
  maxIoBytes?: number;
  /** ublk: ask for this device id (default: the driver picks); with `recover`, the device to take over. */
  devId?: number;
  /**
   * ublk: add the device with user recovery (UBLK_F_USER_RECOVERY | _REISSUE): when this process
   * dies — even by SIGKILL — the device stays, its users wait, and the requests it had taken are
   * re-issued to the next server (`recover`). Nobody else deletes it then: a device nobody
   * recovers keeps its users waiting (`ublkDelete` / `tierstack ublk del` removes it). Default false.
   */
  recovery?: boolean;
  /** ublk: take over device `devId`, added with `recovery` by a server that died, instead of adding one. */
  recover?: boolean;
  /** fuse-loop: FUSE worker threads (default 16) and the loop device's logical block size (4096). */
  threads?: number;
  blockSize?: number;
  /**
   * mlock the server's native I/O buffers (default true), so serving swap never waits on swap.
   * The whole process is NOT mlockall'ed: V8 madvise()s free heap pages and aborts when that
   * fails on locked memory. Keep the server outside any memory-limited cgroup instead.
   */
  lockMemory?: boolean;
  /** Pages per hand-off to the JS thread (default 1024). */
  maxBatchPages?: number;
  logger?: Logger;
}

export interface BlockDevice {
  readonly name: string;
  readonly transport: Transport;
  /** The block device: /dev/ublkbN or /dev/loopN. */
  readonly path: string;
  /** ublk device id, or the loop device's minor. */
  readonly id: number;
  readonly namespace: string;
  readonly sizeBytes: number;
  /** fuse-loop: whether the loop device does direct I/O (no double caching). */
  readonly directIo: boolean;
  /** Whether the native I/O buffers are mlocked. */
  readonly memoryLocked: boolean;
  /** ublk with user recovery: the device outlives this process (see BlockDeviceOptions.recovery). */
  readonly recoverable: boolean;
  stats(): DeviceStats;
  /**
   * The request trace (off until started): a bounded native ring the I/O threads fill without
   * allocating or calling JS; `take()` drains it. Reads name the tier that served them ('zero':
   * no tier held the page); writes, discards and flushes are 'stack'.
   */
  readonly trace: DeviceTrace;
  /** Stops the device (the kernel side first, then the threads) and releases the stack client. */
  close(): Promise<void>;
}

/** The transport this machine offers: ublk when /dev/ublk-control can be opened. */
export function defaultTransport(): Transport {
  return nativeAddon().ublkProbe() === 0 ? 'ublk' : 'fuse-loop';
}

/** Throws TS_ERR_UNSUPPORTED / TS_ERR_PERMISSION when ublk cannot be used here. */
export function assertUblkAvailable(): void {
  const errno = nativeAddon().ublkProbe();
  if (errno === 0) return;
  if (errno === 13 || errno === 1) {
    throw new TierStackError(ErrorCode.Permission, 'ublk: /dev/ublk-control is not accessible (run as root, or use --transport fuse-loop)', {
      details: { errno },
    });
  }
  throw new TierStackError(
    ErrorCode.Unsupported,
    'ublk: /dev/ublk-control is absent (this kernel has no ublk_drv loaded: modprobe ublk_drv, or use --transport fuse-loop)',
    { details: { errno } },
  );
}

function toTypedError(err: unknown, what: string): TierStackError {
  const e = err as { code?: string; message?: string; errno?: number };
  const code = (Object.values(ErrorCode) as string[]).includes(e?.code ?? '') ? (e.code as ErrorCode) : ErrorCode.Io;
  return new TierStackError(code, `${what}: ${e?.message ?? String(err)}`, { cause: err, details: { errno: e?.errno } });
}

export async function createBlockDevice(options: BlockDeviceOptions): Promise<BlockDevice> {
  const log = options.logger ?? silentLogger;
  const { stack, sizeBytes } = options;
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 4096 !== 0) {
    throw badArgument(`sizeBytes must be a positive multiple of 4096 (got ${sizeBytes})`);
  }
  if (stack.pageSize !== 4096) {
    throw new TierStackError(ErrorCode.PageSize, `a block device needs 4096-byte pages; the stack has ${stack.pageSize}`);
  }
  const addon = nativeAddon();
  const transport = options.transport ?? defaultTransport();
  if (transport !== 'ublk' && transport !== 'fuse-loop') throw badArgument(`unknown transport ${String(transport)}`);
  const recoverable = transport === 'ublk' && (options.recovery === true || options.recover === true);
  if (options.recover && (transport !== 'ublk' || options.devId === undefined)) throw badArgument('recover needs the ublk transport and the devId to take over');
  if (transport === 'ublk') assertUblkAvailable();
  const name = options.name ?? `dev-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const namespace = options.namespace ?? `blockdev/${name}`;

  const jsPath = createJsPath(stack, { logger: log });
  const ns = jsPath.register(namespace);
  const mountDir = transport === 'fuse-loop' ? mkdtempSync(join(tmpdir(), 'tierstack-fuse-')) : undefined;
  let native: NativeDevice;
  try {
    native = new addon.Device(
      {
        transport,
        sizeBytes,
        ns,
        ...(mountDir ? { mountDir } : {}),
        ...(options.blockSize ? { blockSize: options.blockSize } : {}),
        ...(options.threads ? { threads: options.threads } : {}),
        ...(options.queues ? { queues: options.queues } : {}),
        ...(options.depth ? { depth: options.depth } : {}),
        ...(options.maxIoBytes ? { maxIoBytes: options.maxIoBytes } : {}),
        ...(options.devId !== undefined ? { devId: options.devId } : {}),
        recovery: recoverable,
        recover: options.recover === true,
        ...(options.maxBatchPages ? { maxBatchPages: options.maxBatchPages } : {}),
        lockBuffers: options.lockMemory !== false,
      },
      jsPath,
    );
  } catch (err) {
    if (mountDir) rmSync(mountDir, { recursive: true, force: true });
    throw toTypedError(err, `${transport} device`);
  }

  // Tear the kernel device down if the process exits without close() (not on SIGKILL: then the
  // kernel does it — ublk stops a device whose server died; the loop device clears itself).
  // A recoverable device is left to the next server, whatever ends this process.
  const onExit = (): void => {
    if (!recoverable) native.stopSync();
  };
  process.on('exit', onExit);
  let info: { path: string; id: number; directIo: boolean };
  try {
    info = await native.start();
  } catch (err) {
    process.off('exit', onExit);
    await native.stop().catch(() => undefined);
    throw toTypedError(err, `starting the ${transport} device`);
  } finally {
    // The FUSE mount was detached once the loop device held the file: the directory is empty.
    if (mountDir) rmSync(mountDir, { recursive: true, force: true });
  }
  const { lockErrno } = native.stats();
  const memoryLocked = options.lockMemory !== false && lockErrno === 0;
  if (options.lockMemory !== false && lockErrno !== 0) {
    log.warn({ errno: lockErrno }, 'mlock of the I/O buffers failed: they may be paged out while the device serves swap (RLIMIT_MEMLOCK; CAP_IPC_LOCK lifts it)');
  }
  log.info({ transport, path: info.path, id: info.id, sizeBytes, namespace, directIo: info.directIo, memoryLocked }, 'block device up');

  let closing: Promise<void> | undefined;
  return {
    name,
    transport,
    path: info.path,
    id: info.id,
    namespace,
    sizeBytes,
    directIo: info.directIo,
    memoryLocked,
    recoverable,
    stats: () => summarize(native.stats()),
    trace: new DeviceTrace(native, levelNames(stack)),
    close() {
      closing ??= (async () => {
        await native.stop();
        process.off('exit', onExit);
        log.info({ path: info.path }, 'block device down');
      })();
      return closing;
    },
  };
}
