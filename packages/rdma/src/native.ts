/** The native addon of @tierstack/rdma (native/*.cpp), typed. */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadNativeAddon, type NativePageStoreHandle } from '@tierstack/core';

export interface NativeReplica {
  conn: number;
  addr: bigint;
  rkey: bigint;
  slabId: bigint;
}

export interface NativeSlabView {
  ns: bigint;
  index: number;
  present: number;
  replicas: Array<{ slot: number; conn: number; state: number; slabId: bigint; addr: bigint; rkey: bigint }>;
}

export interface NativeDonor {
  address(): { node: string; service: string };
  rawAddress(): Buffer;
  mrMode(): number;
  /** `key`: the requested MR key (ignored by providers that choose keys: FI_MR_PROV_KEY). */
  allocSlab(id: bigint, size: number, key?: bigint): { addr: bigint; rkey: bigint };
  freeSlab(id: bigint): boolean;
  stats(): { connections: number; slabs: number };
  close(): void;
}

export interface NativePool {
  connect(idx: number, node: string, service: string, rawAddress?: Buffer): Promise<void>;
  killConn(idx: number): void;
  connUp(idx: number): boolean;
  addSlab(ns: bigint, index: number, reps: NativeReplica[]): void;
  hasSlab(ns: bigint, index: number): boolean;
  addReplica(ns: bigint, index: number, rep: NativeReplica): number;
  copyReplica(ns: bigint, index: number, slot: number): Promise<void>;
  setReplicaState(ns: bigint, index: number, slot: number, state: number): boolean;
  // dropReplica, replaceLost and dropEmptySlab take the slab's io lock exclusively: on the JS
  // thread they only try it, and answer with a promise (the call finished on a job thread)
  // when a put or a replica copy holds it. Await the result either way.
  dropReplica(ns: bigint, index: number, slot: number): boolean | Promise<boolean>;
  replaceLost(ns: bigint, index: number, rep: NativeReplica): Float64Array | Promise<Float64Array>;
  slabs(): NativeSlabView[];
  /** Removes a slab that holds no page; its replicas (to give back), or [] if it is not empty. */
  dropEmptySlab(ns: bigint, index: number): Array<{ conn: number; slabId: bigint }> | Promise<Array<{ conn: number; slabId: bigint }>>;
  takeTouched(): Array<[number, bigint]>;
  degradedEvents(): number;
  /**
   * Per-page status; with syncUs > 0 a small batch may complete on the calling thread (no promise).
   * get/put never wait on the calling (JS) thread: posts refused there and slab locks found
   * taken are left to a job thread (counted in counters()).
   */
  get(ns: bigint, pages: Float64Array, out: Buffer, syncUs?: number): Int32Array | Promise<Int32Array>;
  /** flags: TS_PUT_DIRTY (1) / TS_PUT_PROMOTION (2), as on the C ABI. */
  put(ns: bigint, pages: Float64Array, data: Buffer, syncUs?: number, flags?: number): void | Promise<void>;
  remove(ns: bigint, pages: Float64Array): number;
  handle(): NativePageStoreHandle;
  /** The tier has a backup: its native handle, or null when it has none (C ABI put/remove then refuse). */
  setBackup(handle: NativePageStoreHandle | null): void;
  /** Refills pages from the native backup by namespace id; how many were restored. */
  restoreFromBackup(ns: bigint, pages: Float64Array): Promise<number>;
  /** What the JS thread left to job threads: ops whose post was refused (EAGAIN), slab locks found taken. */
  counters(): { postsDeferred: number; locksDeferred: number };
  close(): Promise<void>;
}

/** A libfabric environment setting and whether tierstack chose it (false: the user's). */
export interface ProviderSetting {
  name: string;
  value: string;
  ours: boolean;
}

export interface RdmaAddon {
  Donor: new (provider: string, node: string, service: string) => NativeDonor;
  /** Applies the provider's environment defaults unless set (before the first libfabric use). */
  providerDefaults(provider: string): ProviderSetting[];
  Pool: new (opts: { provider: string; pageSize: number; slabPages: number; opTimeoutMs: number; name: string }) => NativePool;
  kReplicaActive: number;
  kReplicaSyncing: number;
  kReplicaDead: number;
}

export const APT_PACKAGES = ['libfabric-dev', 'libfabric-bin', 'rdma-core', 'ibverbs-providers', 'ibverbs-utils', 'iproute2'];
export const packageDir = join(dirname(fileURLToPath(import.meta.url)), '..');

let addon: RdmaAddon | undefined;

export function rdmaAddon(): RdmaAddon {
  addon ??= loadNativeAddon<RdmaAddon>({ packageDir, name: 'tierstack_rdma', packageName: '@tierstack/rdma', aptPackages: APT_PACKAGES });
  return addon;
}
