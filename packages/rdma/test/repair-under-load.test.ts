/**
 * Donor loss while the repair is copying several slabs at once and reads and writes go on, over
 * a MSG provider (`tcp`) and an RDM one (`tcp;ofi_rxm`): a first donor is killed -9, and a
 * second one (the source or the destination of a replica copy) is killed -9 as soon as two
 * copies are in flight together. No crash, no page lost or wrong (checked byte for byte), every
 * slab back to its replica count on the survivors. Waits are on state, never on time.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { makePages, pageMatches } from '@tierstack/core/testing';
import { RdmaPoolTier, rdmaAddon, type NativePool } from '../src/index.js';
import { spawnMemd, stopAll, until } from './helpers.js';

afterEach(stopAll);

const PAGE = 4096;
const SLAB_PAGES = 64; // 256 KiB slabs
const N = 1024; // 16 slabs
const REPLICAS = 3; // two donors die: every slab keeps a replica
const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);
const nativeOf = (tier: RdmaPoolTier): NativePool => (tier as unknown as { native: NativePool }).native;

/** A seeded generator (placement and the load are the same on every run). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1103515245 + 12345) >>> 0) >>> 8) / 2 ** 24;
}

describe.each(['tcp', 'tcp;ofi_rxm'])('repair under load over %s', (provider) => {
  it.each(['source', 'destination'] as const)(
    'keeps every page when donors are killed -9 while several slabs re-replicate (second victim: a copy %s)',
    async (role) => {
      const donors = await Promise.all(range(5).map(() => spawnMemd({ provider, capacity: '128M', slabSize: '256K' })));
      const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: REPLICAS, opTimeoutMs: 3000, random: rng(42) });
      const native = nativeOf(tier);
      const ACTIVE = rdmaAddon().kReplicaActive;
      try {
        expect(tier.pagesPerSlab).toBe(SLAB_PAGES);
        const ns = `under-load-${role}`;
        const version = new Map<number, number>();
        let v = 1;
        for (let p = 0; p < N; p += 256) {
          const batch = range(256, p);
          await tier.put(ns, batch, makePages(ns, batch, PAGE, v));
          for (const q of batch) version.set(q, v);
        }
        // Donors are connected in list order: native connection i is donor i.
        const first = 0;
        expect(tier.replicaReport().perDonor[first] ?? 0).toBeGreaterThan(1);

        // Watch the copies the repair starts; the second kill lands while two or more are in flight.
        let armed = false;
        let inFlight = 0;
        let most = 0;
        let second = -1;
        let secondKilled: Promise<void> | undefined;
        const copy = native.copyReplica.bind(native);
        // (The addon's methods are read-only prototype properties: shadow it on the instance.)
        const watched = (nsId: bigint, index: number, slot: number): Promise<void> => {
          const p = copy(nsId, index, slot); // queued to a worker: in flight from here on
          inFlight++;
          most = Math.max(most, inFlight);
          if (armed && inFlight >= 2 && !secondKilled) {
            const reps = native.slabs().find((s) => s.ns === nsId && s.index === index)!.replicas;
            // copy_replica reads from the first active replica (slot order) other than its target.
            const source = reps.find((r) => r.slot !== slot && r.state === ACTIVE && native.connUp(r.conn))!;
            second = role === 'source' ? source.conn : reps[slot]!.conn;
            secondKilled = donors[second]!.kill9();
          }
          return p.finally(() => inFlight--);
        };
        Object.defineProperty(native, 'copyReplica', { value: watched, configurable: true });

        // Reads and writes go on throughout: two loops on disjoint pages (even, odd), each writing a
        // batch and reading another back, so that every page's expected version is known.
        let stop = false;
        let rounds = 0;
        const wrong: number[] = [];
        const failures: string[] = [];
        const load = async (lane: number): Promise<void> => {
          const rnd = rng(1000 + lane);
          const pick = (n: number): number[] => [...new Set(Array.from({ length: n }, () => 2 * Math.floor((rnd() * N) / 2) + lane))];
          while (!stop && failures.length === 0) {
            try {
              const w = pick(24);
              const mine = ++v;
              await tier.put(ns, w, makePages(ns, w, PAGE, mine));
              for (const q of w) version.set(q, mine);
              const r = pick(48);
              const got = await tier.get(ns, r);
              r.forEach((q, i) => {
                if (!got.found[i] || !pageMatches(got.data.subarray(i * PAGE, (i + 1) * PAGE), ns, q, version.get(q)!)) wrong.push(q);
              });
              rounds++;
            } catch (err) {
              failures.push(`${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
            }
          }
        };
        const loops = [load(0), load(1)];

        await until(() => rounds >= 4 || failures.length > 0, 'the load running');
        armed = true;
        const firstKilled = donors[first]!.kill9();
        await until(() => secondKilled !== undefined || failures.length > 0, 'two replica copies in flight at once');
        await firstKilled;
        await secondKilled;
        const roundsAtKill = rounds;
        await until(async () => {
          await tier.repaired();
          const rep = tier.replicaReport();
          return rep.underReplicated === 0 && !rep.perDonor[first] && !rep.perDonor[second];
        }, 'replicas restored on the three survivors');
        // The load carried on after both kills.
        await until(() => rounds >= roundsAtKill + 4 || failures.length > 0, 'the load going on after the kills');
        stop = true;
        await Promise.all(loops);

        expect(failures).toEqual([]);
        expect(wrong).toEqual([]);
        expect(most).toBeGreaterThanOrEqual(2);
        expect(second).not.toBe(first);
        const rep = tier.replicaReport();
        expect(rep.slabs).toBe(N / SLAB_PAGES);
        const survivors = range(5).filter((d) => d !== first && d !== second);
        expect(rep.donorsUp.sort()).toEqual(survivors);
        for (const d of survivors) expect(rep.perDonor[d]).toBe(N / SLAB_PAGES);
        // Every page, byte for byte, in its last written version.
        const all = range(N);
        const got = await tier.get(ns, all);
        expect(all.filter((q, i) => !got.found[i] || !pageMatches(got.data.subarray(i * PAGE, (i + 1) * PAGE), ns, q, version.get(q)!))).toEqual([]);
      } finally {
        await tier.close();
      }
    },
  );
});
