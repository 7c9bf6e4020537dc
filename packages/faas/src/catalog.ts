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
 *
 * Space. `<prefix>/registry/{a,b}` lists every snapshot namespace that may hold pages, with the
 * process that created it. A namespace is registered (and the registry made durable) before its
 * first page is written — an import calls `registerImport` before its first put — and
 * leaves the registry only once its pages are gone. So after a crash at any point, every page
 * of a half-written import, of a replaced generation or of a half-removed snapshot belongs to a
 * registered namespace that no listed manifest references, and `gc()` (which `tierstack
 * snapshot ls|gc|import|rm` run first) reclaims it: `removeNamespace(ns)` on every tier that has
 * it (a FileTier deletes the directory, giving the blocks back), page removal otherwise.
 * Namespaces whose creator still runs (an import under way, here or in another process on this
 * host) and namespaces of a snapshot whose manifest cannot be read are left alone.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
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

  /** Removes both slots, damaged ones included (a slot whose header cannot be read is dropped
   *  whole where the store can drop a namespace, else its first page, which makes it absent). */
  async remove(): Promise<void> {
    for (const slot of ['a', 'b'] as const) {
      const ns = this.ns(slot);
      try {
        await removeBlob(this.store, ns);
      } catch {
        if (!(await removeNamespaceIn(this.store, ns))) await this.store.remove(ns, [0]);
      }
      await removeNamespaceIn(this.store, ns).catch(() => undefined);
    }
  }
}

/** removeNamespace(ns) where the store has it (duck-typed: FileTier, RedisTier); false if it has not. */
async function removeNamespaceIn(store: PageStore, ns: string): Promise<boolean> {
  const rm = (store as { removeNamespace?: (ns: string) => Promise<unknown> }).removeNamespace;
  if (typeof rm !== 'function') return false;
  await rm.call(store, ns);
  return true;
}

/** Bytes a store has allocated for a namespace (or all of it), where it can tell (duck-typed). */
export async function diskUsageOf(store: PageStore, ns?: string): Promise<number | undefined> {
  const du = (store as { diskUsage?: (ns?: string) => Promise<number> }).diskUsage;
  if (typeof du !== 'function') return undefined;
  return du.call(store, ns);
}

/** The tiers of a stack, or the store itself. */
function tiersOf(store: PageStore): readonly PageStore[] {
  const tiers = (store as { tiers?: readonly PageStore[] }).tiers;
  return Array.isArray(tiers) && tiers.length > 0 ? tiers : [store];
}

const SNAPSHOT_NS = /^snapshot\/([A-Za-z0-9][A-Za-z0-9._-]{0,127})\/[^/]+$/;

/** The process that created a namespace: alive while that pid runs with the same start time. */
interface Owner {
  host: string;
  pid: number;
  /** /proc/<pid>/stat start time (clock ticks since boot): tells a reused pid apart. */
  start: string;
}

interface RegistryEntry {
  ns: string;
  id: string;
  /** The process working on it (importing, replacing or removing); undefined once its manifest
   *  accounts for it (a published snapshot). */
  owner?: Owner | undefined;
  /** When it was registered (ms). */
  at: number;
}

function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22; the command name (field 2) may hold spaces and parentheses: count from its end.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

let selfOwner: Owner | undefined;
function self(): Owner {
  return (selfOwner ??= { host: hostname(), pid: process.pid, start: processStart(process.pid) ?? '' });
}

/** An owner on another host is presumed alive this long (its pids cannot be checked from here). */
const FOREIGN_OWNER_MS = 24 * 3600 * 1000;

/**
 * Namespaces being written by imports in this process, per catalog store (several catalog
 * objects may share one store): the registry's owner check cannot tell them from leftovers.
 */
const writingHere = new WeakMap<PageStore, Set<string>>();

interface Registry {
  /** Every snapshot namespace of the catalog is listed (set once gc() registered older manifests). */
  complete: boolean;
  entries: RegistryEntry[];
}

/** Adds ns (or, with `overwrite`, sets its owner); true if the registry changed. */
function upsert(r: Registry, ns: string, id: string, owner: Owner | undefined, overwrite = true): boolean {
  const e = r.entries.find((x) => x.ns === ns);
  if (!e) {
    r.entries.push({ ns, id, owner, at: Date.now() });
    return true;
  }
  if (!overwrite || JSON.stringify(e.owner) === JSON.stringify(owner)) return false;
  e.owner = owner;
  e.at = Date.now();
  return true;
}

function drop(r: Registry, nss: string[]): boolean {
  const gone = new Set(nss);
  const before = r.entries.length;
  r.entries = r.entries.filter((e) => !gone.has(e.ns));
  return r.entries.length !== before;
}

/** What gc() did. */
export interface GcResult {
  /** Namespaces whose pages were removed (no manifest references them, their creator is gone). */
  reclaimed: Array<{ ns: string; id: string }>;
  /** Registered namespaces left alone, and why. */
  kept: Array<{ ns: string; id: string; why: 'being written' | 'manifest unreadable' | 'cannot free' }>;
  /** Manifests of ids missing from the index (an import or removal interrupted between the two), removed. */
  strayManifests: string[];
}

/** A snapshot listed in the index whose manifest cannot be read. */
export interface DamagedSnapshot {
  id: string;
  code: string;
  message: string;
}

export class SnapshotCatalog {
  /** Where snapshot pages are read from (the whole stack: caches in front of the images). */
  readonly stack: PageStore;
  /**
   * Where imports write snapshot pages: the stack's bottom tier. An importer registers its
   * namespace (`registerImport`, durable) before its first page, so that the pages of an import
   * that never finishes can always be found and reclaimed, and calls `discardImport` once it has
   * dropped what it wrote after a failure.
   */
  readonly imageStore: PageStore;
  readonly catalogStore: PageStore;
  readonly prefix: string;
  readonly log: Logger;
  private readonly index: SlotPair;
  private readonly registry: SlotPair;
  private readonly registering = new Map<string, Promise<void>>();
  private queue: Promise<unknown> = Promise.resolve();

  constructor(stack: PageStore, options: SnapshotCatalogOptions = {}) {
    this.stack = stack;
    const bottom = bottomOf(stack);
    this.catalogStore = options.catalogStore ?? bottom;
    this.prefix = options.namespace ?? DEFAULT_CATALOG_NAMESPACE;
    this.log = options.logger ?? silentLogger;
    this.index = new SlotPair(this.catalogStore, `${this.prefix}/index`, 'snapshot catalog index');
    this.registry = new SlotPair(this.catalogStore, `${this.prefix}/registry`, 'snapshot namespace registry');
    if (this.catalogStore.pageSize !== stack.pageSize) {
      throw new TierStackError(ErrorCode.PageSize, `catalog store pages (${this.catalogStore.pageSize}) differ from the stack's (${stack.pageSize})`);
    }
    this.imageStore = bottom;
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

  private get writing(): Set<string> {
    let set = writingHere.get(this.catalogStore);
    if (!set) writingHere.set(this.catalogStore, (set = new Set()));
    return set;
  }

  // ---------------------------------------------------------------- namespace registry

  /** Registers an import's namespace (once; durable when this resolves): call before its first page. */
  registerImport(ns: string): Promise<void> {
    let p = this.registering.get(ns);
    if (!p) {
      this.writing.add(ns);
      const id = SNAPSHOT_NS.exec(ns)![1]!;
      p = this.exclusive(() => this.updateRegistry((r) => upsert(r, ns, id, self())));
      p.catch(() => this.registering.delete(ns));
      this.registering.set(ns, p);
    }
    return p;
  }

  private async readRegistry(): Promise<Registry> {
    let b: Blob | undefined;
    try {
      b = await this.registry.read();
    } catch (err) {
      // Both slots damaged: what it listed cannot be reclaimed automatically any more.
      this.log.error({ err }, 'the snapshot namespace registry is unreadable; starting a new one');
      return { complete: false, entries: [] };
    }
    if (!b) return { complete: false, entries: [] };
    try {
      const o = JSON.parse(b.bytes.toString('utf8')) as { v?: number; complete?: boolean; entries?: RegistryEntry[] };
      const entries = Array.isArray(o.entries) ? o.entries.filter((e) => typeof e?.ns === 'string' && typeof e.id === 'string') : [];
      return { complete: o.complete === true, entries };
    } catch (err) {
      this.log.error({ err }, 'the snapshot namespace registry does not decode; starting a new one');
      return { complete: false, entries: [] };
    }
  }

  /** Read-modify-write of the registry (call under exclusive()); written only when `change` says so. */
  private async updateRegistry(change: (r: Registry) => boolean): Promise<void> {
    const r = await this.readRegistry();
    if (change(r)) await this.registry.write(Buffer.from(JSON.stringify({ v: 1, complete: r.complete, entries: r.entries })));
  }

  /**
   * Removes every page of a namespace from the stack: stack-wide page removal when the pages are
   * known (clears caches and write-back queues), then removeNamespace on every tier that has it.
   * False when the bottom tier could not be cleared (no removeNamespace and no page list).
   */
  private async reclaim(ns: string, pages?: number[]): Promise<boolean> {
    if (pages && pages.length > 0) await removeSnapshotPages(this.stack, ns, pages);
    if (await removeNamespaceIn(this.stack, ns)) return true;
    let bottomCleared = pages !== undefined;
    const tiers = tiersOf(this.stack);
    for (const [i, t] of tiers.entries()) {
      const done = await removeNamespaceIn(t, ns);
      if (i === tiers.length - 1) bottomCleared ||= done;
    }
    return bottomCleared;
  }

  /** reclaim() that logs instead of throwing (gc and removal go on with the other namespaces). */
  private tryReclaim(ns: string, pages?: number[]): Promise<boolean> {
    return this.reclaim(ns, pages).catch((err) => {
      this.log.warn({ err, ns }, 'snapshot catalog: could not remove a namespace yet; gc() will try again');
      return false;
    });
  }

  /** True while the process that owns a registered namespace may still be working on it. */
  private ownerAlive(e: RegistryEntry): boolean {
    const o = e.owner;
    if (!o) return false;
    const me = self();
    if (o.host !== me.host) return Date.now() - e.at < FOREIGN_OWNER_MS;
    if (o.pid === me.pid && o.start === me.start) return this.writing.has(e.ns);
    const start = processStart(o.pid);
    return start !== undefined && start === o.start;
  }

  /** An import's pages were dropped by the importer (it failed): give the namespace's space back. */
  async discardImport(ns: string): Promise<void> {
    this.writing.delete(ns);
    this.registering.delete(ns);
    await this.exclusive(async () => {
      const id = SNAPSHOT_NS.exec(ns)![1]!;
      if ((await this.get(id).catch(() => undefined))?.namespace === ns) return; // committed after all
      if (await this.tryReclaim(ns)) await this.updateRegistry((r) => drop(r, [ns]));
    });
  }

  /**
   * Reclaims what interrupted imports, replaces and removals left behind: registered namespaces
   * that an operation was working on when its process died and that no listed manifest
   * references, and manifests of ids missing from the index. Safe at any time, in any process:
   * what is in use or being written stays. The first run on a catalog older than the registry
   * registers the namespaces of its readable manifests.
   */
  gc(): Promise<GcResult> {
    return this.exclusive(async () => {
      const result: GcResult = { reclaimed: [], kept: [], strayManifests: [] };
      const ids = new Set(await this.ids());
      const reg = await this.readRegistry();
      let changed = false;
      if (!reg.complete) {
        for (const id of ids) {
          const m = await this.get(id).catch(() => undefined);
          if (m) changed = upsert(reg, m.namespace, id, undefined, false) || changed;
        }
        reg.complete = true;
        changed = true;
      }
      const manifests = new Map<string, SnapshotManifest | 'unreadable' | undefined>();
      const manifestOf = async (id: string): Promise<SnapshotManifest | 'unreadable' | undefined> => {
        if (!manifests.has(id)) {
          manifests.set(
            id,
            !ids.has(id) ? undefined : await this.get(id).catch((err) => ((err as { code?: string }).code === ErrorCode.NotFound ? undefined : ('unreadable' as const))),
          );
        }
        return manifests.get(id);
      };
      const reclaimed: string[] = [];
      const strayIds = new Set<string>();
      for (const e of reg.entries) {
        if (!e.owner) continue; // accounted for by its manifest
        if (this.ownerAlive(e)) {
          result.kept.push({ ns: e.ns, id: e.id, why: 'being written' });
          continue;
        }
        const m = await manifestOf(e.id);
        if (m === 'unreadable') {
          result.kept.push({ ns: e.ns, id: e.id, why: 'manifest unreadable' });
          continue;
        }
        if (m?.namespace === e.ns) {
          // Its operation published it before dying: a live snapshot.
          e.owner = undefined;
          changed = true;
          continue;
        }
        if (await this.tryReclaim(e.ns)) {
          result.reclaimed.push({ ns: e.ns, id: e.id });
          reclaimed.push(e.ns);
          if (!ids.has(e.id)) strayIds.add(e.id);
        } else {
          result.kept.push({ ns: e.ns, id: e.id, why: 'cannot free' });
        }
      }
      // A manifest written just before the index was (a new id whose import was cut there), or
      // left by an interrupted removal: its id is not listed, nobody can reach it.
      for (const id of strayIds) {
        const slots = this.manifestSlots(id);
        const present = await slots.read().then((b) => b !== undefined, () => true);
        if (present) {
          await slots.remove();
          result.strayManifests.push(id);
        }
      }
      if (reclaimed.length > 0) changed = drop(reg, reclaimed) || changed;
      if (changed) await this.registry.write(Buffer.from(JSON.stringify({ v: 1, complete: reg.complete, entries: reg.entries })));
      if (result.reclaimed.length > 0) {
        await this.catalogStore.flush();
        this.log.info({ reclaimed: result.reclaimed.map((r) => r.ns), strayManifests: result.strayManifests }, 'snapshot catalog: reclaimed unreferenced namespaces');
      }
      return result;
    });
  }

  // ---------------------------------------------------------------- snapshots

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

  /** Summaries of every snapshot whose manifest can be read (a damaged one is skipped: see scan()). */
  async list(): Promise<SnapshotSummary[]> {
    return (await this.scan()).snapshots;
  }

  /** Every listed snapshot: the readable ones, and the ones whose manifest cannot be read (with why). */
  async scan(): Promise<{ snapshots: SnapshotSummary[]; damaged: DamagedSnapshot[] }> {
    const snapshots: SnapshotSummary[] = [];
    const damaged: DamagedSnapshot[] = [];
    for (const id of await this.ids()) {
      try {
        snapshots.push((await this.get(id)).summary());
      } catch (err) {
        const code = (err as { code?: string }).code ?? ErrorCode.Io;
        if (code === ErrorCode.NotFound) continue; // removed meanwhile
        this.log.warn({ id, code, err: (err as Error).message }, 'snapshot catalog: a manifest cannot be read');
        damaged.push({ id, code, message: (err as Error).message });
      }
    }
    return { snapshots, damaged };
  }

  /** Bytes a snapshot's pages take in the image store, where it can tell (FileTier: blocks allocated). */
  async diskUsage(m: SnapshotManifest): Promise<number | undefined> {
    return diskUsageOf(bottomOf(this.stack), m.namespace);
  }

  /**
   * Publishes a manifest (the last step of an import). Refuses an existing id unless `replace`.
   * The generation it replaces is removed here; if that could not be done (yet), its manifest is
   * returned for the caller to try (gc() reclaims it otherwise).
   */
  commit(manifest: SnapshotManifest, replace: boolean): Promise<SnapshotManifest | undefined> {
    return this.exclusive(async () => {
      const ids = await this.ids();
      let old: SnapshotManifest | undefined;
      if (ids.includes(manifest.id)) {
        if (!replace) throw existsError(manifest.id);
        old = await this.get(manifest.id).catch(() => undefined);
      }
      const replacing = old && old.namespace !== manifest.namespace ? old : undefined;
      // Before the switch: the generation being replaced is marked as ours to remove (a crash
      // right after the switch leaves it to gc()), and the new one is registered (an image of
      // zero pages only never wrote a page, so its importer never registered it).
      await this.updateRegistry((r) => {
        let c = upsert(r, manifest.namespace, manifest.id, self(), false);
        if (replacing) c = upsert(r, replacing.namespace, replacing.id, self()) || c;
        return c;
      });
      await this.manifestSlots(manifest.id).write(manifest.encode());
      if (!ids.includes(manifest.id)) await this.writeIds([...ids, manifest.id]);
      this.writing.delete(manifest.namespace);
      this.registering.delete(manifest.namespace);
      const freed = replacing ? await this.tryReclaim(replacing.namespace, replacing.storedPageList()) : false;
      await this.updateRegistry((r) => {
        let c = upsert(r, manifest.namespace, manifest.id, undefined);
        if (freed) c = drop(r, [replacing!.namespace]) || c;
        return c;
      });
      return replacing && !freed ? replacing : undefined;
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

  /**
   * Removes a snapshot: registers its namespace, takes it out of the index (invisible), then
   * removes its manifest and pages. A snapshot whose manifest cannot be read is removed too: its
   * registered namespaces are reclaimed (one imported before the registry existed keeps its
   * pages: nothing names them any more).
   */
  remove(id: string): Promise<void> {
    return this.exclusive(async () => {
      const ids = await this.ids();
      if (!ids.includes(id)) throw new TierStackError(ErrorCode.NotFound, `no snapshot "${id}" in the catalog`, { details: { id } });
      const m = await this.get(id).catch((err) => {
        this.log.warn({ err, id }, 'removing a snapshot whose manifest is unreadable');
        return undefined;
      });
      // Its namespaces become ours to remove before it leaves the index (a crash after that
      // leaves them to gc()); one an import elsewhere is writing now stays that import's.
      const mine: string[] = [];
      await this.updateRegistry((r) => {
        let c = m ? upsert(r, m.namespace, id, undefined, false) : false;
        for (const e of r.entries) {
          if (e.id !== id || this.ownerAlive(e)) continue;
          e.owner = self();
          e.at = Date.now();
          mine.push(e.ns);
          c = true;
        }
        return c;
      });
      await this.writeIds(ids.filter((x) => x !== id));
      await this.manifestSlots(id).remove();
      const freed: string[] = [];
      for (const ns of mine) if (await this.tryReclaim(ns, ns === m?.namespace ? m.storedPageList() : undefined)) freed.push(ns);
      if (!m && mine.length === 0) this.log.warn({ id }, 'the removed snapshot predates the namespace registry and its manifest is unreadable: its pages stay behind');
      if (freed.length > 0) await this.updateRegistry((r) => drop(r, freed));
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
