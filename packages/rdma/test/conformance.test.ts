import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { driveStore, runNativeStoreConformance, runPageStoreConformance, makePages, pageMatches } from '@tierstack/core/testing';
import { namespaceId, FileTier, TsStatus, createTierStack, type PageStore } from '@tierstack/core';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RdmaPoolTier } from '../src/index.js';
import { spawnMemd, stopAll, type MemdProcess } from './helpers.js';

let one: MemdProcess;
let three: MemdProcess[] = [];

beforeAll(async () => {
  one = await spawnMemd({ capacity: '256M', slabSize: '1M' });
  three = await Promise.all([0, 1, 2].map(() => spawnMemd({ capacity: '256M', slabSize: '1M' })));
});
afterAll(stopAll);

runPageStoreConformance('RdmaPoolTier (1 donor)', () => RdmaPoolTier.open({ donors: [one.address] }));
runPageStoreConformance('RdmaPoolTier (3 donors, replicas 2)', () => RdmaPoolTier.open({ donors: three.map((m) => m.address), replicas: 2 }));

// The C ABI from native threads. Its handle places pages only in slabs the control plane (JS)
// allocated: a JS put of the pages a case writes allocates them first.
const allocate = async (store: PageStore, ns: string, pages: number[]): Promise<void> => {
  for (let i = 0; i < pages.length; i += 256) {
    const part = pages.slice(i, i + 256);
    await store.put(ns, part, makePages(ns, part, store.pageSize));
  }
};
runNativeStoreConformance('RdmaPoolTier (3 donors, replicas 2)', () => RdmaPoolTier.open({ donors: three.map((m) => m.address), replicas: 2 }), {
  prepare: allocate,
  // One-sided RDMA writes are not atomic to a reader of the same page: a torn copy fails its
  // CRC-32C and is withheld (TS_E_CHECKSUM), never handed out.
  checksumOnRace: true,
  // TS_PUT_PROMOTION: a copy promoted from below never replaces a dirty page.
  promotion: true,
});

describe('RdmaPoolTier options', () => {
  it('reads donors from a file, and refuses a wrong token or no reachable donor with typed errors', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rdma-donors-'));
    const file = join(dir, 'donors');
    writeFileSync(file, `# the pool\n${three[0]!.address}\n\n${three[1]!.address}  # second\n`);
    const tier = await RdmaPoolTier.open({ donorsFile: file, replicas: 2 });
    try {
      await tier.put('df', [0], makePages('df', [0], tier.pageSize));
      expect(tier.replicaReport().donorsUp).toEqual([0, 1]);
      expect(Object.keys(tier.replicaReport().perDonor).sort()).toEqual(['0', '1']);
    } finally {
      await tier.close();
      rmSync(dir, { recursive: true, force: true });
    }
    await expect(RdmaPoolTier.open({ donors: ['127.0.0.1:1'] })).rejects.toMatchObject({ code: 'TS_ERR_UNAVAILABLE' });
    await expect(RdmaPoolTier.open({ donors: [] })).rejects.toMatchObject({ code: 'TS_ERR_BAD_ARGUMENT' });
    await expect(RdmaPoolTier.open({ donors: [one.address], replicas: 9 })).rejects.toMatchObject({ code: 'TS_ERR_BAD_ARGUMENT' });
  });
});

describe('RdmaPoolTier in a tier stack', () => {
  it('serves as the native top of a stack over a FileTier, with write-through to the file tier', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rdma-stack-'));
    const rdma = await RdmaPoolTier.open({ donors: three.map((m) => m.address), replicas: 2 });
    const file = await FileTier.open({ dir });
    const stack = createTierStack({ tiers: [rdma, file], policy: { write: 'write-through' } });
    try {
      const ns = 'stack';
      const pages = Array.from({ length: 100 }, (_, i) => i * 3);
      await stack.put(ns, pages, makePages(ns, pages, rdma.pageSize));
      await stack.flush();
      const chain = stack.nativeChain();
      // The FileTier below has a (read-only) native handle too when core's addon is built.
      expect(chain.jsLevel).toBe(file.nativeHandle ? 2 : 1);
      expect(chain.handles[0]).toBe(rdma.nativeHandle);
      // A front-end thread reads the pages through the chain's native handle.
      expect(await driveStore(chain.handles[0]!, namespaceId(ns), 'get', pages, 25, 4)).toMatchObject({ status: TsStatus.Ok, misses: 0 });
      const r = await stack.get(ns, pages);
      expect(r.hits).toBe(pages.length);
      pages.forEach((p, i) => expect(pageMatches(r.data.subarray(i * rdma.pageSize, (i + 1) * rdma.pageSize), ns, p)).toBe(true));
      expect((await file.get(ns, pages)).hits).toBe(pages.length);
    } finally {
      await stack.close();
      await rdma.close();
      await file.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('RdmaPoolTier slab lifetime', () => {
  it('gives a slab back to its donors when its last page is removed', async () => {
    const tier = await RdmaPoolTier.open({ donors: three.map((m) => m.address), replicas: 2 });
    try {
      const ns = 'give-back';
      const per = tier.pagesPerSlab;
      const pages = [0, 1, per, per + 1];
      await tier.put(ns, pages, makePages(ns, pages, tier.pageSize));
      expect(tier.replicaReport().slabs).toBe(2);
      await tier.remove(ns, [0]);
      expect(tier.replicaReport().slabs).toBe(2);
      await tier.remove(ns, [1]);
      expect(tier.replicaReport().slabs).toBe(1);
      const r = await tier.get(ns, pages);
      expect([...r.found]).toEqual([0, 0, 1, 1]);
      // Writing there again places a new slab.
      await tier.put(ns, [0], makePages(ns, [0], tier.pageSize, 5));
      expect(pageMatches((await tier.get(ns, [0])).data, ns, 0, 5)).toBe(true);
      expect(tier.replicaReport().slabs).toBe(2);
    } finally {
      await tier.close();
    }
  });
});

describe('RdmaPoolTier native handle', () => {
  it('serves pages written from JavaScript through the C ABI from a native thread', async () => {
    const tier = await RdmaPoolTier.open({ donors: three.map((m) => m.address), replicas: 2 });
    try {
      const ns = 'native-handle';
      const pages = Array.from({ length: 64 }, (_, i) => i * 5);
      await tier.put(ns, pages, makePages(ns, pages, tier.pageSize));
      const handle = tier.nativeHandle!;
      expect(handle).toBeDefined();
      // 64 pages at queue depth 32, twice over: every status must be FOUND.
      const got = await driveStore(handle, namespaceId(ns), 'get', pages, 32, 4, { latencies: true });
      expect(got).toMatchObject({ status: TsStatus.Ok, misses: 0, calls: 4 });
      expect(got.latencies).toHaveLength(4);
      // Native puts land in existing slabs and are read back by JavaScript.
      expect((await driveStore(handle, namespaceId(ns), 'put', pages.slice(0, 8), 8, 1)).status).toBe(TsStatus.Ok);
      const r = await tier.get(ns, pages.slice(0, 8));
      expect(r.hits).toBe(8);
      // The driver writes 0x5a bytes.
      expect(r.data.every((b) => b === 0x5a)).toBe(true);
      const rest = await tier.get(ns, pages.slice(8));
      pages.slice(8).forEach((p, i) => expect(pageMatches(rest.data.subarray(i * tier.pageSize, (i + 1) * tier.pageSize), ns, p)).toBe(true));
      // A page in a slab that was never allocated cannot be placed natively: NO_SPACE.
      expect((await driveStore(handle, namespaceId(ns), 'put', [10_000_000], 1, 1)).status).toBe(TsStatus.NoSpace);
    } finally {
      await tier.close();
    }
  });

  it('honours the backup tier on the C ABI: write-through to a native backup, refusal with a JavaScript-only one', async () => {
    const backup = await RdmaPoolTier.open({ donors: three.map((m) => m.address), name: 'rdma-backup' });
    const tier = await RdmaPoolTier.open({ donors: [one.address], backup });
    const dir = mkdtempSync(join(tmpdir(), 'rdma-abi-backup-'));
    const file = await FileTier.open({ dir });
    const jsBacked = await RdmaPoolTier.open({ donors: [one.address], backup: file });
    try {
      const ns = 'abi-backup';
      const pages = [1, 2, 3];
      await tier.put(ns, pages, makePages(ns, pages, tier.pageSize));
      expect((await driveStore(tier.nativeHandle!, namespaceId(ns), 'put', pages, 3, 1)).status).toBe(TsStatus.Ok);
      const b = await backup.get(ns, pages);
      expect(b.hits).toBe(3);
      expect(b.data.every((x) => x === 0x5a)).toBe(true);
      await jsBacked.put(ns, pages, makePages(ns, pages, tier.pageSize));
      expect((await driveStore(jsBacked.nativeHandle!, namespaceId(ns), 'put', pages, 3, 1)).status).toBe(TsStatus.NoSpace);
      // Reads through the handle still work, and the refused put changed nothing.
      expect(await driveStore(jsBacked.nativeHandle!, namespaceId(ns), 'get', pages, 3, 1)).toMatchObject({ status: TsStatus.Ok, misses: 0 });
      const r = await jsBacked.get(ns, pages);
      pages.forEach((p, i) => expect(pageMatches(r.data.subarray(i * tier.pageSize, (i + 1) * tier.pageSize), ns, p)).toBe(true));
    } finally {
      await tier.close();
      await backup.close();
      await jsBacked.close();
      await file.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
