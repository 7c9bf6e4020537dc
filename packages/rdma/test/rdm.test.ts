/**
 * The RDM data path (reliable datagram endpoints behind address vectors) with the
 * `tcp;ofi_rxm` provider — the shape `verbs;ofi_rxm` and `efa` take in production.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPageStoreConformance, makePages, pageMatches } from '@tierstack/core/testing';
import { RdmaPoolTier } from '../src/index.js';
import { spawnMemd, stopAll, until, type MemdProcess } from './helpers.js';

const PROVIDER = 'tcp;ofi_rxm';
let donors: MemdProcess[] = [];

beforeAll(async () => {
  donors = await Promise.all([0, 1, 2].map(() => spawnMemd({ provider: PROVIDER, capacity: '128M', slabSize: '256K' })));
});
afterAll(stopAll);

runPageStoreConformance(`RdmaPoolTier (${PROVIDER}, 2 donors, replicas 2)`, () =>
  RdmaPoolTier.open({ donors: donors.slice(0, 2).map((m) => m.address), replicas: 2 }),
);

describe(`RdmaPoolTier over ${PROVIDER}`, () => {
  it('keeps every page when a donor is killed -9 (replicas 2) and restores the replicas', async () => {
    const tier = await RdmaPoolTier.open({ donors: donors.map((m) => m.address), replicas: 2, opTimeoutMs: 3000 });
    try {
      const ns = 'rdm-kill';
      const pages = Array.from({ length: 512 }, (_, i) => i);
      await tier.put(ns, pages, makePages(ns, pages, tier.pageSize, 1));
      await donors[2]!.kill9();
      const r = await tier.get(ns, pages);
      const bad = pages.filter((p, i) => !r.found[i] || !pageMatches(r.data.subarray(i * tier.pageSize, (i + 1) * tier.pageSize), ns, p, 1));
      expect(bad).toEqual([]);
      await until(async () => {
        await tier.repaired();
        const rep = tier.replicaReport();
        return rep.underReplicated === 0 && !rep.perDonor[2];
      }, 'replicas restored');
      expect(tier.replicaReport().slabs).toBe(8);
    } finally {
      await tier.close();
    }
  });
});
