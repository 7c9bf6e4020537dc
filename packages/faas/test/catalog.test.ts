import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { readFileSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { hostname } from 'node:os';
import { spawnSync } from 'node:child_process';
import { pageChecksum, type TierStack, type PageStore } from '@tierstack/core';
import { SnapshotCatalog, importRawFile, importFirecracker, importCriu, exportSnapshot, readSnapshotPages, type ProgressEvent, type GcResult } from '../src/index.js';
import { readBlob, writeBlob } from '../src/blob.js';
import { PS, tmp, cleanup, imageBytes, makeStack, writeCriuImages, CRIU_ENTRIES, corruptFileTierPage } from './fixtures.js';

let dir: string;
let stack: TierStack;
let catalog: SnapshotCatalog;

beforeEach(async () => {
  dir = tmp();
  stack = await makeStack(dir);
  catalog = new SnapshotCatalog(stack);
});
afterEach(async () => {
  await stack.close();
  cleanup(dir);
});

const codeOf = async (p: Promise<unknown>): Promise<string | undefined> => {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code;
  }
};

describe('snapshot catalog and import/export', () => {
  it('imports a raw file (zero pages elided), lists it, and exports it byte-identically', async () => {
    const img = imageBytes(1000, 1);
    const src = join(dir, 'mem.raw');
    writeFileSync(src, img);
    const events: ProgressEvent[] = [];
    const r = await importRawFile(catalog, 'fn-a', src, { batchPages: 128, onProgress: (e) => events.push(e) });
    expect(r.zeroPages).toBe(200);
    expect(r.storedPages).toBe(800);
    expect(events.at(-1)).toMatchObject({ done: 1000, total: 1000, stored: 800, zero: 200 });
    expect(events.length).toBe(8);

    const ls = await catalog.list();
    expect(ls.map((s) => s.id)).toEqual(['fn-a']);
    expect(ls[0]).toMatchObject({ pageCount: 1000, zeroPages: 200, storedPages: 800, sourceKind: 'raw' });

    // A fresh catalog over the same stack (another process) sees the same manifest.
    const m = await new SnapshotCatalog(stack).get('fn-a');
    expect(m.isZero(3)).toBe(true);
    expect(m.checksum(0)).toBe(pageChecksum(img.subarray(0, PS)));

    const out = join(dir, 'out.raw');
    await exportSnapshot(catalog, 'fn-a', out);
    expect(readFileSync(out).equals(img)).toBe(true);
  });

  it('keeps an image size that is not a page multiple', async () => {
    const img = imageBytes(10, 2).subarray(0, 9 * PS + 123);
    const src = join(dir, 'odd.raw');
    writeFileSync(src, img);
    await importRawFile(catalog, 'odd', src);
    await exportSnapshot(catalog, 'odd', join(dir, 'odd.out'));
    expect(readFileSync(join(dir, 'odd.out')).equals(img)).toBe(true);
  });

  it('refuses to re-import an id unless replace is given, and replaces cleanly', async () => {
    const a = join(dir, 'a.raw');
    const b = join(dir, 'b.raw');
    writeFileSync(a, imageBytes(64, 1));
    writeFileSync(b, imageBytes(80, 2));
    await importRawFile(catalog, 'x', a);
    expect(await codeOf(importRawFile(catalog, 'x', b))).toBe('TS_ERR_EXISTS');
    const before = await catalog.get('x');
    await importRawFile(catalog, 'x', b, { replace: true });
    const after = await catalog.get('x');
    expect(after.pageCount).toBe(80);
    expect(after.namespace).not.toBe(before.namespace);
    // The replaced namespace is gone from the stack.
    const old = await stack.get(before.namespace, before.storedPageList().slice(0, 8));
    expect(old.hits).toBe(0);
    await exportSnapshot(catalog, 'x', join(dir, 'x.out'));
    expect(readFileSync(join(dir, 'x.out')).equals(readFileSync(b))).toBe(true);
    expect((await catalog.list()).map((s) => s.id)).toEqual(['x']);
  });

  it('rm removes the manifest and the pages', async () => {
    writeFileSync(join(dir, 'a.raw'), imageBytes(32, 3));
    await importRawFile(catalog, 'gone', join(dir, 'a.raw'));
    const m = await catalog.get('gone');
    await catalog.remove('gone');
    expect(await catalog.ids()).toEqual([]);
    expect(await codeOf(catalog.get('gone'))).toBe('TS_ERR_NOT_FOUND');
    expect((await stack.get(m.namespace, m.storedPageList())).hits).toBe(0);
    expect(await codeOf(catalog.remove('gone'))).toBe('TS_ERR_NOT_FOUND');
  });

  it('unknown ids, bad ids and missing files are typed errors', async () => {
    expect(await codeOf(catalog.get('nope'))).toBe('TS_ERR_NOT_FOUND');
    expect(await codeOf(exportSnapshot(catalog, 'nope', join(dir, 'o')))).toBe('TS_ERR_NOT_FOUND');
    expect(await codeOf(catalog.get('../etc'))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(await codeOf(importRawFile(catalog, 'y', join(dir, 'missing.raw')))).toBe('TS_ERR_NOT_FOUND');
  });

  it('a corrupt manifest is TS_ERR_CORRUPT; a damaged page is TS_ERR_CHECKSUM on export and leaves no file', async () => {
    writeFileSync(join(dir, 'a.raw'), imageBytes(16, 4));
    await importRawFile(catalog, 'c', join(dir, 'a.raw'));
    const m = await catalog.get('c');
    // Damage a stored page in every tier.
    const p = m.storedPageList()[2]!;
    await stack.put(m.namespace, [p], Buffer.alloc(PS, 0xee), {});
    await stack.flush();
    expect(await codeOf(exportSnapshot(catalog, 'c', join(dir, 'c.out')))).toBe('TS_ERR_CHECKSUM');
    expect(existsSync(join(dir, 'c.out'))).toBe(false);
    expect(await codeOf(readSnapshotPages(stack, m, [p]))).toBe('TS_ERR_CHECKSUM');

    // Damage both manifest slots.
    const bottom = stack.tiers[stack.tiers.length - 1]!;
    for (const slot of ['a', 'b']) {
      const ns = `__tierstack_catalog/m/c/${slot}`;
      const r = await bottom.get(ns, [0]);
      if (!r.found[0]) continue;
      r.data[40] = r.data[40]! ^ 0xff;
      await bottom.put(ns, [0], r.data);
      await stack.tiers[0]!.remove(ns, [0]);
    }
    expect(await codeOf(catalog.get('c'))).toBe('TS_ERR_CORRUPT');
  });

  it('working sets: appended to the manifest, last N kept, union or latest', async () => {
    writeFileSync(join(dir, 'a.raw'), imageBytes(64, 5));
    await importRawFile(catalog, 'ws', join(dir, 'a.raw'));
    for (let i = 0; i < 6; i++) await catalog.addWorkingSet('ws', [i, 10 + i, 20], 4);
    const m = await catalog.get('ws');
    expect(m.workingSets.length).toBe(4);
    expect(m.prefetchSet('latest')).toEqual([5, 15, 20]);
    expect(new Set(m.prefetchSet('union'))).toEqual(new Set([2, 3, 4, 5, 12, 13, 14, 15, 20]));
  });

  it('Firecracker memory file with a regions JSON; regions that do not fit are rejected', async () => {
    const img = imageBytes(96, 6);
    writeFileSync(join(dir, 'mem'), img);
    writeFileSync(join(dir, 'regions.json'), JSON.stringify([{ size: 64 * PS, guest_phys_addr: 0 }, { size: 32 * PS, guest_phys_addr: 0x100000000 }]));
    await importFirecracker(catalog, 'vm', join(dir, 'mem'), { regions: join(dir, 'regions.json') });
    const m = await catalog.get('vm');
    expect(m.regions.map((r) => [r.fileOffset, r.size, r.base])).toEqual([
      [0, 64 * PS, 0],
      [64 * PS, 32 * PS, 0x100000000],
    ]);
    await exportSnapshot(catalog, 'vm', join(dir, 'vm.out'));
    expect(readFileSync(join(dir, 'vm.out')).equals(img)).toBe(true);
    expect(await codeOf(importFirecracker(catalog, 'vm2', join(dir, 'mem'), { regions: [{ size: 200 * PS }] }))).toBe('TS_ERR_CORRUPT');
    expect(await codeOf(importFirecracker(catalog, 'vm2', join(dir, 'mem'), { regions: [{ size: 100 }] }))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(await catalog.ids()).toEqual(['vm']);
  });

  for (const layout of ['legacy', 'v42'] as const) {
    it(`CRIU image directory (${layout} pagemap layout) round trips byte-identically`, async () => {
      const n = CRIU_ENTRIES.reduce((s, e) => s + e.nrPages, 0);
      const pages = imageBytes(n, 7);
      const cdir = join(dir, `criu-${layout}`);
      writeCriuImages(cdir, 1234, 1, CRIU_ENTRIES, layout, pages);
      await importCriu(catalog, `criu-${layout}`, cdir);
      const m = await catalog.get(`criu-${layout}`);
      expect(m.sourceKind).toBe('criu');
      expect(m.regions.map((r) => [r.base, r.size / PS, r.pid])).toEqual(CRIU_ENTRIES.map((e) => [e.vaddr, e.nrPages, 1234]));
      await exportSnapshot(catalog, `criu-${layout}`, join(dir, 'criu.out'));
      expect(readFileSync(join(dir, 'criu.out')).equals(pages)).toBe(true);
    });
  }

  it('truncated or corrupt CRIU images give typed errors and leave nothing behind', async () => {
    const n = CRIU_ENTRIES.reduce((s, e) => s + e.nrPages, 0);
    const pages = imageBytes(n, 8);
    const cdir = join(dir, 'criu-bad');
    writeCriuImages(cdir, 1, 1, CRIU_ENTRIES, 'v42', pages.subarray(0, (n - 2) * PS));
    expect(await codeOf(importCriu(catalog, 'bad', cdir))).toBe('TS_ERR_CORRUPT');
    writeCriuImages(cdir, 1, 1, CRIU_ENTRIES, 'v42', pages);
    const pm = readFileSync(join(cdir, 'pagemap-1.img'));
    writeFileSync(join(cdir, 'pagemap-1.img'), pm.subarray(0, pm.length - 3));
    expect(await codeOf(importCriu(catalog, 'bad', cdir))).toBe('TS_ERR_CORRUPT');
    const bad = Buffer.from(pm);
    bad.writeUInt32LE(0x12345678, 4);
    writeFileSync(join(cdir, 'pagemap-1.img'), bad);
    expect(await codeOf(importCriu(catalog, 'bad', cdir))).toBe('TS_ERR_CORRUPT');
    expect(await catalog.ids()).toEqual([]);
  });

  it('a file that shrinks during import fails as corrupt and removes the pages already written', async () => {
    const src = join(dir, 'shrinks.raw');
    writeFileSync(src, imageBytes(600, 9, () => false));
    const { importImage } = await import('../src/import.js');
    // Announce more bytes than the file holds: the reader hits the end after two batches.
    const code = await codeOf(importImage(catalog, 'trunc', { kind: 'raw', source: src, segments: [{ path: src, length: 700 * PS }] }, { batchPages: 256 }));
    expect(code).toBe('TS_ERR_CORRUPT');
    expect(await catalog.ids()).toEqual([]);
    const bottom = stack.tiers[stack.tiers.length - 1]!;
    // No page of any snapshot namespace stayed in the bottom tier: probe the FileTier directory.
    const { readdirSync } = await import('node:fs');
    const nsDirs = readdirSync(join(dir, 'file-tier')).filter((d) => d.startsWith('snapshot'));
    // A tier that can drop a namespace gives its directory back; otherwise it stays, with no page in it.
    if (typeof (bottom as { removeNamespace?: unknown }).removeNamespace === 'function') expect(nsDirs).toEqual([]);
    for (const d of nsDirs) {
      const ns = decodeURIComponent(d);
      expect((await bottom.get(ns, Array.from({ length: 600 }, (_, i) => i))).hits).toBe(0);
    }
  });
});

describe('damaged manifests, replaced generations, interrupted work: space is given back', () => {
  const bottomOfStack = (): PageStore => stack.tiers[stack.tiers.length - 1]!;
  const hits = async (ns: string, n: number): Promise<number> => (await bottomOfStack().get(ns, Array.from({ length: n }, (_, i) => i))).hits;
  const canDrop = (): boolean => typeof (bottomOfStack() as { removeNamespace?: unknown }).removeNamespace === 'function';
  const nsDirs = (): string[] => readdirSync(join(dir, 'file-tier')).filter((d) => d.startsWith('snapshot')).map((d) => decodeURIComponent(d));

  it('one damaged manifest: the others are listed and it is marked with its code; only its operations fail; rm removes it and its pages', async () => {
    for (const [id, seed] of [['a', 1], ['b', 2], ['c', 3]] as const) {
      writeFileSync(join(dir, `${id}.raw`), imageBytes(32, seed));
      await importRawFile(catalog, id, join(dir, `${id}.raw`));
    }
    const b = await catalog.get('b');
    // Its manifest's page damaged on disk behind the file tier's back (the tier's own CRC fails).
    corruptFileTierPage(join(dir, 'file-tier'), '__tierstack_catalog/m/b/a', 0);
    const fresh = new SnapshotCatalog(stack);
    const scan = await fresh.scan();
    expect(scan.snapshots.map((s) => s.id)).toEqual(['a', 'c']);
    expect(scan.damaged).toEqual([expect.objectContaining({ id: 'b', code: 'TS_ERR_CHECKSUM' })]);
    expect((await fresh.list()).map((s) => s.id)).toEqual(['a', 'c']);
    expect(await codeOf(fresh.get('b'))).toBe('TS_ERR_CHECKSUM');
    expect(await codeOf(exportSnapshot(fresh, 'b', join(dir, 'b.out')))).toBe('TS_ERR_CHECKSUM');
    await exportSnapshot(fresh, 'a', join(dir, 'a.out'));
    expect(readFileSync(join(dir, 'a.out')).equals(readFileSync(join(dir, 'a.raw')))).toBe(true);
    // gc leaves the damaged snapshot's pages alone; rm removes it whole.
    expect((await fresh.gc()).reclaimed).toEqual([]);
    expect(await hits(b.namespace, 32)).toBeGreaterThan(0);
    await fresh.remove('b');
    expect(await fresh.ids()).toEqual(['a', 'c']);
    expect((await fresh.scan()).damaged).toEqual([]);
    expect(await hits(b.namespace, 32)).toBe(0);
    if (canDrop()) expect(nsDirs()).not.toContain(b.namespace);
    expect(await codeOf(fresh.get('b'))).toBe('TS_ERR_NOT_FOUND');
  });

  it('replaced three times, then removed: no generation keeps a page or a directory', async () => {
    const gens: string[] = [];
    for (let i = 0; i < 4; i++) {
      writeFileSync(join(dir, 'r.raw'), imageBytes(64, 10 + i));
      await importRawFile(catalog, 'r', join(dir, 'r.raw'), { replace: i > 0 });
      gens.push((await catalog.get('r')).namespace);
    }
    for (const ns of gens.slice(0, 3)) expect(await hits(ns, 64)).toBe(0);
    expect(await hits(gens[3]!, 64)).toBeGreaterThan(0);
    await catalog.remove('r');
    for (const ns of gens) expect(await hits(ns, 64)).toBe(0);
    if (canDrop()) expect(nsDirs()).toEqual([]);
    expect(await catalog.gc()).toEqual({ reclaimed: [], kept: [], strayManifests: [] });
  });

  it('gc leaves an import under way alone, and reclaims what a dead process left (pages and an unlisted manifest)', async () => {
    writeFileSync(join(dir, 'big.raw'), imageBytes(2048, 5));
    let during: Promise<GcResult> | undefined;
    await importRawFile(catalog, 'live', join(dir, 'big.raw'), { batchPages: 64, onProgress: () => (during ??= catalog.gc()) });
    const r = await during!;
    const live = await catalog.get('live');
    expect(r.reclaimed).toEqual([]);
    expect(r.kept).toEqual([{ ns: live.namespace, id: 'live', why: 'being written' }]);
    await exportSnapshot(catalog, 'live', join(dir, 'live.out'));
    expect(readFileSync(join(dir, 'live.out')).equals(readFileSync(join(dir, 'big.raw')))).toBe(true);

    // A process that died mid-import of "ghost": its pages, its registry entry, and a manifest
    // written just before the index would have been. (The real kill -9 is in the CLI tests.)
    const dead = spawnSync('true').pid!;
    const ghost = 'snapshot/ghost/dead1';
    await bottomOfStack().put(ghost, [0, 1, 2], Buffer.alloc(3 * PS, 7));
    const reg = await readBlob(bottomOfStack(), '__tierstack_catalog/registry/a', 'registry');
    const doc = JSON.parse(reg!.bytes.toString()) as { entries: unknown[] };
    doc.entries.push({ ns: ghost, id: 'ghost', owner: { host: hostname(), pid: dead, start: '1' }, at: Date.now() });
    await writeBlob(bottomOfStack(), '__tierstack_catalog/registry/a', Buffer.from(JSON.stringify(doc)), reg!.generation + 2);
    await writeBlob(bottomOfStack(), '__tierstack_catalog/m/ghost/a', Buffer.from('not even a manifest'), 1);
    const g = await new SnapshotCatalog(stack).gc();
    if (!canDrop()) {
      // Without removeNamespace the pages of an unpublished import cannot be named: kept, and said so.
      expect(g.kept).toEqual([{ ns: ghost, id: 'ghost', why: 'cannot free' }]);
      return;
    }
    expect(g.reclaimed).toEqual([{ ns: ghost, id: 'ghost' }]);
    expect(g.strayManifests).toEqual(['ghost']);
    expect(await hits(ghost, 3)).toBe(0);
    expect((await bottomOfStack().get('__tierstack_catalog/m/ghost/a', [0])).hits).toBe(0);
    expect((await catalog.get('live')).namespace).toBe(live.namespace);
    expect(await hits(live.namespace, 8)).toBeGreaterThan(0);
  });
});
