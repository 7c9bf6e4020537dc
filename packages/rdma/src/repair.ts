/**
 * Background repair: brings every slab back to `replicas` active copies that are not being
 * evicted. Dead replicas are dropped (and given back to donors still up); a slab with no
 * survivor is re-created on a new donor with its pages marked lost, then refilled from the
 * backup tier when there is one; missing copies are allocated and filled from a survivor
 * natively (copyReplica); replicas a donor asked back (evict notices) go once enough
 * stand-ins exist. One pass at a time; a request during a pass runs another after it.
 */
import { ErrorCode, TierStackError, type Logger } from '@tierstack/core';
import type { DonorSet, DonorState } from './donor-set.js';
import { rdmaAddon, type NativePool, type NativeSlabView } from './native.js';
import type { EvictNotice } from './protocol.js';
import { slabKey, type SlabPlacer } from './slab-placer.js';

/** Slabs repaired at once: up to 3, leaving at least one libuv worker to the data path. */
const REPAIR_LANES = Math.max(1, Math.min(3, (Number(process.env.UV_THREADPOOL_SIZE) || 4) - 1));

/** A slab left the map while it was being repaired (all its pages were removed). */
class SlabGone extends Error {}

export interface RepairOptions {
  native: NativePool;
  donors: DonorSet;
  placer: SlabPlacer;
  replicas: number;
  log: Logger;
  isClosed: () => boolean;
  /** Refills pages of a slab that lost every replica (from the backup tier, if any). */
  restore: (nsId: bigint, pages: Float64Array) => Promise<void>;
}

export class Repair {
  /** Donor replicas (conn:slabId) announced for eviction. */
  private readonly evicting = new Set<string>();
  private running: Promise<void> | undefined;
  private again = false;
  /** Replicas created or re-created so far. */
  count = 0;

  constructor(private readonly o: RepairOptions) {}

  isEvicting(r: { conn: number; slabId: bigint }): boolean {
    return this.evicting.has(`${r.conn}:${r.slabId}`);
  }

  onEvict(d: DonorState, n: EvictNotice): void {
    this.o.log.info({ donor: d.idx, slabs: n.slabIds, graceMs: n.graceMs, reason: n.reason }, 'evict notice');
    for (const id of n.slabIds) this.evicting.add(`${d.conn}:${id}`);
    d.freeBytes = 0;
    this.schedule();
  }

  /** Starts (or re-runs) the background repair; never runs two at once. */
  schedule(): void {
    if (this.o.isClosed()) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.pass();
        } catch (err) {
          this.o.log.warn({ err: (err as Error).message }, 'repair pass failed; retrying');
          await new Promise((r) => setTimeout(r, 200));
          this.again = !this.o.isClosed();
        }
      } while (this.again && !this.o.isClosed());
    })().finally(() => {
      this.running = undefined;
    });
  }

  /** Resolves when no repair is running or pending. */
  async done(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Waits for a running pass, ignoring its failure (closing). */
  async settle(): Promise<void> {
    await this.running?.catch(() => {});
  }

  private async pass(): Promise<void> {
    const slabs = this.o.native.slabs();
    let next = 0;
    let failed: { err: unknown } | undefined;
    // A few slabs at a time (a donor loss leaves many to copy). Each copy holds a thread while
    // it waits for puts to its slab, and those puts need one to finish: one is always left.
    const lane = async (): Promise<void> => {
      while (next < slabs.length && !failed && !this.o.isClosed()) {
        const s = slabs[next++]!;
        try {
          await this.slab(s);
        } catch (err) {
          if (!(err instanceof SlabGone)) failed ??= { err };
        }
      }
    };
    await Promise.all(Array.from({ length: REPAIR_LANES }, lane));
    if (failed) throw failed.err;
  }

  private async slab(s: NativeSlabView): Promise<void> {
    const { kReplicaActive: ACTIVE, kReplicaSyncing: SYNCING, kReplicaDead: DEAD } = rdmaAddon();
    const { native, donors, placer } = this.o;
    const isEvicting = (r: { conn: number; slabId: bigint }): boolean => this.isEvicting(r);
    const key = slabKey(s.ns, s.index);
    // 1. Forget replicas that died; give their slabs back to donors still up.
    for (const r of s.replicas) {
      if (r.state !== DEAD) continue;
      await native.dropReplica(s.ns, s.index, r.slot);
      this.evicting.delete(`${r.conn}:${r.slabId}`);
      await donors.free(r.conn, r.slabId);
    }
    const live = (): NativeSlabView => {
      const v = native.slabs().find((x) => x.ns === s.ns && x.index === s.index);
      // Given back meanwhile (all its pages removed): nothing to repair.
      if (!v) throw new SlabGone();
      return v;
    };
    let cur: NativeSlabView;
    try {
      cur = live();
    } catch {
      return;
    }
    const activeOf = (v: NativeSlabView) => v.replicas.filter((r) => r.state === ACTIVE && native.connUp(r.conn));
    let active = activeOf(cur);
    // 2. Nothing left to copy from: start over on a new donor, pages lost unless the backup has them.
    if (active.length === 0 && !cur.replicas.some((r) => r.state === SYNCING)) {
      const got = await placer.allocOn(new Set(), key);
      if (!got) throw new TierStackError(ErrorCode.NoSpace, `no donor can take slab ${key}`);
      const lost = await native.replaceLost(s.ns, s.index, placer.replicaOf(got.donor, got.grant));
      this.count++;
      this.o.log.warn({ slab: key, lostPages: lost.length }, 'slab lost every replica; re-created');
      if (lost.length) await this.o.restore(s.ns, lost);
      cur = live();
      active = activeOf(cur);
    }
    // 3. Top up to `replicas` copies that are not being evicted.
    const staying = () => active.filter((r) => !isEvicting(r));
    while (staying().length < this.o.replicas) {
      const exclude = donors.positionsOf(cur.replicas.filter((r) => r.state === ACTIVE || r.state === SYNCING));
      const got = await placer.allocOn(exclude, key);
      if (!got) {
        if (active.some(isEvicting)) this.o.log.warn({ slab: key }, 'no donor can take an evicted slab');
        break;
      }
      const rep = placer.replicaOf(got.donor, got.grant);
      const slot = native.addReplica(s.ns, s.index, rep);
      if (slot < 0) {
        await got.donor.client!.freeSlab(rep.slabId).catch(() => {});
        break;
      }
      try {
        await native.copyReplica(s.ns, s.index, slot);
        this.count++;
      } catch (err) {
        this.o.log.warn({ slab: key, err: (err as Error).message }, 'replica copy failed');
        await native.dropReplica(s.ns, s.index, slot);
        await got.donor.client!.freeSlab(rep.slabId).catch(() => {});
        throw err;
      }
      cur = live();
      active = activeOf(cur);
    }
    // 4. Evicted replicas that now have enough stand-ins go back to their donor.
    for (const r of active.filter(isEvicting)) {
      if (staying().length < this.o.replicas) break;
      await native.dropReplica(s.ns, s.index, r.slot);
      this.evicting.delete(`${r.conn}:${r.slabId}`);
      await donors.free(r.conn, r.slabId);
      active = active.filter((x) => x !== r);
    }
  }
}
