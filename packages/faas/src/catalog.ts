/**
 * SnapshotCatalog: the list of snapshots and their manifests, kept as pages of a reserved
 * namespace in a PageStore (by default the bottom tier of the stack: the durable home of
 * snapshot images), so a catalog needs no storage of its own and travels with the pages.
 *
 * Layout in the catalog store (namespace prefix `__tierstack_catalog` by default):
 *   <prefix>/index/{a,b}        the list of ids (CatalogIndex), two slots
 *   <prefix>/m/<id>/{a,b}       the manifest of <id>, two slots
 * Each blob is written to the slot that does not hold the newest valid version, with a higher
 * generation: an update interrupted half way leaves the previous version readable.
 *
 * Snapshot pages live in the stack under their own namespace, `snapshot/<id>/<generation>`,
 * recorded in the manifest; an import writes a fresh namespace and replaces the manifest last,
 * so a failed or interrupted import never damages or half-replaces what was there.
 */
import { TierStackError, ErrorCode, silentLogger, type Logger, type PageStore } from '@tierstack/core';
import { readBlob, writeBlob, removeBlob, type Blob } from './blob.js';
import { SnapshotManifest, assertSnapshotId, type SnapshotSummary } from './manifest.js';
import { protoTypes } from './proto.js';

export const DEFAULT_CATALOG_NAMESPACE = '__tierstack_catalog';
/** Working sets kept per manifest unless told otherwise. */
export const DEFAULT_KEEP_WORKING_SETS = 4;

export interface SnapshotCatalogOptions {
  /** Where manifests live (default: the bottom tier of `stack`, or `stack` itself if it is no TierStack). */
  catalogStore?: PageStore;
  /** Namespace prefix of the catalog (default `__tierstack_catalog`). */
  namespace?: string;
  logger?: Logger;
}

/** A stack's bottom tier (the durable home of images), or the store itself. */
export function bottomOf(store: PageStore): PageStore {
  const tiers = (store as { tiers?: readonly PageStore[] }).tiers;
  return Array.isArray(tiers) && tiers.length > 0 ? tiers[tiers.length - 1]! : store;
}

class SlotPair {
  constructor(
    private readonly store: PageStore,
    private readonly base: string,
    private readonly what: string,
  ) {}

  private ns(slot: 'a' | 'b'): string {
    return `${this.base}/${slot}`;
  }

  /** The newest valid version, undefined if none exists; TS_ERR_CORRUPT if versions exist but none is valid. */
  async read(): Promise<(Blob & { slot: 'a' | 'b' }) | undefined> {
    let best: (Blob & { slot: 'a' | 'b' }) | undefined;
    let firstError: unknown;
    for (const slot of ['a', 'b'] as const) {
      try {
        const b = await readBlob(this.store, this.ns(slot), `${this.what} (slot ${slot})`);
        if (b && (!best || b.generation > best.generation)) best = { ...b, slot };
      } catch (err) {
        firstError ??= err;
      }
    }
    if (!best && firstError) throw firstError;
    return best;
  }

  async write(bytes: Uint8Array): Promise<void> {
    let cur: (Blob & { slot: 'a' | 'b' }) | undefined;
    try {
      cur = await this.read();
    } catch {
      cur = undefined; // both damaged: overwrite slot a
    }
    const slot = cur?.slot === 'a' ? 'b' : 'a';
    await writeBlob(this.store, this.ns(slot), bytes, (cur?.generation ?? 0) + 1);
    await this.store.flush();
  }

  async remove(): Promise<void> {
    await removeBlob(this.store, this.ns('a'));
    await removeBlob(this.store, this.ns('b'));
  }
}

export class SnapshotCatalog {
  /** Where snapshot pages are read from (the whole stack: caches in front of the images). */
  readonly stack: PageStore;
  /** Where imports write snapshot pages (the stack's bottom tier). */
  readonly imageStore: PageStore;
  readonly catalogStore: PageStore;
  readonly prefix: string;
  readonly log: Logger;
  private readonly index: SlotPair;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(stack: PageStore, options: SnapshotCatalogOptions = {}) {
    this.stack = stack;
    this.imageStore = bottomOf(stack);
    this.catalogStore = options.catalogStore ?? this.imageStore;
    this.prefix = options.namespace ?? DEFAULT_CATALOG_NAMESPACE;
    this.log = options.logger ?? silentLogger;
    this.index = new SlotPair(this.catalogStore, `${this.prefix}/index`, 'snapshot catalog index');
    if (this.catalogStore.pageSize !== stack.pageSize) {
      throw new TierStackError(ErrorCode.PageSize, `catalog store pages (${this.catalogStore.pageSize}) differ from the stack's (${stack.pageSize})`);
    }
  }

  get pageSize(): number {
    return this.stack.pageSize;
  }

  /** Runs catalog mutations one at a time (index read-modify-write). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private manifestSlots(id: string): SlotPair {
    return new SlotPair(this.catalogStore, `${this.prefix}/m/${id}`, `manifest of snapshot ${id}`);
  }

  async ids(): Promise<string[]> {
    const b = await this.index.read();
    if (!b) return [];
    const { CatalogIndex } = protoTypes();
    try {
      const o = CatalogIndex.toObject(CatalogIndex.decode(b.bytes), { arrays: true }) as { ids: string[] };
      return o.ids;
    } catch (err) {
      throw new TierStackError(ErrorCode.Corrupt, `snapshot catalog index does not decode: ${(err as Error).message}`, { cause: err });
    }
  }

  private async writeIds(ids: string[]): Promise<void> {
    const { CatalogIndex } = protoTypes();
    await this.index.write(CatalogIndex.encode(CatalogIndex.fromObject({ ids })).finish());
  }

  async has(id: string): Promise<boolean> {
    assertSnapshotId(id);
    return (await this.ids()).includes(id);
  }

  /** The manifest of a snapshot: TS_ERR_NOT_FOUND if unknown, TS_ERR_CORRUPT if damaged. */
  async get(id: string): Promise<SnapshotManifest> {
    assertSnapshotId(id);
    const b = await this.manifestSlots(id).read();
    if (!b || !(await this.ids()).includes(id)) {
      throw new TierStackError(ErrorCode.NotFound, `no snapshot "${id}" in the catalog`, { details: { id } });
    }
    const m = SnapshotManifest.decode(b.bytes, `manifest of snapshot ${id}`);
    if (m.id !== id) throw new TierStackError(ErrorCode.Corrupt, `manifest stored for ${id} names snapshot ${m.id}`);
    if (m.pageSize !== this.pageSize) {
      throw new TierStackError(ErrorCode.PageSize, `snapshot ${id} has ${m.pageSize}-byte pages, the stack ${this.pageSize}`);
    }
    return m;
  }

  async list(): Promise<SnapshotSummary[]> {
    const out: SnapshotSummary[] = [];
    for (const id of await this.ids()) out.push((await this.get(id)).summary());
    return out;
  }

  /**
   * Publishes a manifest (the last step of an import). Refuses an existing id unless `replace`;
   * returns the manifest it replaced, whose pages the caller then removes.
   */
  commit(manifest: SnapshotManifest, replace: boolean): Promise<SnapshotManifest | undefined> {
    return this.exclusive(async () => {
      const ids = await this.ids();
      let old: SnapshotManifest | undefined;
      if (ids.includes(manifest.id)) {
        if (!replace) throw existsError(manifest.id);
        old = await this.get(manifest.id).catch(() => undefined);
      }
      await this.manifestSlots(manifest.id).write(manifest.encode());
      if (!ids.includes(manifest.id)) await this.writeIds([...ids, manifest.id]);
      return old;
    });
  }

  /** Rewrites the manifest of an existing snapshot (working sets). */
  update(id: string, change: (m: SnapshotManifest) => void): Promise<SnapshotManifest> {
    return this.exclusive(async () => {
      const m = await this.get(id);
      change(m);
      await this.manifestSlots(id).write(m.encode());
      return m;
    });
  }

  /** Appends a working set (first-touch order), keeping the last `keep`. */
  addWorkingSet(id: string, pages: number[], keep = DEFAULT_KEEP_WORKING_SETS): Promise<SnapshotManifest> {
    return this.update(id, (m) => {
      m.workingSets.push({ pages, recordedAt: Date.now() });
      if (m.workingSets.length > keep) m.workingSets.splice(0, m.workingSets.length - keep);
    });
  }

  /** Removes a snapshot: out of the index first (invisible), then its manifest and pages. */
  remove(id: string): Promise<void> {
    return this.exclusive(async () => {
      const ids = await this.ids();
      if (!ids.includes(id)) throw new TierStackError(ErrorCode.NotFound, `no snapshot "${id}" in the catalog`, { details: { id } });
      const m = await this.get(id).catch((err) => {
        this.log.warn({ err, id }, 'removing a snapshot whose manifest is unreadable; its pages stay behind');
        return undefined;
      });
      await this.writeIds(ids.filter((x) => x !== id));
      await this.manifestSlots(id).remove();
      if (m) await removeSnapshotPages(this.stack, m.namespace, m.storedPageList());
      await this.catalogStore.flush();
    });
  }

  /** Refuses early (before any page is written) when the id exists and replacing was not asked. */
  async assertImportable(id: string, replace: boolean): Promise<void> {
    assertSnapshotId(id);
    if (!replace && (await this.has(id))) throw existsError(id);
  }
}

export function existsError(id: string): TierStackError {
  return new TierStackError(ErrorCode.Exists, `snapshot "${id}" already exists (import with replace to overwrite it)`, { details: { id } });
}

/** Removes pages of a namespace from every tier of the store, in batches. */
export async function removeSnapshotPages(store: PageStore, ns: string, pages: number[], batch = 4096): Promise<void> {
  for (let i = 0; i < pages.length; i += batch) await store.remove(ns, pages.slice(i, i + batch));
}
