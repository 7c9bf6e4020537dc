/**
 * The JavaScript path of a native front-end: what StackClient (include/tierstack/stack_client.hpp)
 * hands to the JS thread when a page is not in a native tier, or a write/remove/flush needs the
 * stack's JavaScript policy.
 *
 * A front-end calls `createJsPath(stack)` on the JS thread, registers the namespaces it serves
 * (native code only knows their 64-bit ids) and passes the result to its native constructor.
 * Requests of many native threads arrive together in one `handler` call; gets of the same
 * namespace in one batch become one `stack.get`, so a burst of faults costs one stack round trip.
 */
import { ErrorCode, NativeStatus, TsStatus, isTierStackError } from './errors.js';
import { namespaceId } from './keys.js';
import type { NativePageStoreHandle } from './native.js';
import type { PageStore } from './page-store.js';
import type { Logger } from './logger.js';
import { silentLogger } from './logger.js';
import type { NativeChainDescriptor, WritePolicy } from './tier-stack.js';

/** One hand-off from native threads: request i is ops[i] on ns[i], with counts[i] pages. */
export interface JsPathBatch {
  ops: Uint8Array;
  ns: BigUint64Array;
  counts: Uint32Array;
  /** The pages of all requests, request after request. */
  pages: Float64Array;
  /** The pages' bytes in the same order: filled for puts, to be filled for gets. */
  data: Buffer;
  /** Per page of a get: TsStatus.PageFound, TsStatus.PageMiss, or a negative TS_E_* status. */
  status: Int32Array;
  /** Per request: TsStatus.Ok or a negative TS_E_* status. */
  rc: Int32Array;
}

export const JsPathOp = { Get: 0, Put: 1, Remove: 2, Flush: 3 } as const;

export interface JsPathStats {
  batches: number;
  requests: number;
  pages: number;
  errors: number;
}

export interface JsPath {
  readonly pageSize: number;
  /** Native handles at the top of the stack, served on native threads. */
  readonly chain: NativePageStoreHandle[];
  /** Whether pages missed by the chain may still be found below it (in JS tiers). */
  readonly hasJsTiers: boolean;
  /** Whether writes, removes and flushes must go through the JS stack (multi-tier or JS-only). */
  readonly jsWrites: boolean;
  /** Whether a write may go straight into the native top tier (write-back with a native top). */
  readonly writeNative: boolean;
  readonly handler: (batch: JsPathBatch, done: () => void) => void;
  /** Makes a namespace known to the handler; returns its id (what native code passes). */
  register(ns: string): bigint;
  stats(): JsPathStats;
}

// TS_ERR_* code → the C ABI's TS_E_* status (the inverse of NativeStatus).
const statusOf = new Map<string, number>(Object.entries(NativeStatus).map(([status, code]) => [code, Number(status)]));

/** The TS_E_* status for an error thrown by a store (TS_E_IO when it has no known code). */
export function nativeStatusOf(err: unknown): number {
  const code = isTierStackError(err) ? err.code : undefined;
  return (code !== undefined && statusOf.get(code)) || TsStatus.Io;
}

/** A store made of tiers (TierStack, or anything that stacks tiers the same way): by capability. */
export interface LayeredStore extends PageStore {
  readonly tiers: readonly PageStore[];
  readonly writePolicy: WritePolicy;
  nativeChain(): NativeChainDescriptor;
}

/** True if `store` stacks tiers and can describe its native prefix (duck-typed, like isWriteBackCache). */
export function isLayeredStore(store: PageStore): store is LayeredStore {
  const s = store as Partial<LayeredStore>;
  return Array.isArray(s.tiers) && typeof s.nativeChain === 'function' && typeof s.writePolicy === 'string';
}

function tiersOf(store: PageStore): readonly PageStore[] {
  return isLayeredStore(store) ? store.tiers.flatMap((t) => tiersOf(t)) : [store];
}

export function createJsPath(store: PageStore, options: { logger?: Logger } = {}): JsPath {
  const log = options.logger ?? silentLogger;
  const names = new Map<bigint, string>();
  const counters: JsPathStats = { batches: 0, requests: 0, pages: 0, errors: 0 };
  const pageSize = store.pageSize;

  let chain: NativePageStoreHandle[];
  let hasJsTiers: boolean;
  let jsWrites: boolean;
  let writeNative: boolean;
  // A tier whose handle only reads (FileTier) needs its writes to go through JavaScript.
  const readOnly = (t: PageStore): boolean => t.nativeHandle !== undefined && t.nativeReadOnly === true;
  if (isLayeredStore(store)) {
    const desc = store.nativeChain();
    chain = desc.handles;
    // Pages the chain misses may be in JS tiers below it, or in the stack's write-back queues.
    hasJsTiers = desc.jsLevel < store.tiers.length || desc.jsQueues;
    // A stack of several tiers keeps its write-back queues in JS: writes that cannot land in
    // the native top tier (and every remove/flush) go through it.
    jsWrites = store.tiers.length > 1 || chain.length === 0 || readOnly(store.tiers[0]!);
    writeNative = chain.length > 0 && !readOnly(store.tiers[0]!) && store.writePolicy === 'write-back';
  } else if (store.nativeHandle !== undefined) {
    chain = [store.nativeHandle];
    hasJsTiers = false;
    jsWrites = readOnly(store);
    writeNative = !jsWrites;
  } else {
    chain = [];
    hasJsTiers = true;
    jsWrites = true;
    writeNative = false;
  }

  const nameOf = (id: bigint): string => {
    const ns = names.get(id);
    if (ns === undefined) throw Object.assign(new Error(`namespace id ${id} was not registered`), { code: ErrorCode.BadArgument });
    return ns;
  };

  async function run(batch: JsPathBatch): Promise<void> {
    const { ops, ns, counts, pages, data, status, rc } = batch;
    // Where each request's pages start in `pages`/`data`.
    const starts = new Array<number>(ops.length);
    for (let i = 0, p = 0; i < ops.length; i++) {
      starts[i] = p;
      p += counts[i]!;
    }
    const fail = (i: number, err: unknown): void => {
      counters.errors++;
      rc[i] = nativeStatusOf(err);
      log.warn({ err, op: ops[i], pages: counts[i] }, 'js path request failed');
    };

    // Gets of one namespace become one stack.get over a gathered page list.
    const gets = new Map<bigint, number[]>();
    const others: Promise<void>[] = [];
    for (let i = 0; i < ops.length; i++) {
      const start = starts[i]!;
      const n = counts[i]!;
      switch (ops[i]) {
        case JsPathOp.Get: {
          const list = gets.get(ns[i]!);
          if (list) list.push(i);
          else gets.set(ns[i]!, [i]);
          break;
        }
        case JsPathOp.Put:
          others.push(
            (async () => {
              await store.put(nameOf(ns[i]!), pages.subarray(start, start + n), data.subarray(start * pageSize, (start + n) * pageSize), { dirty: true });
            })().catch((err) => fail(i, err)),
          );
          break;
        case JsPathOp.Remove:
          others.push(store.remove(nameOf(ns[i]!), pages.subarray(start, start + n)).catch((err) => fail(i, err)));
          break;
        case JsPathOp.Flush:
          others.push(store.flush().catch((err) => fail(i, err)));
          break;
        default:
          rc[i] = TsStatus.BadArgument;
      }
    }
    for (const [id, reqs] of gets) {
      others.push(
        (async () => {
          // The common case: these requests sit side by side in the batch, so the stack can
          // write straight into the batch's buffer (no gather, no copy).
          const first = starts[reqs[0]!]!;
          const last = reqs[reqs.length - 1]!;
          const end = starts[last]! + counts[last]!;
          let total = 0;
          for (const i of reqs) total += counts[i]!;
          if (total === end - first) {
            const res = await store.get(nameOf(id), pages.subarray(first, end), { out: data.subarray(first * pageSize, end * pageSize) });
            for (let k = 0; k < total; k++) status[first + k] = res.found[k]!;
            return;
          }
          const list: number[] = [];
          for (const i of reqs) for (let k = 0; k < counts[i]!; k++) list.push(pages[starts[i]! + k]!);
          const res = await store.get(nameOf(id), list);
          let at = 0;
          for (const i of reqs) {
            const start = starts[i]!;
            for (let k = 0; k < counts[i]!; k++, at++) {
              if (res.found[at]) {
                res.data.copy(data, (start + k) * pageSize, at * pageSize, (at + 1) * pageSize);
                status[start + k] = TsStatus.PageFound;
              } else status[start + k] = TsStatus.PageMiss;
            }
          }
        })().catch((err) => {
          for (const i of reqs) fail(i, err);
        }),
      );
    }
    await Promise.all(others);
  }

  return {
    pageSize,
    chain,
    hasJsTiers,
    jsWrites,
    writeNative,
    handler(batch, done) {
      counters.batches++;
      counters.requests += batch.ops.length;
      counters.pages += batch.pages.length;
      run(batch).then(done, (err: unknown) => {
        // run() settles every request itself; this is a bug guard so native threads never hang.
        log.error({ err }, 'js path batch failed');
        batch.rc.fill(TsStatus.Io);
        done();
      });
    },
    register(ns: string): bigint {
      const id = namespaceId(ns);
      names.set(id, ns);
      // Native tiers that keep dirty pages written through their C ABI need the name behind the
      // id to hand those pages back for write-back (e.g. CxlTier.registerNamespace).
      for (const t of tiersOf(store)) t.registerNamespace?.(ns);
      return id;
    },
    stats: () => ({ ...counters }),
  };
}
