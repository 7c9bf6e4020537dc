/**
 * Restores on the native path: a stack whose tiers have C ABI handles (a CxlTier over a memfd as
 * the DRAM cache, a FileTier below) serves every restore fault from the fault threads, with the
 * snapshot known natively (zero pages, checksums, working-set recorder). Real kernel uffd, a
 * native toucher in this process, and a Firecracker-faithful client process
 * (native-test/fc_client.c) where a page must be poisoned or a REMOVE must read as zeros.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTierStack, FileTier, MemoryTier, type TierStack } from '@tierstack/core';
import { CxlTier } from '@tierstack/cxl';
import { touchPages } from '@tierstack/uffd/testing';
import { SnapshotCatalog, importRawFile, importFirecracker, createRestoreHook } from '../src/index.js';
import { PS, tmp, cleanup, imageBytes } from './fixtures.js';

const PAGES = 2048;
const img = imageBytes(PAGES, 77); // every 5th page (p % 5 === 3) is zero
const isZero = (p: number): boolean => p % 5 === 3;
// The "function": a scattered 10% of its pages, each touched once, in this order.
const working = Array.from({ length: 200 }, (_, i) => (i * 211 + 7) % PAGES);

let dir: string;
let client: string;

async function nativeStack(sub: string, middle?: 'memory'): Promise<TierStack> {
  const cxl = await CxlTier.open({ backing: { kind: 'memfd', size: 32 << 20 } });
  const tiers = [cxl, ...(middle ? [new MemoryTier({ maxSize: 64 * PS })] : []), await FileTier.open({ dir: join(dir, sub) })];
  return createTierStack({ tiers });
}

function expectPages(out: Buffer, pages: number[]): void {
  const wrong = pages.filter((p, i) => !out.subarray(i * PS, (i + 1) * PS).equals(img.subarray(p * PS, (p + 1) * PS)));
  expect(wrong).toEqual([]);
}

interface ClientResult {
  pages?: number;
  mismatches?: number;
  dontneed_nonzero?: number;
  sigbus?: boolean;
  error?: string;
}

function runClient(args: string[]): Promise<ClientResult> {
  const child = spawn(client, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  return new Promise((resolve) => child.on('close', () => resolve(JSON.parse(out.trim().split('\n').pop() || '{}') as ClientResult)));
}

beforeAll(() => {
  dir = tmp('faas-native-');
  client = join(dir, 'fc_client');
  execFileSync('gcc', ['-O2', '-o', client, fileURLToPath(new URL('../native-test/fc_client.c', import.meta.url))]);
  writeFileSync(join(dir, 'mem.raw'), img);
});
afterAll(() => cleanup(dir));

describe('restore on a native stack [CxlTier(memfd), FileTier]', () => {
  let stack: TierStack;
  let catalog: SnapshotCatalog;
  beforeAll(async () => {
    stack = await nativeStack('native');
    catalog = new SnapshotCatalog(stack);
    await importRawFile(catalog, 'fn', join(dir, 'mem.raw'));
  });
  afterAll(async () => {
    await stack.close();
  });

  it('answers zero pages without asking any tier', async () => {
    const hook = createRestoreHook(stack, { catalog, faultAround: 1, recordWorkingSet: false });
    const zeros = Array.from({ length: 100 }, (_, i) => i * 5 + 3);
    const h = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none' });
    const out = Buffer.alloc(zeros.length * PS, 0xee);
    await touchPages(h.region!.address, zeros, PS, { out });
    expect(out.equals(Buffer.alloc(zeros.length * PS))).toBe(true);
    const s = await h.close();
    expect(s.snapshot.zeroServed).toBe(zeros.length);
    expect(s.pagesByLevel.reduce((a, b) => a + b, 0)).toBe(0); // no tier was asked for a page
    expect(s.jsPathPages).toBe(0);
    expect(s.zeroPages).toBe(zeros.length);
  });

  it('serves every page byte-correct; with the pages in native tiers no fault takes the JS path', async () => {
    const hook = createRestoreHook(stack, { catalog, faultAround: 8, recordWorkingSet: false });
    const all = Array.from({ length: PAGES }, (_, i) => i);
    const h = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none' });
    const out = Buffer.alloc(PAGES * PS);
    await touchPages(h.region!.address, all, PS, { out });
    expect(out.equals(img)).toBe(true);
    const cold = await h.close();
    expect(cold.snapshot.verified).toBe(Array.from({ length: PAGES }, (_, p) => p).filter((p) => !isZero(p)).length);
    expect(cold.snapshot.badCopies).toBe(0);
    const fileTier = stack.tiers[1]!;
    // A FileTier with a native read path makes even a cold restore JS-free.
    if (fileTier.nativeHandle !== undefined) expect(cold.jsPathPages).toBe(0);

    // Every page now sits in the CXL tier (promoted on the way up): a second restore is
    // served by level 0 alone, natively.
    const h2 = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none' });
    const out2 = Buffer.alloc(working.length * PS);
    await touchPages(h2.region!.address, working, PS, { out: out2 });
    expectPages(out2, working);
    const warm = await h2.close();
    expect(warm.jsPathPages).toBe(0);
    expect(warm.pagesByLevel.slice(1).reduce((a, b) => a + b, 0)).toBe(0);
    expect(warm.pagesByLevel[0]).toBeGreaterThan(0);
  });

  it('traces every fault (page, tier, latency) and every prefetch batch natively when asked; nothing when not', async () => {
    const hook = createRestoreHook(stack, { catalog, faultAround: 1, recordWorkingSet: false, trace: true });
    const pages = working.slice(0, 60);
    const h = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none' });
    const out = Buffer.alloc(pages.length * PS);
    await touchPages(h.region!.address, pages, PS, { out });
    expectPages(out, pages);
    const s = await h.close();
    const faults = s.trace!.records.filter((r) => r.op === 'fault');
    expect(s.trace!.lost).toBe(0);
    // fault-around 1: one record per touched page, at its offset, served by a tier or as a zero page.
    expect(faults.map((r) => r.offset / PS).sort((a, b) => a - b)).toEqual([...pages].sort((a, b) => a - b));
    for (const r of faults) {
      expect(r.length).toBe(PS);
      expect(r.latencyUs).toBeGreaterThan(0);
      if (isZero(r.offset / PS)) expect(r.tier).toBe('zero');
      else expect(stack.tiers.map((t) => t.name)).toContain(r.tier);
    }
    expect(faults.filter((r) => r.tier === 'zero')).toHaveLength(pages.filter(isZero).length);
    expect(faults.filter((r) => r.tier !== 'zero')).toHaveLength(s.pagesByLevel.reduce((a, b) => a + b, 0));

    // A prefetch: its batches' bytes add up to the pages it installed.
    const h2 = await hook.restore('fn', { kind: 'in-process' }, { eager: true, trace: 4096 });
    await h2.prefetched;
    const s2 = await h2.close();
    const batches = s2.trace!.records.filter((r) => r.op === 'prefetch');
    expect(batches.length).toBeGreaterThan(0);
    expect(batches.reduce((n, r) => n + r.length, 0)).toBe(s2.prefetched * PS);

    const quiet = await (await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none', trace: false })).close();
    expect(quiet.trace).toBeUndefined();
  });

  it('records the working set natively, in first-touch order, and prefetches it natively', async () => {
    const hook = createRestoreHook(stack, { catalog, faultAround: 1 });
    const h = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none', recordWorkingSet: true });
    await touchPages(h.region!.address, working, PS);
    const s = await h.close();
    expect(s.workingSetRecorded).toBe(working.length);
    const m = await catalog.get('fn');
    expect(m.workingSets.at(-1)!.pages).toEqual(working);

    const h2 = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'latest' });
    expect(await h2.prefetched).toBe(working.filter((p) => !isZero(p)).length + working.filter(isZero).length);
    const out = Buffer.alloc(working.length * PS);
    await touchPages(h2.region!.address, working, PS, { out });
    expectPages(out, working);
    const s2 = await h2.close();
    expect(s2.faults).toBe(0); // everything the request touched was already there
    expect(s2.jsPathPages).toBe(0);
  });

  it('repairs a bad cached copy from the tier below, and poisons only a page no tier has right', async () => {
    const m = await catalog.get('fn');
    const ns = m.namespace;
    const cxl = stack.tiers[0]!;
    const file = stack.tiers[1]!;
    const stored = m.storedPageList();
    // 1. A wrong clean copy in the cache tier: the fault thread finds the mismatch, drops it and
    //    reads the file tier's good copy.
    const repairable = stored[100]!;
    await cxl.put(ns, [repairable], Buffer.alloc(PS, 0x33));
    const hook = createRestoreHook(stack, { catalog, faultAround: 8, recordWorkingSet: false });
    const h = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none' });
    const out = Buffer.alloc(PS);
    await touchPages(h.region!.address, [repairable], PS, { out });
    expectPages(out, [repairable]);
    const s = await h.close();
    expect(s.snapshot.badCopies).toBe(1);
    expect(s.snapshot.repaired).toBe(1);
    expect(s.poisoned).toBe(0);
    // The cache now holds the good copy.
    expect((await cxl.get(ns, [repairable])).data.equals(img.subarray(repairable * PS, (repairable + 1) * PS))).toBe(true);

    // 2. No good copy anywhere: only that page fails (SIGBUS in the client); its neighbours in
    //    the same 8-page fault-around block, zero pages included, are served right.
    const bad = stored.find((p) => p % 8 === 2 && p > 800)!;
    await cxl.remove(ns, [bad]);
    await file.put(ns, [bad], Buffer.alloc(PS, 0x5a));
    const block = Array.from({ length: 8 }, (_, k) => (bad & ~7) + k).filter((p) => p !== bad);
    const sock = join(dir, 'poison.sock');
    const handler = await hook.serveFirecracker({ socketPath: sock, snapshotId: 'fn' });
    try {
      const touch = join(dir, 'touch.txt');
      writeFileSync(touch, block.join('\n') + '\n');
      const r = await runClient([sock, join(dir, 'mem.raw'), '--touch-file', touch, '--expect-sigbus', String(bad)]);
      expect(r.error).toBeUndefined();
      expect(r.mismatches).toBe(0);
      expect(r.pages).toBe(block.length);
      expect(r.sigbus).toBe(true);
      for (let i = 0; i < 200 && handler.health().instances > 0; i++) await new Promise((res) => setTimeout(res, 10));
      expect(handler.health().poisoned).toBe(1);
    } finally {
      await handler.close();
      // Put the good bytes back for later tests.
      await file.put(ns, [bad], img.subarray(bad * PS, (bad + 1) * PS));
    }
  });
});

describe('restore on a mixed stack [CxlTier, MemoryTier (JS), FileTier]', () => {
  it('serves every page right: native tiers on the fault thread, the JS tier through the batched JS path', async () => {
    const stack = await nativeStack('mixed', 'memory');
    try {
      const catalog = new SnapshotCatalog(stack);
      await importRawFile(catalog, 'fn', join(dir, 'mem.raw'));
      const hook = createRestoreHook(stack, { catalog, faultAround: 16, recordWorkingSet: false });
      const all = Array.from({ length: PAGES }, (_, i) => i);
      const h = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none' });
      const out = Buffer.alloc(PAGES * PS);
      await touchPages(h.region!.address, all, PS, { out });
      expect(out.equals(img)).toBe(true);
      const s = await h.close();
      expect(s.jsPathPages).toBeGreaterThan(0); // below the CXL tier the stack is JavaScript
      expect(s.snapshot.badCopies).toBe(0);
      expect(s.poisoned).toBe(0);
    } finally {
      await stack.close();
    }
  });
});

describe('Firecracker handler on the native stack', () => {
  it('serves a VM with two regions; REMOVE\'d ranges read as zeros', async () => {
    const stack = await nativeStack('fc');
    const R0 = 1024;
    const R1 = PAGES - R0;
    try {
      const catalog = new SnapshotCatalog(stack);
      await importFirecracker(catalog, 'vm', join(dir, 'mem.raw'), { regions: [{ size: R0 * PS }, { size: R1 * PS, guest_phys_addr: 0x100000000 }] });
      const hook = createRestoreHook(stack, { catalog, faultAround: 8 });
      const sock = join(dir, 'fc.sock');
      const handler = await hook.serveFirecracker({ socketPath: sock, snapshotId: 'vm' });
      try {
        const regionArgs = ['--region', `${R0 * PS}:0`, '--region', `${R1 * PS}:${R0 * PS}`];
        const r = await runClient([sock, join(dir, 'mem.raw'), ...regionArgs, '--touch', '0:300', '--touch', '1500:200', '--dontneed', '20:10']);
        expect(r.error).toBeUndefined();
        expect(r.pages).toBe(500);
        expect(r.mismatches).toBe(0);
        expect(r.dontneed_nonzero).toBe(0);
        for (let i = 0; i < 200 && handler.health().instances > 0; i++) await new Promise((res) => setTimeout(res, 10));
        expect(handler.health().poisoned).toBe(0);
        expect(handler.health().faultsServed).toBeGreaterThan(0);
      } finally {
        await handler.close();
      }
    } finally {
      await stack.close();
    }
  });
});
