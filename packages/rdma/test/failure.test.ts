/**
 * Donor failure, checksums, placement and headroom eviction with real memd processes.
 * Every check is on page contents; waits are on state (replica counts), never on time.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { FileTier, namespaceId } from '@tierstack/core';
import { makePages, pageMatches } from '@tierstack/core/testing';
import { RdmaPoolTier, DonorClient, rdmaAddon, type NativePool } from '../src/index.js';
import { spawnMemd, stopAll, tempDir, until, writeFreeMemory, type MemdProcess } from './helpers.js';

afterEach(stopAll);

const PAGE = 4096;
const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);

/** Pages whose bytes do not match the expected version (or were not found). */
function wrongPages(data: Buffer, found: Uint8Array, ns: string, pages: number[], version: (p: number) => number): number[] {
  return pages.filter((p, i) => !found[i] || !pageMatches(data.subarray(i * PAGE, (i + 1) * PAGE), ns, p, version(p)));
}

async function writeVersion(tier: RdmaPoolTier, ns: string, pages: number[], version: Map<number, number>, v: number): Promise<void> {
  // Pages of one batch get one version; makePages stamps (ns, page, version) into every page.
  await tier.put(ns, pages, makePages(ns, pages, PAGE, v));
  for (const p of pages) version.set(p, v);
}

const nativeOf = (tier: RdmaPoolTier): NativePool => (tier as unknown as { native: NativePool }).native;

describe('donor failure', () => {
  it('loses no page when one of three donors is killed -9 during a read/write loop (replicas 2), then restores 2 replicas', async () => {
    const donors = await Promise.all([0, 1, 2].map(() => spawnMemd({ capacity: '128M', slabSize: '256K' })));
    const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: 2, opTimeoutMs: 3000 });
    try {
      const ns = 'kill9';
      const N = 1024; // 16 slabs of 64 pages, 32 replicas over 3 donors
      const version = new Map<number, number>();
      for (let p = 0; p < N; p += 256) await writeVersion(tier, ns, range(256, p), version, 1);
      let seed = 12345;
      const rnd = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % N;
      const wrong: number[] = [];
      let killed: Promise<void> | undefined;
      for (let it = 0; it < 120; it++) {
        if (it === 30) killed = donors[1]!.kill9();
        const w = [...new Set(Array.from({ length: 32 }, rnd))];
        await writeVersion(tier, ns, w, version, 2 + it);
        const r = [...new Set(Array.from({ length: 64 }, rnd))];
        const got = await tier.get(ns, r);
        wrong.push(...wrongPages(got.data, got.found, ns, r, (p) => version.get(p)!));
      }
      await killed;
      expect(wrong).toEqual([]);
      await until(async () => {
        await tier.repaired();
        const rep = tier.replicaReport();
        return rep.underReplicated === 0 && !rep.perDonor[1];
      }, 'replicas restored on the surviving donors');
      const rep = tier.replicaReport();
      expect(rep.slabs).toBe(16);
      expect((rep.perDonor[0] ?? 0) + (rep.perDonor[2] ?? 0)).toBe(32);
      const all = range(N);
      const got = await tier.get(ns, all);
      expect(wrongPages(got.data, got.found, ns, all, (p) => version.get(p)!)).toEqual([]);
    } finally {
      await tier.close();
    }
  });

  it('with replicas 1 and a FileTier backup loses no page; without a backup the lost pages are TS_ERR_UNAVAILABLE', async () => {
    const donors = await Promise.all([0, 1, 2].map(() => spawnMemd({ capacity: '128M', slabSize: '256K' })));
    const dir = tempDir('backup');
    const backup = await FileTier.open({ dir: join(dir, 'file') });
    const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: 1, backup });
    const bare = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: 1 });
    try {
      const ns = 'backup';
      const pages = range(1024);
      const version = new Map<number, number>();
      await writeVersion(tier, ns, pages, version, 1);
      await writeVersion(bare, ns, pages, version, 1);
      const victim = Object.entries(bare.replicaReport().perDonor).find(([, n]) => n > 0)![0];
      await donors[Number(victim)]!.kill9();
      // With the backup: every page, before and after repair.
      const r1 = await tier.get(ns, pages);
      expect(wrongPages(r1.data, r1.found, ns, pages, () => 1)).toEqual([]);
      await until(async () => {
        await tier.repaired();
        return tier.replicaReport().underReplicated === 0 && !tier.replicaReport().perDonor[Number(victim)];
      }, 'lost slabs re-created from the backup');
      const r2 = await tier.get(ns, pages);
      expect(wrongPages(r2.data, r2.found, ns, pages, () => 1)).toEqual([]);
      // Refilled from the backup: the pool serves them again without it.
      const pool = nativeOf(tier);
      const st = await pool.get(namespaceId(ns), Float64Array.from(pages), Buffer.alloc(pages.length * PAGE));
      expect([...st].every((s) => s === 1)).toBe(true);
      // Without a backup: a typed error, never wrong bytes.
      await until(() => bare.replicaReport().donorsUp.length === 2, 'the bare tier noticing the loss');
      await expect(bare.get(ns, pages)).rejects.toMatchObject({ code: 'TS_ERR_UNAVAILABLE' });
      // Pages whose slabs survived are still served.
      const lost = new Set<number>();
      const st2 = await nativeOf(bare).get(namespaceId(ns), Float64Array.from(pages), Buffer.alloc(pages.length * PAGE));
      st2.forEach((s, i) => s !== 1 && lost.add(pages[i]!));
      expect(lost.size).toBeGreaterThan(0);
      expect(lost.size).toBeLessThan(pages.length);
      const ok = pages.filter((p) => !lost.has(p));
      const r3 = await bare.get(ns, ok);
      expect(wrongPages(r3.data, r3.found, ns, ok, () => 1)).toEqual([]);
      // New writes to a lost page work again once the slab is re-created.
      await bare.repaired();
      const one = [...lost][0]!;
      await bare.put(ns, [one], makePages(ns, [one], PAGE, 9));
      const r4 = await bare.get(ns, [one]);
      expect(pageMatches(r4.data, ns, one, 9)).toBe(true);
    } finally {
      await tier.close();
      await bare.close();
      await backup.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('donor restart', () => {
  it('reconnects to a donor that comes back and restores the replicas on it', async () => {
    const donors = await Promise.all([0, 1].map(() => spawnMemd({ capacity: '64M', slabSize: '256K' })));
    const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: 2, reconnectMs: 100 });
    try {
      const ns = 'restart';
      const pages = range(256);
      await tier.put(ns, pages, makePages(ns, pages, PAGE, 1));
      const port = donors[1]!.port;
      await donors[1]!.kill9();
      await until(() => tier.replicaReport().donorsUp.length === 1, 'the loss being noticed');
      // One donor left: reads and writes go on with one replica each.
      await tier.put(ns, pages.slice(0, 64), makePages(ns, pages.slice(0, 64), PAGE, 2));
      const v = (p: number): number => (p < 64 ? 2 : 1);
      const r1 = await tier.get(ns, pages);
      expect(wrongPages(r1.data, r1.found, ns, pages, v)).toEqual([]);
      expect(tier.replicaReport().underReplicated).toBe(4);
      // The donor comes back on the same address: a fresh process with empty memory.
      await spawnMemd({ capacity: '64M', slabSize: '256K', port });
      await until(async () => {
        await tier.repaired();
        const rep = tier.replicaReport();
        return rep.underReplicated === 0 && rep.perDonor[1] === 4;
      }, 'replicas restored on the restarted donor');
      const r2 = await tier.get(ns, pages);
      expect(wrongPages(r2.data, r2.found, ns, pages, v)).toEqual([]);
    } finally {
      await tier.close();
    }
  });
});

describe('checksums', () => {
  it('reads the other replica when one holds wrong bytes, and reports TS_ERR_CHECKSUM when none is right', async () => {
    const donors = await Promise.all([0, 1].map(() => spawnMemd({ capacity: '64M', slabSize: '256K' })));
    const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: 2 });
    const A = rdmaAddon();
    const raw = new A.Pool({ provider: 'tcp', pageSize: PAGE, slabPages: 64, opTimeoutMs: 3000, name: 'raw' });
    try {
      const ns = 'crc';
      await tier.put(ns, [3, 4], makePages(ns, [3, 4], PAGE, 1));
      const slab = nativeOf(tier).slabs().find((s) => s.ns === namespaceId(ns))!;
      const reps = slab.replicas.filter((r) => r.state === A.kReplicaActive);
      expect(reps.length).toBe(2);
      // A second, independent client scribbles over page 3 in each replica in turn, bypassing the tier.
      for (const r of reps) {
        const c = await DonorClient.connect({ host: donors[r.conn]!.host, port: donors[r.conn]!.port });
        await raw.connect(r.conn, c.hello.dataNode, c.hello.dataService).catch(() => {});
        raw.addSlab(1n, r.conn, [{ conn: r.conn, addr: r.addr, rkey: r.rkey, slabId: r.slabId }]);
        c.close();
      }
      await raw.put(1n, Float64Array.from([reps[0]!.conn * 64 + 3]), Buffer.alloc(PAGE, 0xee));
      const one = await tier.get(ns, [3, 4]);
      expect(wrongPages(one.data, one.found, ns, [3, 4], () => 1)).toEqual([]);
      await raw.put(1n, Float64Array.from([reps[1]!.conn * 64 + 3]), Buffer.alloc(PAGE, 0xdd));
      await expect(tier.get(ns, [3])).rejects.toMatchObject({ code: 'TS_ERR_CHECKSUM' });
      const four = await tier.get(ns, [4]);
      expect(pageMatches(four.data, ns, 4, 1)).toBe(true);
    } finally {
      await raw.close();
      await tier.close();
    }
  });
});

describe('placement', () => {
  it('spreads slabs over donors by two choices on free memory', async () => {
    const donors = await Promise.all([0, 1, 2, 3].map(() => spawnMemd({ capacity: '64M', slabSize: '256K' })));
    const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: 1 });
    try {
      const ns = 'spread';
      // One page in each of 60 slabs.
      const pages = range(60).map((i) => i * 64);
      for (let i = 0; i < pages.length; i += 6) await tier.put(ns, pages.slice(i, i + 6), makePages(ns, pages.slice(i, i + 6), PAGE));
      const per = tier.replicaReport().perDonor;
      const counts = [0, 1, 2, 3].map((i) => per[i] ?? 0);
      expect(counts.reduce((a, b) => a + b, 0)).toBe(60);
      // Even split is 15; two choices keeps every donor well within reach of it.
      for (const c of counts) expect(c).toBeGreaterThanOrEqual(8);
      for (const c of counts) expect(c).toBeLessThanOrEqual(22);
    } finally {
      await tier.close();
    }
  });
});

describe('headroom', () => {
  it('re-homes the slabs of a donor whose host runs short of memory, without losing a page', async () => {
    const dir = tempDir('headroom');
    const freeFile = join(dir, 'available');
    writeFreeMemory(freeFile, 8 * 2 ** 30);
    const squeezed = await spawnMemd({ capacity: '64M', slabSize: '256K', headroom: '256M', freeMemoryFile: freeFile, headroomPollMs: 50, evictGraceMs: 5000 });
    const others = await Promise.all([0, 1].map(() => spawnMemd({ capacity: '64M', slabSize: '256K' })));
    const donors: MemdProcess[] = [squeezed, ...others];
    const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: 1, activityIntervalMs: 100 });
    try {
      const ns = 'headroom';
      const pages = range(1536); // 24 slabs
      for (let p = 0; p < pages.length; p += 128) await tier.put(ns, pages.slice(p, p + 128), makePages(ns, pages.slice(p, p + 128), PAGE, 1));
      const before = tier.replicaReport().perDonor[0] ?? 0;
      expect(before).toBeGreaterThan(0);
      // The host now has 200 MiB available, 56 MiB under the headroom: every slab of donor 0 must go.
      writeFreeMemory(freeFile, 200 << 20);
      await until(async () => {
        await tier.repaired();
        const rep = tier.replicaReport();
        return !rep.perDonor[0] && rep.underReplicated === 0;
      }, 'slabs moved off the squeezed donor');
      const c = await DonorClient.connect({ host: squeezed.host, port: squeezed.port });
      await until(async () => (await c.stats()).slabs === 0, 'the squeezed donor freeing its slabs');
      c.close();
      const r = await tier.get(ns, pages);
      expect(wrongPages(r.data, r.found, ns, pages, () => 1)).toEqual([]);
      expect(tier.replicaReport().slabs).toBe(24);
    } finally {
      await tier.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
