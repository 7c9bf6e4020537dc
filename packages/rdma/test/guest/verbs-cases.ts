/**
 * The cases run inside the QEMU guest over soft-RoCE (tools/guestvm setup step 'rxe': rxe0 on
 * dummy0, 10.77.0.1), one group per provider (verbs-in-guest.test.ts). verbs-guest.test.ts boots
 * the guest once and runs them there; on the host (no rxe0) every case is skipped. Under TCG
 * everything is slow: the heavier cases (C ABI suite, kill -9, registration failure) run for
 * one provider only.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { namespaceId, TsStatus, type PageStore } from '@tierstack/core';
import { makePages, pageMatches, readStorePages, runNativeStoreConformance, runPageStoreConformance, driveStore } from '@tierstack/core/testing';
import { RXE } from '@tierstack/guestvm';
import { RdmaPoolTier } from '../../src/index.js';
import { spawnMemd, stopAll, until, type MemdProcess } from '../helpers.js';

/** The guest's soft-RoCE address (tools/guestvm setup step 'rxe'). */
export const RXE_ADDRESS = RXE.address; // the guest harness's 'rxe' setup step
export const inRxeGuest = process.env.TIERSTACK_GUEST === '1' && existsSync('/sys/class/infiniband/rxe0');

const TOKEN = 'guest-verbs-token';
const PAGE = 4096;
const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);
/** Pages (of `pages`) whose bytes are not exactly makePages(ns, [p], PAGE, version). */
const wrongPages = (data: Buffer, found: ArrayLike<number>, ns: string, pages: number[], version = 0): number[] =>
  pages.filter((p, i) => !found[i] || !pageMatches(data.subarray(i * PAGE, (i + 1) * PAGE), ns, p, version));

export interface VerbsCaseOptions {
  provider: 'verbs' | 'verbs;ofi_rxm';
  /** The kit's C ABI conformance suite from native threads. */
  cabi?: boolean;
  /** A donor killed -9 under replicas 2. */
  kill9?: boolean;
  /** The registration-failure case (a donor without CAP_IPC_LOCK and a 64 KiB lock limit). */
  memlock?: boolean;
}

export function verbsCases(o: VerbsCaseOptions): void {
  const { provider } = o;
  describe.skipIf(!inRxeGuest)(`RdmaPoolTier over ${provider} (soft-RoCE guest)`, () => {
    let donors: MemdProcess[] = [];
    beforeAll(async () => {
      // Donors and clients on the dummy netdev's address, with a token (not loopback).
      // Three when a donor is killed (replicas 2 must survive it), else two.
      const n = o.kill9 ? 3 : 2;
      donors = await Promise.all(Array.from({ length: n }, () => spawnMemd({ provider, host: RXE_ADDRESS, token: TOKEN, capacity: '96M', slabSize: '1M' })));
    }, 240_000);
    afterAll(stopAll);
    const open = (extra: Partial<Parameters<typeof RdmaPoolTier.open>[0]> = {}): Promise<RdmaPoolTier> =>
      RdmaPoolTier.open({ donors: donors.map((d) => d.address), token: TOKEN, replicas: 2, ...extra });

    it('runs with no libfabric environment tuning (provider defaults, logged by memd)', () => {
      const listening = donors[0]!.stderr().split('\n').find((l) => l.includes('memd listening'));
      expect(listening, donors[0]!.stderr()).toBeDefined();
      const env = (JSON.parse(listening!) as { libfabricEnv: Record<string, string>; provider: string }).libfabricEnv;
      expect(env.FI_MR_CACHE_MONITOR).toBe('disabled');
      if (provider === 'verbs;ofi_rxm') expect(env.FI_UNIVERSE_SIZE).toBe('16');
      else expect(env.FI_UNIVERSE_SIZE).toBeUndefined();
    });

    if (inRxeGuest) {
      runPageStoreConformance(`${provider}: replicas 2`, () => open(), { timeout: 120_000 });
      // The C ABI from native threads (the kit's case list), pages placed by a JS put first.
      const allocate = async (store: PageStore, ns: string, pages: number[]): Promise<void> => {
        for (let i = 0; i < pages.length; i += 256) await store.put(ns, pages.slice(i, i + 256), makePages(ns, pages.slice(i, i + 256), store.pageSize));
      };
      if (o.cabi)
        runNativeStoreConformance(`${provider}: replicas 2`, () => open(), { prepare: allocate, checksumOnRace: true, promotion: true, threads: 2, timeout: 120_000 });
    }

    it('native threads read and write through the C ABI handle at queue depth 32, byte for byte', async () => {
      const tier = await open();
      try {
        const ns = 'native-threads';
        const pages = range(256);
        await tier.put(ns, pages, makePages(ns, pages, PAGE));
        const out = Buffer.alloc(pages.length * PAGE);
        const status = new Int32Array(pages.length);
        await readStorePages(tier.nativeHandle!, ns, pages, out, status, 32, 4);
        expect([...status].filter((s) => s !== TsStatus.PageFound)).toEqual([]);
        expect(wrongPages(out, status, ns, pages)).toEqual([]);
        // Native puts (the driver writes 0x5a) are read back by JavaScript.
        expect((await driveStore(tier.nativeHandle!, namespaceId(ns), 'put', pages.slice(0, 64), 32, 2)).status).toBe(TsStatus.Ok);
        const r = await tier.get(ns, pages.slice(0, 64));
        expect(r.hits).toBe(64);
        expect(r.data.every((b) => b === 0x5a)).toBe(true);
      } finally {
        await tier.close();
      }
    }, 120_000);

    if (o.memlock) {
      it('names the cause when a donor cannot register a slab (RLIMIT_MEMLOCK), to the client and in the log', async () => {
        // Root without CAP_IPC_LOCK, locked-memory limit 64 KiB: ibv_reg_mr of a 1 MiB slab fails.
        const weak = await spawnMemd({
          provider,
          host: RXE_ADDRESS,
          token: TOKEN,
          capacity: '16M',
          slabSize: '1M',
          wrapper: ['prlimit', '--memlock=65536:65536', '--', 'setpriv', '--bounding-set=-ipc_lock', '--inh-caps=-ipc_lock', '--'],
        });
        const tier = await RdmaPoolTier.open({ donors: [weak.address], token: TOKEN });
        try {
          const err = await tier.put('memlock', [0], makePages('memlock', [0], PAGE)).then(
            () => undefined,
            (e: unknown) => e as Error & { code?: string },
          );
          expect(err?.code).toBe('TS_ERR_NO_SPACE');
          expect(err?.message).toMatch(/fi_mr_reg of 1 MiB: .*\(errno 12\)/);
          expect(err?.message).toContain('RLIMIT_MEMLOCK of this process is 64 KiB');
          await until(() => weak.stderr().includes('slab allocation failed'), 'memd logging the failure');
          const line = weak.stderr().split('\n').find((l) => l.includes('slab allocation failed'))!;
          expect(JSON.parse(line)).toMatchObject({ level: 40, errno: 12 });
          expect(line).toContain('RLIMIT_MEMLOCK');
        } finally {
          await tier.close();
          await weak.stop();
        }
      }, 120_000);
    }

    it.runIf(o.kill9)('loses nothing when a donor is killed -9 (replicas 2): every page byte for byte, replicas restored', async () => {
      // The last case: it kills one of the shared donors (no new daemons: each costs seconds here).
      const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), token: TOKEN, replicas: 2, opTimeoutMs: 3000 });
      try {
        const ns = 'kill9';
        const pages = range(1024); // 4 slabs of 256 pages, 8 replicas over 3 donors
        await tier.put(ns, pages, makePages(ns, pages, PAGE, 1));
        await donors[1]!.kill9();
        const before = await tier.get(ns, pages);
        expect(wrongPages(before.data, before.found, ns, pages, 1)).toEqual([]);
        await until(async () => {
          await tier.repaired();
          const rep = tier.replicaReport();
          return rep.underReplicated === 0 && !rep.perDonor[1];
        }, 'replicas restored on the surviving donors', 60_000);
        expect((tier.replicaReport().perDonor[0] ?? 0) + (tier.replicaReport().perDonor[2] ?? 0)).toBe(8);
        const after = await tier.get(ns, pages);
        expect(wrongPages(after.data, after.found, ns, pages, 1)).toEqual([]);
      } finally {
        await tier.close();
      }
    }, 180_000);
  });
}
