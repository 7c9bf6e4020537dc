/**
 * Two bugs, with real memd donors over libfabric tcp:
 * - TS_PUT_PROMOTION was ignored: a copy promoted from a tier below replaced a dirty (newer) page.
 * - A namespace written only through the C ABI (known by id, never named) was skipped by the
 *   restore from the backup after its slab lost every replica: its pages stayed lost.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { namespaceId, TsStatus } from '@tierstack/core';
import { NativeReferenceTier, driveStore, makePages, pageMatches } from '@tierstack/core/testing';
import { RdmaPoolTier, type NativePool } from '../src/index.js';
import { spawnMemd, stopAll, until, type MemdProcess } from './helpers.js';

const PAGE = 4096;
const nativeOf = (tier: RdmaPoolTier): NativePool => (tier as unknown as { native: NativePool }).native;
let donors: MemdProcess[] = [];

beforeAll(async () => {
  donors = await Promise.all([0, 1].map(() => spawnMemd({ capacity: '64M', slabSize: '256K' })));
});
afterAll(stopAll);

describe('TS_PUT_PROMOTION', () => {
  it('a promoted copy never replaces a dirty page; a plain write does; over a clean page it lands', async () => {
    const tier = await RdmaPoolTier.open({ donors: donors.map((d) => d.address), replicas: 2 });
    try {
      const ns = 'promotion';
      const pages = [0, 1, 70];
      const at = async (v: number): Promise<boolean[]> => {
        const r = await tier.get(ns, pages);
        return pages.map((p, i) => r.found[i] === 1 && pageMatches(r.data.subarray(i * PAGE, (i + 1) * PAGE), ns, p, v));
      };
      await tier.put(ns, pages, makePages(ns, pages, PAGE, 1), { dirty: true });
      await tier.put(ns, pages, makePages(ns, pages, PAGE, 2), { promotion: true });
      expect(await at(1)).toEqual([true, true, true]);
      await tier.put(ns, pages, makePages(ns, pages, PAGE, 3));
      expect(await at(3)).toEqual([true, true, true]);
      await tier.put(ns, pages, makePages(ns, pages, PAGE, 4), { promotion: true });
      expect(await at(4)).toEqual([true, true, true]);
    } finally {
      await tier.close();
    }
  });
});

describe('restore from a native backup', () => {
  it('refills a namespace written only through the C ABI after its slab lost every replica', async () => {
    const own = await Promise.all([0, 1].map(() => spawnMemd({ capacity: '64M', slabSize: '256K' })));
    const backup = new NativeReferenceTier({ name: 'backup' });
    const tier = await RdmaPoolTier.open({ donors: own.map((d) => d.address), replicas: 1, backup, reconnectMs: 0 });
    try {
      // Known by id only: slabs reserved by id, every page written from a native thread.
      const id = namespaceId('abi-only');
      const pages = Array.from({ length: 48 }, (_, i) => i); // one slab (64 pages of 4 KiB)
      await tier.reserveSlabs(id, pages);
      expect((await driveStore(tier.nativeHandle!, id, 'put', pages, 16, 3)).status).toBe(TsStatus.Ok);
      expect(backup.count()).toBe(48);
      // Kill the donor holding the slab: repair re-creates it on the other one and refills it.
      const holder = Number(Object.keys(tier.replicaReport().perDonor)[0]);
      await own[holder]!.kill9();
      await until(async () => {
        await tier.repaired();
        const rep = tier.replicaReport();
        return rep.underReplicated === 0 && rep.perDonor[1 - holder] === 1;
      }, 'the slab re-created on the surviving donor');
      // The pool itself (no backup fallback) serves every page again, with the native bytes.
      const out = Buffer.alloc(pages.length * PAGE);
      const status = await nativeOf(tier).get(id, Float64Array.from(pages), out);
      expect([...status].filter((s) => s !== TsStatus.PageFound)).toEqual([]);
      expect(out.every((b) => b === 0x5a)).toBe(true);
    } finally {
      await tier.close();
      await backup.close();
      await Promise.all(own.map((d) => d.stop()));
    }
  });

  it('registerNamespace names a namespace for the JavaScript backup path and returns its id', async () => {
    const tier = await RdmaPoolTier.open({ donors: [donors[0]!.address] });
    try {
      expect(tier.registerNamespace('named')).toBe(namespaceId('named'));
    } finally {
      await tier.close();
    }
  });
});
