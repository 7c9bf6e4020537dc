import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TierStack } from '@tierstack/core';
import { touchPages } from '@tierstack/uffd/testing';
import { SnapshotCatalog, importRawFile, createRestoreHook } from '../src/index.js';
import { PS, tmp, cleanup, imageBytes, makeStack } from './fixtures.js';

let dir: string;
let stack: TierStack;
let catalog: SnapshotCatalog;
const PAGES = 2048;
const img = imageBytes(PAGES, 21);
// The "function": touches a scattered working set of ~10% of its pages.
const working = Array.from({ length: 200 }, (_, i) => (i * 97 + 13) % PAGES);

beforeAll(async () => {
  dir = tmp();
  stack = await makeStack(dir, 256);
  catalog = new SnapshotCatalog(stack);
  writeFileSync(join(dir, 'mem.raw'), img);
  await importRawFile(catalog, 'fn', join(dir, 'mem.raw'));
});
afterAll(async () => {
  await stack.close();
  cleanup(dir);
});

function expectPagesMatch(out: Buffer, pages: number[]): void {
  let wrong = 0;
  pages.forEach((p, i) => {
    if (!out.subarray(i * PS, (i + 1) * PS).equals(img.subarray(p * PS, (p + 1) * PS))) wrong++;
  });
  expect(wrong).toBe(0);
}

describe('in-process restore', () => {
  it('serves every page byte-correct (zero pages included), records the working set, then prefetches it', async () => {
    const hook = createRestoreHook(stack, { catalog, faultAround: 4 });
    // First restore: lazy, records first touches.
    const h1 = await hook.restore('fn', { kind: 'in-process' });
    const out = Buffer.alloc(working.length * PS);
    await touchPages(h1.region!.address, working, PS, { out });
    expectPagesMatch(out, working);
    const s1 = await h1.close();
    expect(s1.faults).toBeGreaterThan(0);
    expect(s1.prefetched).toBe(0);
    expect(s1.workingSetRecorded).toBeGreaterThanOrEqual(working.length);
    const m = await catalog.get('fn');
    expect(m.workingSets.length).toBe(1);
    // First-touch order starts with the first touched page's fault-around block.
    expect(m.workingSets[0]!.pages).toContain(working[0]);

    // Second restore: the recorded set is prefetched in bulk, the same request faults far less.
    const h2 = await hook.restore('fn', { kind: 'in-process' });
    await h2.prefetched;
    const out2 = Buffer.alloc(working.length * PS);
    await touchPages(h2.region!.address, working, PS, { out: out2 });
    expectPagesMatch(out2, working);
    const s2 = await h2.close();
    expect(s2.prefetched).toBeGreaterThan(0);
    expect(s2.faults).toBeLessThan(s1.faults);
    expect(s2.workingSetRecorded).toBe(0);

    // Every page of the image, through a fresh lazy restore.
    const h3 = await hook.restore('fn', { kind: 'in-process' }, { prefetch: 'none', recordWorkingSet: false });
    const all = Array.from({ length: PAGES }, (_, i) => i);
    const out3 = Buffer.alloc(PAGES * PS);
    await touchPages(h3.region!.address, all, PS, { out: out3 });
    expect(out3.equals(img)).toBe(true);
    const s3 = await h3.close();
    expect(s3.snapshot.zeroServed).toBeGreaterThan(0);
    expect(s3.snapshot.badCopies).toBe(0);
  });

  it('eager restore installs every page before returning', async () => {
    const hook = createRestoreHook(stack, { catalog });
    const h = await hook.restore('fn', { kind: 'in-process' }, { eager: true });
    const s = h.stats();
    expect(s.prefetched).toBe((await catalog.get('fn')).storedPages);
    const out = Buffer.alloc(working.length * PS);
    await touchPages(h.region!.address, working, PS, { out });
    expectPagesMatch(out, working);
    await h.close();
  });

  it('an unknown snapshot is TS_ERR_NOT_FOUND', async () => {
    const hook = createRestoreHook(stack, { catalog });
    await expect(hook.restore('missing', { kind: 'in-process' })).rejects.toMatchObject({ code: 'TS_ERR_NOT_FOUND' });
  });
});
