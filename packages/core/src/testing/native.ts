/**
 * The native half of the testing kit: core's test-only addon (binding.gyp target
 * `tierstack_core_testing`, sources in native/testing/, headers in include/tierstack/testing/),
 * never loaded by the library itself.
 *
 * - `NativeReferenceTier`: a PageStore whose C ABI handle is the kit's reference store (a native
 *   hash map with dirty flags, TS_PUT_PROMOTION and fault injection): a native tier for tests and
 *   benchmarks where no real one is built.
 * - Drivers that call a handle from native threads the way a front-end does: `driveStore` (the
 *   benchmark loop), `runStoreOps` (one operation from many threads, every read checked),
 *   `stressStore` (random concurrent traffic), `readStorePages`.
 * - `runNativeStoreConformance(label, factory)`: the C ABI conformance suite, one vitest test per
 *   rule, for a tier's handle (the native counterpart of runPageStoreConformance).
 */
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorFromNativeStatus, TsStatus } from '../errors.js';
import { namespaceId } from '../keys.js';
import { loadNativeAddon, type NativePageStoreHandle } from '../native.js';
import { BasePageStore, DEFAULT_PAGE_SIZE, type PageStore, type PutOptions } from '../page-store.js';

/** A StackClient made by the testing addon (createClient): a whole stack as a front-end sees it. */
export interface NativeClientHandle {
  readonly __tierstackTestClient: unique symbol;
}

export interface DriveOptions {
  /** Where in `pages` the walk starts (successive calls can walk the whole sequence). */
  start?: number;
  /** Per-call wall latencies in ns (`latencies` in the result). */
  latencies?: boolean;
  /** TS_PUT_* flags of puts. */
  flags?: number;
  /** The byte every page put holds (default 0x5a). */
  fill?: number;
}

export interface DriveResult {
  /** TsStatus.Ok, or the status of the call that failed (the loop stopped there). */
  status: number;
  /** Gets: pages not found. */
  misses: number;
  calls: number;
  wallNs: number;
  /** CPU time of the driving thread. */
  cpuNs: number;
  latencies?: Float64Array;
}

export interface OpsOptions {
  threads?: number;
  batch?: number;
  rounds?: number;
  /** How the pages are shared out: contiguous shares (default), batches dealt round-robin, or all to every thread. */
  split?: 'range' | 'deal' | 'all';
  /** Put: the fillPage() version written. */
  version?: number;
  /** Get: the versions a found page may hold (checked byte for byte); none = not checked. */
  versions?: number[];
  /** Put: TS_PUT_* flags (default TS_PUT_DIRTY). */
  flags?: number;
}

export interface OpsResult {
  found: number;
  misses: number;
  mismatches: number;
  /** Pages answered TS_E_CHECKSUM. */
  checksum: number;
  /** Failed calls and pages answered with another negative status. */
  errors: number;
  lastError: number;
  /** Found pages by the stack level that served them (clients; always level 0 for a handle). */
  byLevel: number[];
}

export interface StressOptions {
  threads?: number;
  /** Operations per thread. */
  ops?: number;
  /** Pages 0..span-1, shared by every thread. */
  span?: number;
  maxBatch?: number;
  /** One put in N is TS_PUT_DIRTY (0: never). */
  dirtyEvery?: number;
  /** One operation in N is a remove (0: never). */
  removeEvery?: number;
  seed?: number;
}

export interface StressResult {
  puts: number;
  gets: number;
  hits: number;
  removes: number;
  /** Pages read that were not one whole write of that page. */
  mismatches: number;
  errors: number;
  noSpace: number;
  /** Pages answered TS_E_CHECKSUM (a torn copy detected and withheld); not counted in `errors`. */
  checksum: number;
  lastError: number;
}

export interface NativeConformanceSpec {
  /** A cache: a stored clean page may be gone (a miss), never wrong. */
  lossy?: boolean;
  /** Check TS_PUT_PROMOTION: a promoted copy never replaces a dirty one. */
  promotion?: boolean;
  threads?: number;
  /** TS_PUT_* flags of the cases' puts. */
  putFlags?: number;
  /**
   * A read racing a write of the same page may answer TS_E_CHECKSUM (bytes withheld) instead of
   * one whole version: for tiers whose writes are not atomic to readers (RDMA one-sided writes).
   */
  checksumOnRace?: boolean;
}

export interface ConformanceCaseReport {
  failures: string[];
  failed: number;
  checked: number;
  found: number;
  misses: number;
}

type Target = NativePageStoreHandle | NativeClientHandle;

export interface CoreTestingAddon {
  createReferenceStore(pageSize: number, name: string): NativePageStoreHandle;
  referenceStore(h: NativePageStoreHandle, op: 'get' | 'put' | 'remove' | 'fail' | 'count' | 'close', ns?: bigint, pages?: Float64Array, data?: Buffer, arg?: number): unknown;
  driveStore(h: NativePageStoreHandle, ns: bigint, op: 'get' | 'put' | 'remove', pages: Float64Array, batch: number, calls: number, options?: DriveOptions): Promise<DriveResult>;
  driveStoreSync(h: NativePageStoreHandle, ns: bigint, op: 'get' | 'put' | 'remove', pages: Float64Array, batch: number, calls: number, options?: DriveOptions): DriveResult;
  runOps(t: Target, ns: bigint, op: 'get' | 'put' | 'remove' | 'flush', pages: Float64Array, options?: OpsOptions): Promise<OpsResult>;
  stressStore(t: Target, ns: bigint, options?: StressOptions): Promise<StressResult>;
  readPages(h: NativePageStoreHandle, ns: bigint, pages: Float64Array, out: Buffer, status: Int32Array, batch: number, threads: number): Promise<number>;
  conformanceCases(): string[];
  conformancePages(name: string, spec?: NativeConformanceSpec): Float64Array;
  conformanceCase(h: NativePageStoreHandle, ns: bigint, ns2: bigint, name: string, spec?: NativeConformanceSpec): Promise<ConformanceCaseReport>;
  createClient(jsPath: object, maxBatchPages?: number): NativeClientHandle;
  closeClient(c: NativeClientHandle): void;
  getOnJsThread(c: NativeClientHandle, ns: bigint, page: number): { rc: number; status: number };
  /** A native tier that reads and writes through the client's stack (on the calling thread). */
  createClientStore(c: NativeClientHandle): NativePageStoreHandle;
}

let addon: CoreTestingAddon | undefined;

/** Core's testing addon (TS_ERR_NATIVE_MISSING saying what to build when it is not built). */
export function coreTestingAddon(): CoreTestingAddon {
  addon ??= loadNativeAddon<CoreTestingAddon>({
    packageDir: join(dirname(fileURLToPath(import.meta.url)), '..', '..'),
    name: 'tierstack_core_testing',
    packageName: '@tierstack/core',
  });
  return addon;
}

const pageList = (pages: ArrayLike<number>): Float64Array => (pages instanceof Float64Array ? pages : Float64Array.from(pages));
const nsId = (ns: string | bigint): bigint => (typeof ns === 'bigint' ? ns : namespaceId(ns));

/**
 * The benchmark loop: `calls` batches of `batch` pages walking `pages` (wrapping around), through
 * the handle's C ABI from a native thread of its own. Stops at the first failed call (`status`).
 */
export function driveStore(
  handle: NativePageStoreHandle,
  ns: string | bigint,
  op: 'get' | 'put' | 'remove',
  pages: ArrayLike<number>,
  batch: number,
  calls: number,
  options: DriveOptions = {},
): Promise<DriveResult> {
  return coreTestingAddon().driveStore(handle, nsId(ns), op, pageList(pages), batch, calls, options);
}

/** driveStore on the calling (JS) thread: only for a tier that never waits for JavaScript. */
export function driveStoreSync(
  handle: NativePageStoreHandle,
  ns: string | bigint,
  op: 'get' | 'put' | 'remove',
  pages: ArrayLike<number>,
  batch: number,
  calls: number,
  options: DriveOptions = {},
): DriveResult {
  return coreTestingAddon().driveStoreSync(handle, nsId(ns), op, pageList(pages), batch, calls, options);
}

/** One operation over `pages` from native threads (a handle or a client); gets are checked against fillPage(). */
export function runStoreOps(
  target: Target,
  ns: string | bigint,
  op: 'get' | 'put' | 'remove' | 'flush',
  pages: ArrayLike<number>,
  options: OpsOptions = {},
): Promise<OpsResult> {
  return coreTestingAddon().runOps(target, nsId(ns), op, pageList(pages), options);
}

/** Random puts/gets/removes of random batch sizes from many native threads over shared pages. */
export function stressStore(target: Target, ns: string | bigint, options: StressOptions = {}): Promise<StressResult> {
  return coreTestingAddon().stressStore(target, nsId(ns), options);
}

/** Native threads read `pages` (batches dealt round-robin) into `out`; their statuses into `status`. */
export function readStorePages(
  handle: NativePageStoreHandle,
  ns: string | bigint,
  pages: ArrayLike<number>,
  out: Buffer,
  status: Int32Array,
  batch = 32,
  threads = 1,
): Promise<number> {
  return coreTestingAddon().readPages(handle, nsId(ns), pageList(pages), out, status, batch, threads);
}

/**
 * A native DRAM tier for tests: the kit's reference store (a hash map behind the page-store C
 * ABI), usable both as a PageStore and through its handle by native front-ends.
 */
export class NativeReferenceTier extends BasePageStore {
  readonly #handle: NativePageStoreHandle;
  readonly #closeHandle: boolean;

  /** `closeHandle: false` keeps the handle serving native callers after close(). */
  constructor(options: { pageSize?: number; name?: string; closeHandle?: boolean } = {}) {
    super(options.name ?? 'native-reference', options.pageSize ?? DEFAULT_PAGE_SIZE);
    this.#handle = coreTestingAddon().createReferenceStore(this.pageSize, this.name);
    this.#closeHandle = options.closeHandle ?? true;
  }

  override get nativeHandle(): NativePageStoreHandle {
    return this.#handle;
  }

  /** Makes pages answer with a TS_E_* status (e.g. TsStatus.Checksum); TsStatus.Ok clears. */
  failPages(ns: string, pages: ArrayLike<number>, status: number): void {
    coreTestingAddon().referenceStore(this.#handle, 'fail', namespaceId(ns), pageList(pages), undefined, status);
  }

  /** Pages held. */
  count(): number {
    return coreTestingAddon().referenceStore(this.#handle, 'count') as number;
  }

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const tmp = Buffer.alloc(out.length);
    const st = coreTestingAddon().referenceStore(this.#handle, 'get', namespaceId(ns), Float64Array.from(pages), tmp) as Int32Array;
    let hits = 0;
    // A page made to fail (failPages) is a miss here, as a damaged page is in CxlTier: only
    // native callers see its status.
    for (let i = 0; i < pages.length; i++) {
      if (st[i] !== TsStatus.PageFound) continue;
      tmp.copy(out, i * this.pageSize, i * this.pageSize, (i + 1) * this.pageSize);
      found[i] = 1;
      hits++;
    }
    return hits;
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, options: PutOptions): Promise<void> {
    const flags = (options.dirty ? 1 : 0) | (options.promotion ? 2 : 0); // TS_PUT_DIRTY | TS_PUT_PROMOTION
    const rc = coreTestingAddon().referenceStore(this.#handle, 'put', namespaceId(ns), Float64Array.from(pages), data, flags) as number;
    if (rc !== TsStatus.Ok) throw errorFromNativeStatus(rc, `${this.name} put`);
  }

  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    const rc = coreTestingAddon().referenceStore(this.#handle, 'remove', namespaceId(ns), Float64Array.from(pages)) as number;
    if (rc !== TsStatus.Ok) throw errorFromNativeStatus(rc, `${this.name} remove`);
  }

  protected override async doClose(): Promise<void> {
    if (this.#closeHandle) coreTestingAddon().referenceStore(this.#handle, 'close');
  }
}

export interface NativeConformanceOptions extends NativeConformanceSpec {
  /** Per-test timeout in ms (default 60 s). */
  timeout?: number;
  /** Makes `pages` of namespace `ns` writable through the handle first (an RDMA pool allocates their slabs). */
  prepare?: (store: PageStore, ns: string, pages: number[]) => Promise<void>;
  /** Called after each test's store is closed. */
  cleanup?: () => Promise<void> | void;
}

/**
 * The C ABI conformance suite (include/tierstack/testing/conformance.hpp): one vitest test per
 * rule — misses, round trips in batches of 1 to 1024 pages, overwrites, removes, namespaces,
 * empty batches, promotions over dirty pages (with `promotion`), threads on disjoint and on
 * shared pages — each run from native threads against `store.nativeHandle`.
 *
 *   runNativeStoreConformance('CxlTier', () => CxlTier.open({ ... }), { lossy: true, promotion: true });
 */
export function runNativeStoreConformance(
  label: string,
  factory: () => Promise<PageStore> | PageStore,
  options: NativeConformanceOptions = {},
): void {
  const timeout = options.timeout ?? 60_000;
  const { prepare, cleanup, timeout: _t, ...spec } = options;
  describe(`C ABI conformance: ${label}`, () => {
    // The case list comes from the addon; a missing addon fails the one test that needs it.
    let cases: string[];
    try {
      cases = coreTestingAddon().conformanceCases();
    } catch (err) {
      it('loads core’s testing addon', () => {
        throw err;
      });
      return;
    }
    for (const name of cases) {
      if (name === 'promotion' && !spec.promotion) continue;
      it(
        name,
        async () => {
          const store = await factory();
          try {
            const handle = store.nativeHandle;
            expect(handle, `${label} has no nativeHandle`).toBeDefined();
            const tag = randomBytes(4).toString('hex');
            const ns = `native-conf-${name}-${tag}`;
            const ns2 = `${ns}-2`;
            store.registerNamespace?.(ns);
            store.registerNamespace?.(ns2);
            if (prepare) {
              const pages = [...coreTestingAddon().conformancePages(name, spec)];
              if (pages.length > 0) {
                await prepare(store, ns, pages);
                await prepare(store, ns2, pages);
              }
            }
            const r = await coreTestingAddon().conformanceCase(handle!, namespaceId(ns), namespaceId(ns2), name, spec);
            expect(r.failures, `${r.failed} of ${r.checked} checks failed`).toEqual([]);
            expect(r.checked).toBeGreaterThan(0);
          } finally {
            await store.close();
            await cleanup?.();
          }
        },
        timeout,
      );
    }
  });
}
