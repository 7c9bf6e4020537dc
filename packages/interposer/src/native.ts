/**
 * The native parts of @tierstack/interposer: the server-side addon (the copy-on-write page store,
 * the listening socket) and the path of the LD_PRELOAD library.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCode, TierStackError, loadNativeAddon, type JsPath, type NativePageStoreHandle } from '@tierstack/core';

const packageDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const APT = ['gcc', 'g++', 'make', 'python3'];

export interface CowStoreStats {
  gets: number;
  puts: number;
  removes: number;
  pagesRead: number;
  pagesFound: number;
  pagesWritten: number;
  pagesRemoved: number;
  /** Pages found by native tiers (served with no JavaScript). */
  nativePages: number;
  /** Pages found through the stack's JS path. */
  jsPathPages: number;
  /** Reads of a fork child resolved to its parent's snapshot; copies made for children. */
  cowReads: number;
  cowCopies: number;
  errors: number;
  /** Write-behind: pages queued for the stack, reads served from the queue, write retries. */
  queuedWrites: number;
  queueHits: number;
  writeRetries: number;
}

export interface NativeCowStore {
  handle: NativePageStoreHandle;
  addLayer(child: bigint, source: bigint, pending: BigUint64Array): Promise<void>;
  dropLayer(ns: bigint): Promise<void>;
  pendingPages(ns: bigint): Promise<number>;
  op(op: 'get' | 'put' | 'remove', ns: bigint, pages: Float64Array, data?: Buffer): Promise<Int32Array>;
  stats(): CowStoreStats;
  drain(): Promise<number>;
  close(): void;
}

export interface HelloReceipt {
  conn: number;
  fds: number[];
  message: Buffer;
  pid: number;
  uid: number;
  gid: number;
}

export interface InterposerAddon {
  createCowStore(jsPath: JsPath): NativeCowStore;
  listenUnix(path: string): number;
  acceptHello(listenFd: number, timeoutMs: number, size: number): Promise<HelloReceipt>;
  shutdownFd(fd: number): void;
  closeFd(fd: number): void;
}

let addon: InterposerAddon | undefined;

export function interposerAddon(): InterposerAddon {
  addon ??= loadNativeAddon<InterposerAddon>({ packageDir, name: 'tierstack_interposer', packageName: '@tierstack/interposer', aptPackages: APT });
  return addon;
}

/**
 * The LD_PRELOAD library (libtierstack_run: build/Release/tierstack_run.so). Throws
 * TS_ERR_NATIVE_MISSING when it is not built.
 */
export function preloadLibraryPath(): string {
  const path = join(packageDir, 'build', 'Release', 'tierstack_run.so');
  if (!existsSync(path)) {
    throw new TierStackError(
      ErrorCode.NativeMissing,
      `the tierstack run library is not built (looked for ${path}): install the system packages: apt-get install -y ${APT.join(' ')}; then build it: pnpm --filter @tierstack/interposer run build:native (or run the README's setup: npm run setup)`,
    );
  }
  return path;
}
