/**
 * Where new slabs go: `replicas` distinct donors, each picked by power of two choices on free
 * memory (placement.ts), allocated on the donors and then entered in the native map. Also the
 * single-replica allocations repair needs. Allocations of one slab are shared (two batches
 * touching a new slab place it once).
 */
import { ErrorCode, TierStackError, type Logger } from '@tierstack/core';
import { where, type DonorSet, type DonorState } from './donor-set.js';
import type { NativePool, NativeReplica } from './native.js';
import { pickDistinct, pickTwoChoices } from './placement.js';
import type { SlabGrant } from './protocol.js';

export const slabKey = (ns: bigint, index: number): string => `${ns}:${index}`;

export interface SlabPlacerOptions {
  donors: DonorSet;
  native: NativePool;
  replicas: number;
  slabBytes: number;
  slabPages: number;
  random: () => number;
  log: Logger;
  /** A slab was placed with fewer replicas than asked: repair tops it up. */
  onShort: () => void;
}

export class SlabPlacer {
  private readonly allocating = new Map<string, Promise<void>>();

  constructor(private readonly o: SlabPlacerOptions) {}

  /** The native replica of a grant from donor `d`. */
  replicaOf(d: DonorState, g: SlabGrant): NativeReplica {
    return { conn: d.conn, addr: BigInt(g.remoteAddr), rkey: BigInt(g.rkey), slabId: BigInt(g.slabId) };
  }

  /** Places every slab of `pages` that is not in the map yet. */
  ensure(nsId: bigint, pages: number[]): Promise<void> {
    const missing = new Set<number>();
    for (const p of pages) {
      const index = Math.floor(p / this.o.slabPages);
      if (!missing.has(index) && !this.o.native.hasSlab(nsId, index)) missing.add(index);
    }
    if (missing.size === 0) return Promise.resolve();
    return Promise.all([...missing].map((index) => this.place(nsId, index))).then(() => {});
  }

  /**
   * Allocates one slab on a donor picked by two choices among the others; undefined if none can.
   * Each refusal's reason is added to `refusals`.
   */
  async allocOn(exclude: Set<number>, tag: string, refusals: string[] = []): Promise<{ donor: DonorState; grant: SlabGrant } | undefined> {
    const tried = new Set(exclude);
    for (;;) {
      const cands = this.o.donors.up(tried);
      const roomy = cands.filter((d) => d.freeBytes >= this.o.slabBytes);
      const d = pickTwoChoices(roomy.length ? roomy : cands, this.o.random);
      if (!d) return undefined;
      try {
        const grant = await d.client!.allocSlab(tag);
        d.freeBytes = Math.max(0, d.freeBytes - this.o.slabBytes);
        return { donor: d, grant };
      } catch (err) {
        this.o.log.debug({ donor: d.idx, err: (err as Error).message }, 'slab allocation refused');
        refusals.push(`${where(d)}: ${(err as Error).message}`);
        d.freeBytes = 0;
        tried.add(d.idx);
      }
    }
  }

  private place(nsId: bigint, index: number): Promise<void> {
    const key = slabKey(nsId, index);
    let p = this.allocating.get(key);
    if (p) return p;
    p = (async () => {
      if (this.o.native.hasSlab(nsId, index)) return;
      const first = pickDistinct(this.o.donors.up().filter((d) => d.freeBytes >= this.o.slabBytes), this.o.replicas, this.o.random);
      const reps: NativeReplica[] = [];
      const used = new Set<number>();
      // Why donors said no: a client must see the cause (a registration refused for
      // RLIMIT_MEMLOCK reads very differently from a full donor).
      const refusals: string[] = [];
      const grants = await Promise.all(
        first.map((d) =>
          d.client!.allocSlab(key).then(
            (g) => ({ d, g }),
            (err: Error) => {
              refusals.push(`${where(d)}: ${err.message}`);
              return undefined;
            },
          ),
        ),
      );
      for (const x of grants) {
        if (!x) continue;
        x.d.freeBytes = Math.max(0, x.d.freeBytes - this.o.slabBytes);
        reps.push(this.replicaOf(x.d, x.g));
        used.add(x.d.idx);
      }
      while (reps.length < this.o.replicas) {
        const got = await this.allocOn(used, key, refusals);
        if (!got) break;
        reps.push(this.replicaOf(got.donor, got.grant));
        used.add(got.donor.idx);
      }
      if (reps.length === 0) {
        const why = [...new Set(refusals)];
        throw new TierStackError(ErrorCode.NoSpace, `no donor has room for a new slab${why.length ? ` (${why.join('; ')})` : ''}`, { details: { refusals: why } });
      }
      if (reps.length < this.o.replicas) this.o.log.warn({ slab: key, replicas: reps.length }, 'slab placed with fewer replicas than asked');
      this.o.native.addSlab(nsId, index, reps);
      if (reps.length < this.o.replicas) this.o.onShort();
    })().finally(() => this.allocating.delete(key));
    this.allocating.set(key, p);
    return p;
  }
}
