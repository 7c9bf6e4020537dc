// FileTier gives disk space back: holes for removed pages, dropped segments, removeNamespace —
// measured with `du` (allocated blocks), with the data of the pages that stay checked byte for byte.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileTier, canRemoveNamespace, createTierStack, hasDiskUsage, namespaceId } from '../src/index.js';
import { makePages, pageMatches } from '../src/testing/index.js';
import { loadTestAddon, type TestAddon } from './helpers/test-addon.js';

const PS = 4096;
const SEG = 2 ** 18;
let addon: TestAddon;
const root = mkdtempSync(join(tmpdir(), 'tierstack-file-space-'));
let n = 0;
const dir = (): string => join(root, `d${n++}`);
const range = (from: number, count: number): number[] => Array.from({ length: count }, (_, i) => from + i);

beforeAll(() => {
  addon = loadTestAddon();
}, 120_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Allocated bytes of a tree, as `du` counts them. */
function du(path: string): number {
  return Number(execFileSync('du', ['-s', '--block-size=1', path]).toString().split('\t')[0]);
}

async function expectPages(t: FileTier, ns: string, pages: number[], version = 0, ps = PS): Promise<void> {
  const r = await t.get(ns, pages);
  expect(r.hits).toBe(pages.length);
  expect(pages.filter((p, i) => !pageMatches(r.data.subarray(i * ps, (i + 1) * ps), ns, p, version))).toEqual([]);
  if (t.nativeHandle === undefined) return;
  const out = Buffer.alloc(pages.length * ps);
  const status = new Int32Array(pages.length);
  expect(await addon.readPages(t.nativeHandle, namespaceId(ns), Float64Array.from(pages), out, status, 32, 2)).toBe(0);
  expect([...status].every((s) => s === 1)).toBe(true);
  expect(pages.filter((p, i) => !pageMatches(out.subarray(i * ps, (i + 1) * ps), ns, p, version))).toEqual([]);
}

async function expectMissing(t: FileTier, ns: string, pages: number[]): Promise<void> {
  expect((await t.get(ns, pages)).hits).toBe(0);
  if (t.nativeHandle === undefined) return;
  const out = Buffer.alloc(pages.length * t.pageSize);
  const status = new Int32Array(pages.length).fill(9);
  await addon.readPages(t.nativeHandle, namespaceId(ns), Float64Array.from(pages), out, status, 32, 1);
  expect([...status].every((s) => s === 0)).toBe(true);
}

describe('FileTier disk space', () => {
  it('punches holes for removed pages, drops emptied segments and returns to its starting size', async () => {
    const d = dir();
    const t = await FileTier.open({ dir: d });
    expect(hasDiskUsage(t) && canRemoveNamespace(t)).toBe(true);
    const base = du(d);
    expect(await t.diskUsage()).toBe(base);
    const ns = 'space';
    const seg0 = range(0, 512);
    const seg1 = range(SEG, 512);
    await t.put(ns, [...seg0, ...seg1], makePages(ns, [...seg0, ...seg1], PS, 1));
    await t.flush();
    const full = du(d);
    expect(full - base).toBeGreaterThanOrEqual(1024 * PS);
    expect(await t.diskUsage(ns)).toBe(du(join(d, ns)));

    // Half of segment 0: its blocks go, its neighbours stay intact.
    await t.remove(ns, range(0, 256));
    expect(full - du(d)).toBeGreaterThanOrEqual(256 * PS);
    await expectMissing(t, ns, range(0, 256));
    await expectPages(t, ns, range(256, 256), 1);
    // Every other page of what is left (holes between live pages).
    await t.remove(ns, range(256, 256).filter((p) => p % 2 === 0));
    await expectPages(t, ns, range(256, 256).filter((p) => p % 2 === 1), 1);
    expect(full - du(d)).toBeGreaterThanOrEqual(380 * PS); // (a fragmented file may need an extent block or two)
    // The rest of segment 0: its files are dropped.
    await t.remove(ns, range(257, 255).filter((p) => p % 2 === 1));
    expect(existsSync(join(d, ns, '0.pages'))).toBe(false);
    expect(existsSync(join(d, ns, '0.meta'))).toBe(false);
    await expectPages(t, ns, seg1, 1);
    // Segment 1 too (and removing absent pages costs nothing): back to the start.
    await t.remove(ns, [...seg1, 5, 3 * SEG]);
    expect(du(d)).toBeLessThanOrEqual(base + PS); // within one segment's metadata (512 entries: one block)
    expect(await t.diskUsage()).toBe(du(d));
    expect(t.stats().extra.holesPunched).toBeGreaterThan(0);
    expect(t.stats().extra.segmentsDropped).toBe(2);
    await expectMissing(t, ns, [...seg0, ...seg1]);
    // The namespace is usable again, natively too (no file of the dropped segments is read).
    await t.put(ns, [7, SEG + 1], makePages(ns, [7, SEG + 1], PS, 2));
    await expectPages(t, ns, [7, SEG + 1], 2);
    await t.close();
  });

  it('never serves a dropped segment from the native reader\'s cached files', async () => {
    const t = await FileTier.open({ dir: dir() });
    const ns = 'stale';
    const pages = range(0, 64);
    await t.put(ns, pages, makePages(ns, pages, PS, 1));
    await expectPages(t, ns, pages, 1); // the native reader now holds the segment's files open
    await t.remove(ns, pages); // segment dropped: files unlinked
    await expectMissing(t, ns, pages);
    await t.put(ns, pages.slice(0, 8), makePages(ns, pages.slice(0, 8), PS, 2)); // new files, same names
    await expectPages(t, ns, pages.slice(0, 8), 2);
    await expectMissing(t, ns, pages.slice(8));
    await t.close();
  });

  it('removeNamespace deletes the directory, leaves other namespaces alone, and the name can be used again', async () => {
    const d = dir();
    const t = await FileTier.open({ dir: d });
    const base = du(d);
    const pages = [...range(0, 300), SEG + 4];
    await t.put('gone', pages, makePages('gone', pages, PS));
    await t.put('kept', range(0, 10), makePages('kept', range(0, 10), PS));
    await expectPages(t, 'gone', pages); // native files cached
    const kept = await t.diskUsage('kept');
    expect(kept).toBeGreaterThanOrEqual(10 * PS);
    // Calls racing the removal: they finish before it or run after it, never against half a directory.
    const racing = t.get('gone', range(0, 8));
    await t.removeNamespace('gone');
    expect((await racing).hits).toBeGreaterThanOrEqual(0);
    expect(existsSync(join(d, 'gone'))).toBe(false);
    expect(await t.diskUsage('gone')).toBe(0);
    await expectMissing(t, 'gone', pages);
    await expectPages(t, 'kept', range(0, 10));
    expect(du(d)).toBeLessThanOrEqual(base + kept + PS);
    await t.removeNamespace('never-existed'); // not an error
    await t.put('gone', [1], makePages('gone', [1], PS, 3));
    await expectPages(t, 'gone', [1], 3);
    await t.close();
  });

  it('gives space back at a small page size without touching the neighbours of removed pages', async () => {
    const d = dir();
    const ps = 1024; // four pages per filesystem block: holes inside a block zero only the removed pages
    const t = await FileTier.open({ dir: d, pageSize: ps });
    const ns = 'small';
    const pages = range(0, 1024);
    await t.put(ns, pages, makePages(ns, pages, ps));
    await t.flush();
    const full = du(d);
    await t.remove(ns, pages.filter((p) => p % 3 === 0));
    await expectPages(t, ns, pages.filter((p) => p % 3 !== 0), 0, ps);
    await t.remove(ns, range(0, 512));
    expect(full - du(d)).toBeGreaterThanOrEqual(400 * ps); // whole blocks of removed pages went back
    await expectPages(t, ns, range(512, 512).filter((p) => p % 3 !== 0), 0, ps);
    await t.close();
  });

  it('without the addon: clears meta, drops emptied segments (no hole punching in JavaScript)', async () => {
    const d = dir();
    const t = await FileTier.open({ dir: d, native: false });
    const base = du(d);
    const ns = 'js';
    await t.put(ns, range(0, 256), makePages(ns, range(0, 256), PS));
    await t.flush();
    const full = du(d);
    await t.remove(ns, range(0, 128));
    expect(du(d)).toBeGreaterThan(full - 128 * PS); // no holes: the blocks stay until the segment goes
    await expectPages(t, ns, range(128, 128));
    await t.remove(ns, range(128, 128));
    expect(du(d)).toBeLessThanOrEqual(base + PS);
    await t.close();
  });

  it('a stack removes through to the file tier and its space goes back', async () => {
    const d = dir();
    const file = await FileTier.open({ dir: d });
    const stack = createTierStack({ tiers: [file] });
    const base = du(d);
    await stack.put('s', range(0, 128), makePages('s', range(0, 128), PS));
    await stack.flush();
    expect(du(d)).toBeGreaterThan(base);
    await stack.remove('s', range(0, 128));
    expect(du(d)).toBeLessThanOrEqual(base + PS);
    await stack.close();
  });
});
