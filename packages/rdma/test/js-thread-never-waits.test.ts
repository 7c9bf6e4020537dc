/**
 * The pool is a library inside someone else's Node process: its JavaScript thread (the host's
 * event loop) must never wait on a donor. Over a MSG provider (`tcp`) and an RDM one
 * (`tcp;ofi_rxm`), with replicas 2 over three real memd donors, pages are written and read in
 * a loop through the JavaScript API while one donor is stopped (SIGSTOP: its sockets stay open
 * and nothing it is sent completes; with big reads outstanding, rxm refuses further posts to it
 * with EAGAIN — over rxm that is all a dead peer ever answers —, while the tcp provider queues
 * them) until the pool gives it up, and is then killed -9. Checked: every page
 * byte for byte in its last written version, replicas restored on the survivors, and the
 * deferral counters (postsDeferred / locksDeferred in tier.stats().extra) moved over rxm.
 * The event loop's worst delay during the loss is measured (perf_hooks) and printed, never
 * asserted: tests assert on data, not on time. Waits are on state.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { makePages, pageMatches } from '@tierstack/core/testing';
import { RdmaPoolTier, type NativePool } from '../src/index.js';
import { spawnMemd, stopAll, until } from './helpers.js';

afterEach(stopAll);

const PAGE = 4096;
const SLAB_PAGES = 64; // 256 KiB slabs
const N = 512; // the loop's pages: 8 slabs
const FLOOD = 8192; // pages read in big concurrent batches while the donor is stopped: 32 slabs
const LANES = 4;
const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);
const nativeOf = (tier: RdmaPoolTier): NativePool => (tier as unknown as { native: NativePool }).native;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1103515245 + 12345) >>> 0) >>> 8) / 2 ** 24;
}

describe.each(['tcp', 'tcp;ofi_rxm'])('the JS thread never waits on a donor over %s', (provider) => {
  it('keeps every page and the event loop running while a donor is stopped, then killed -9 (replicas 2)', async () => {
    const donors = await Promise.all(range(3).map(() => spawnMemd({ provider, capacity: '128M', slabSize: '256K' })));
    const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: 2, opTimeoutMs: 3000, random: rng(7) });
    const native = nativeOf(tier);
    const victim = 1; // donors connect in list order: native connection i is donor i
    let stopped = false;
    try {
      expect(tier.pagesPerSlab).toBe(SLAB_PAGES);
      const ns = `never-waits-${provider.replace(/\W/g, "-")}`;
      const version = new Map<number, number>();
      let v = 1;
      for (let p = 0; p < N + FLOOD; p += 256) {
        const batch = range(256, p);
        await tier.put(ns, batch, makePages(ns, batch, PAGE, v));
        for (const q of batch) version.set(q, v);
      }
      expect(tier.replicaReport().perDonor[victim] ?? 0).toBeGreaterThan(4);

      // The loop: LANES lanes on disjoint pages (page % LANES), each writing a small batch (polled
      // on the JS thread first) and reading another back, so that every page's version is known.
      let stop = false;
      let rounds = 0;
      const wrong: number[] = [];
      const failures: string[] = [];
      const failed = (err: unknown): void => void failures.push(`${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
      const lane = async (k: number): Promise<void> => {
        const rnd = rng(100 + k);
        const pick = (n: number): number[] => [...new Set(Array.from({ length: n }, () => LANES * Math.floor((rnd() * N) / LANES) + k))];
        while (!stop && failures.length === 0) {
          try {
            const w = pick(8);
            const mine = ++v;
            await tier.put(ns, w, makePages(ns, w, PAGE, mine));
            for (const q of w) version.set(q, mine);
            const r = pick(16);
            const got = await tier.get(ns, r);
            r.forEach((q, i) => {
              if (!got.found[i] || !pageMatches(got.data.subarray(i * PAGE, (i + 1) * PAGE), ns, q, version.get(q)!)) wrong.push(q);
            });
            rounds++;
            // A batch the JS thread completed resolves without a macrotask: yield, as a host would.
            await new Promise((r) => setImmediate(r));
          } catch (err) {
            failed(err);
          }
        }
      };
      const loops = range(LANES).map(lane);
      await until(() => rounds >= 8 || failures.length > 0, 'the loop running');

      const delay = monitorEventLoopDelay({ resolution: 5 });
      delay.enable();
      let gap = 0; // the longest wait of a 5 ms timer, as a second opinion
      let last = performance.now();
      const ticker = setInterval(() => {
        const t = performance.now();
        gap = Math.max(gap, t - last);
        last = t;
      }, 5);
      const before = tier.stats().extra;

      // Stop the victim, and read big batches (1 MiB each, twice over FLOOD pages, one batch
      // started per turn of the event loop): reads from the stopped donor never complete and
      // fill its connection's transmit queue (ofi_rxm refuses posts past 2048 outstanding), so
      // posts to it are refused (EAGAIN), those of the loop's batches too, until the pool gives
      // it up after opTimeoutMs. Their pages are checked once the measurement is over.
      process.kill(donors[victim]!.pid, 'SIGSTOP');
      stopped = true;
      const roundsAtStop = rounds;
      const floodReads: Array<{ batch: number[]; got: { data: Buffer; found: Uint8Array } }> = [];
      const flood = async (): Promise<void> => {
        const reads: Promise<void>[] = [];
        for (let k = 0; k < 2 * (FLOOD / 256); k++) {
          const batch = range(256, N + (k % (FLOOD / 256)) * 256);
          reads.push(tier.get(ns, batch).then((got) => void floodReads.push({ batch, got })));
          await new Promise((r) => setImmediate(r));
        }
        await Promise.all(reads);
      };
      const flooded = flood().catch(failed);
      await until(() => !native.connUp(victim) || failures.length > 0, 'the stopped donor given up');
      await flooded;
      await until(() => rounds >= roundsAtStop + 8 || failures.length > 0, 'the loop going on without the stopped donor');

      // Then it dies for good.
      const killed = donors[victim]!.kill9();
      stopped = false;
      await killed;
      await until(async () => {
        await tier.repaired();
        const rep = tier.replicaReport();
        return rep.underReplicated === 0 && !rep.perDonor[victim];
      }, 'replicas restored on the two survivors');
      const roundsAtKill = rounds;
      await until(() => rounds >= roundsAtKill + 8 || failures.length > 0, 'the loop going on after the kill');
      clearInterval(ticker);
      delay.disable();
      stop = true;
      await Promise.all(loops);

      // The flood's pages (never written after the first fill).
      for (const { batch, got } of floodReads)
        batch.forEach((q, i) => {
          if (!got.found[i] || !pageMatches(got.data.subarray(i * PAGE, (i + 1) * PAGE), ns, q, version.get(q)!)) wrong.push(q);
        });
      expect(floodReads.length).toBe(2 * (FLOOD / 256));
      const after = tier.stats().extra;
      const moved = (k: string): number => (after[k] ?? 0) - (before[k] ?? 0);
      const line =
        `[${provider}] event loop during the donor loss: max delay ${(delay.max / 1e6).toFixed(1)} ms, p99 ${(delay.percentile(99) / 1e6).toFixed(1)} ms, ` +
        `mean ${(delay.mean / 1e6).toFixed(2)} ms, longest 5 ms timer gap ${gap.toFixed(1)} ms; ` +
        `postsDeferred +${moved('postsDeferred')}, locksDeferred +${moved('locksDeferred')}, loop rounds ${rounds}`;
      console.log(line);

      expect(failures).toEqual([]);
      expect(wrong).toEqual([]);
      const rep = tier.replicaReport();
      expect(rep.slabs).toBe((N + FLOOD) / SLAB_PAGES);
      expect(rep.donorsUp.sort()).toEqual([0, 2]);
      for (const d of [0, 2]) expect(rep.perDonor[d]).toBe((N + FLOOD) / SLAB_PAGES);
      // Every page, byte for byte, in its last written version.
      const all = range(N + FLOOD);
      const got = await tier.get(ns, all);
      expect(all.filter((q, i) => !got.found[i] || !pageMatches(got.data.subarray(i * PAGE, (i + 1) * PAGE), ns, q, version.get(q)!))).toEqual([]);
      // The mechanism engaged: over rxm a stopped peer's posts are refused, and the JS thread
      // left them to a job thread instead of waiting.
      expect(typeof after.postsDeferred).toBe('number');
      expect(typeof after.locksDeferred).toBe('number');
      if (provider === 'tcp;ofi_rxm') expect(moved('postsDeferred')).toBeGreaterThan(0);
    } finally {
      if (stopped) process.kill(donors[victim]!.pid, 'SIGKILL');
      await tier.close();
    }
  });
});
