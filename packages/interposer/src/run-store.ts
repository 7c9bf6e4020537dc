/**
 * RunStore: the page store a `tierstack run` server's uffd engine serves from — the tier stack
 * behind the copy-on-write layer that gives fork children their own copy of the arena (see
 * native/addon/cow_store.hpp). Its native handle is what the engine's fault threads call; the
 * JavaScript methods make the same calls on a thread of their own (tests, tools).
 */
import { BasePageStore, createJsPath, errorFromNativeStatus, namespaceId, type JsPath, type Logger, type PageStore, type PutOptions } from '@tierstack/core';
import { interposerAddon, type CowStoreStats, type NativeCowStore } from './native.js';

export class RunStore extends BasePageStore {
  readonly #cow: NativeCowStore;
  readonly #below: JsPath;

  constructor(
    readonly stack: PageStore,
    options: { logger?: Logger } = {},
  ) {
    super('tierstack-run', stack.pageSize);
    this.#below = createJsPath(stack, options.logger ? { logger: options.logger } : {});
    this.#cow = interposerAddon().createCowStore(this.#below);
  }

  override get nativeHandle() {
    return this.isClosed ? undefined : this.#cow.handle;
  }

  /** Names a namespace for the stack's native tiers and JS path; returns its id. */
  registerNamespace(ns: string): bigint {
    return this.#below.register(ns);
  }

  /** Makes `child` read the pages marked in `pending` from `source` until it writes or frees them. */
  addLayer(child: string, source: string, pending: BigUint64Array): Promise<void> {
    return this.#cow.addLayer(this.registerNamespace(child), this.registerNamespace(source), pending);
  }

  dropLayer(ns: string): Promise<void> {
    return this.#cow.dropLayer(namespaceId(ns));
  }

  pendingPages(ns: string): Promise<number> {
    return this.#cow.pendingPages(namespaceId(ns));
  }

  cowStats(): CowStoreStats {
    return this.#cow.stats();
  }

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const st = await this.#cow.op('get', this.registerNamespace(ns), Float64Array.from(pages), out);
    let hits = 0;
    for (let i = 0; i < st.length; i++) {
      if (st[i] === 1) {
        found[i] = 1;
        hits++;
      }
    }
    return hits;
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, _options: PutOptions): Promise<void> {
    await this.#cow.op('put', this.registerNamespace(ns), Float64Array.from(pages), data);
  }

  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    await this.#cow.op('remove', this.registerNamespace(ns), Float64Array.from(pages));
  }

  /** Waits until the write-behind queue is in the stack; rejects with the last write error. */
  async drain(): Promise<void> {
    const rc = await this.#cow.drain();
    if (rc !== 0) throw errorFromNativeStatus(rc, 'a queued write to the stack');
  }

  protected override async doFlush(): Promise<void> {
    await this.drain();
    await this.stack.flush();
  }

  /** Writes what is queued, then fails the store's pending JS-path requests; the stack itself
   *  stays open (its owner closes it). */
  protected override async doClose(): Promise<void> {
    try {
      await this.#cow.drain();
    } finally {
      this.#cow.close();
    }
  }

  protected override extraStats(): Record<string, number> {
    return { ...this.#cow.stats() };
  }
}
