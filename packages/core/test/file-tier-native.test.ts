// FileTier's native read path: its C ABI handle driven from native threads (the testing kit's drivers),
// checked byte for byte against pages written by FileTier.put.
import { mkdtempSync, rmSync, openSync, writeSync, closeSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FileTier,
  MemoryTier,
  createJsPath,
  createTierStack,
  namespaceId,
  TsStatus,
  type NativePageStoreHandle,
  type PutOptions,
} from '../src/index.js';
import { makePages, pageMatches } from '../src/testing/index.js';
import { loadTestAddon, type TestAddon } from './helpers/test-addon.js';

const PS = 4096;
const FOUND = TsStatus.PageFound;
const MISS = TsStatus.PageMiss;
const E_CLOSED = TsStatus.Closed;
const E_CHECKSUM = TsStatus.Checksum;
const E_CORRUPT = TsStatus.Corrupt;
const E_NO_SPACE = TsStatus.NoSpace;
const SEG = 2 ** 18;

let addon: TestAddon;
const root = mkdtempSync(join(tmpdir(), 'tierstack-file-native-'));
let n = 0;
const dir = (): string => join(root, `d${n++}`);

beforeAll(() => {
  addon = loadTestAddon();
}, 120_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Reads `pages` through the handle on `threads` native threads. */
async function nativeRead(h: NativePageStoreHandle, ns: string | bigint, pages: number[], batch = 16, threads = 2, ps = PS) {
  const out = Buffer.alloc(pages.length * ps, 0xee);
  const status = new Int32Array(pages.length).fill(99);
  const rc = await addon.readPages(h, typeof ns === 'bigint' ? ns : namespaceId(ns), Float64Array.from(pages), out, status, batch, threads);
  return { rc, out, status: [...status] };
}

/** Pages of `pages` whose bytes are not the pattern of (ns, page, version). */
function wrongPages(out: Buffer, ns: string, pages: number[], version = 0, ps = PS): number[] {
  return pages.filter((p, i) => !pageMatches(out.subarray(i * ps, (i + 1) * ps), ns, p, version));
}

describe('FileTier native read path', () => {
  it('has a C ABI handle that reads pages written by FileTier.put, byte for byte, on native threads', async () => {
    const t = await FileTier.open({ dir: dir() });
    const h = t.nativeHandle!;
    expect(h).toBeDefined();
    expect(t.stats().extra.native).toBe(1);
    const ns = 'snap';
    // Runs, singles, two segments and a far one.
    const pages = [...Array.from({ length: 300 }, (_, i) => i), 1000, 1003, 5000, SEG - 2, SEG - 1, SEG, SEG + 7, 40 * SEG + 3];
    await t.put(ns, pages, makePages(ns, pages, PS, 3));
    for (const [batch, threads] of [
      [1, 1],
      [7, 2],
      [64, 2],
      [512, 1],
    ] as const) {
      const r = await nativeRead(h, ns, pages, batch, threads);
      expect(r.rc).toBe(0);
      expect(r.status.every((s) => s === FOUND)).toBe(true);
      expect(wrongPages(r.out, ns, pages, 3)).toEqual([]);
    }
    // Unsorted, with duplicates, mixed with misses (absent in a segment, past the meta file, a segment with no files).
    const mixed = [SEG, 5, 5, 299, 300, 999, 1003, 0, SEG + 7, 3 * SEG, 5, 1001];
    const r = await nativeRead(h, ns, mixed, mixed.length, 1);
    expect(r.status).toEqual([FOUND, FOUND, FOUND, FOUND, MISS, MISS, FOUND, FOUND, FOUND, MISS, FOUND, MISS]);
    mixed.forEach((p, i) => {
      const page = r.out.subarray(i * PS, (i + 1) * PS);
      if (r.status[i] === FOUND) expect(pageMatches(page, ns, p, 3)).toBe(true);
      else expect(page.every((b) => b === 0xee)).toBe(true); // a miss leaves the buffer untouched
    });
    // An id no namespace of this tier has: all misses.
    const unknown = await nativeRead(h, 0x1234n, [0, 1, 2]);
    expect(unknown.status).toEqual([MISS, MISS, MISS]);
    expect(t.stats().extra.nativeFound).toBeGreaterThan(0);
    await t.close();
  });

  it('knows namespaces found in its directory at open, the ones it reads or writes, and registered ones', async () => {
    const d = dir();
    const names = ['plain', 'with/slash and space', 'dots.in.name', 'ünï©ødé', '..'];
    const a = await FileTier.open({ dir: d });
    for (const [i, ns] of names.entries()) await a.put(ns, [i, 100 + i], makePages(ns, [i, 100 + i], PS, i));
    await a.close();
    // A new tier over the same directory: native reads work before JavaScript touched any namespace.
    const b = await FileTier.open({ dir: d });
    for (const [i, ns] of names.entries()) {
      const r = await nativeRead(b.nativeHandle!, ns, [i, 100 + i, 200]);
      expect(r.status).toEqual([FOUND, FOUND, MISS]);
      expect(wrongPages(r.out.subarray(0, 2 * PS), ns, [i, 100 + i], i)).toEqual([]);
    }
    // A namespace created later by another writer: unknown until registered (then read natively).
    const c = await FileTier.open({ dir: d, native: false });
    await c.put('late', [9], makePages('late', [9], PS));
    await c.close();
    expect((await nativeRead(b.nativeHandle!, 'late', [9])).status).toEqual([MISS]);
    expect(b.registerNamespace('late')).toBe(namespaceId('late'));
    const late = await nativeRead(b.nativeHandle!, 'late', [9]);
    expect(late.status).toEqual([FOUND]);
    expect(wrongPages(late.out, 'late', [9])).toEqual([]);
    await b.close();
  });

  it('gives TS_E_CHECKSUM for a flipped byte (bytes never handed out) and TS_E_CORRUPT past the data file', async () => {
    const d = dir();
    const t = await FileTier.open({ dir: d });
    const ns = 'bad';
    const pages = [0, 1, 2, 3, 4, 5, 6, 7];
    await t.put(ns, pages, makePages(ns, pages, PS));
    const fd = openSync(join(d, ns, '0.pages'), 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, 3 * PS + 100);
    closeSync(fd);
    const r = await nativeRead(t.nativeHandle!, ns, pages, 8, 1);
    expect(r.status).toEqual([FOUND, FOUND, FOUND, E_CHECKSUM, FOUND, FOUND, FOUND, FOUND]);
    expect(r.out.subarray(3 * PS, 4 * PS).every((b) => b === 0)).toBe(true); // zeroed, not the damaged bytes
    expect(wrongPages(Buffer.concat([r.out.subarray(0, 3 * PS), r.out.subarray(4 * PS)]), ns, [0, 1, 2, 4, 5, 6, 7])).toEqual([]);
    expect(t.stats().extra.nativeRereads).toBeGreaterThanOrEqual(1); // looked again before giving up
    expect(t.stats().extra.nativeChecksumErrors).toBe(1);
    // The JavaScript path agrees.
    await expect(t.get(ns, [3])).rejects.toMatchObject({ code: 'TS_ERR_CHECKSUM' });
    // Data file cut inside page 5: pages 5.. are recorded but past its end.
    truncateSync(join(d, ns, '0.pages'), 5 * PS + 10);
    const cut = await nativeRead(t.nativeHandle!, ns, pages, 8, 1);
    expect(cut.status).toEqual([FOUND, FOUND, FOUND, E_CHECKSUM, FOUND, E_CORRUPT, E_CORRUPT, E_CORRUPT]);
    await t.close();
  });

  it('refuses writes through the C ABI (TS_E_NO_SPACE: take the JS path) and answers TS_E_CLOSED after close', async () => {
    const t = await FileTier.open({ dir: dir() });
    await t.put('w', [1], makePages('w', [1], PS));
    const h = t.nativeHandle!;
    expect(addon.storeOp(h, 'put', namespaceId('w'), Float64Array.from([1]))).toBe(E_NO_SPACE);
    expect(addon.storeOp(h, 'remove', namespaceId('w'), Float64Array.from([1]))).toBe(E_NO_SPACE);
    const r = await nativeRead(h, 'w', [1]);
    expect(r.status).toEqual([FOUND]);
    expect(wrongPages(r.out, 'w', [1])).toEqual([]); // the refused calls changed nothing
    await t.close();
    expect(t.nativeHandle).toBeUndefined();
    expect((await nativeRead(h, 'w', [1])).rc).toBe(E_CLOSED);
  });

  it('stays JavaScript-only with native: false', async () => {
    const t = await FileTier.open({ dir: dir(), native: false });
    expect(t.nativeHandle).toBeUndefined();
    expect(t.stats().extra.native).toBe(0);
    const path = createJsPath(createTierStack({ tiers: [t] }));
    expect(path.chain).toHaveLength(0);
    await t.close();
  });

  it('serves a one-tier stack [FileTier] through StackClient: reads native, writes through JavaScript', async () => {
    const t = await FileTier.open({ dir: dir() });
    const stack = createTierStack({ tiers: [t] });
    const path = createJsPath(stack);
    expect(path.chain).toHaveLength(1);
    expect(path.hasJsTiers).toBe(false);
    expect(path.jsWrites).toBe(true); // FileTier's handle is read-only
    expect(path.writeNative).toBe(false);
    const ns = 'one';
    const id = path.register(ns);
    const client = addon.createClient(path, 64);
    const put = await addon.runWorkers(client, 'put', id, 2, 256, 16, 6);
    expect(put.errors).toBe(0);
    const afterPuts = path.stats().batches;
    expect(afterPuts).toBeGreaterThan(0);
    const got = await addon.runWorkers(client, 'get', id, 2, 300, 16, 6); // 256..299 and 556..599 were never written
    expect(got).toMatchObject({ mismatches: 0, errors: 0, found: 512, misses: 88 });
    expect(got.byLevel[0]).toBe(512);
    expect(path.stats().batches).toBe(afterPuts); // reads needed no JavaScript
    const rm = await addon.runWorkers(client, 'remove', id, 2, 256, 64, 6);
    expect(rm.errors).toBe(0);
    const gone = await addon.runWorkers(client, 'get', id, 2, 256, 64, 6);
    expect(gone).toMatchObject({ found: 0, misses: 512, errors: 0 });
    addon.closeClient(client);
    await stack.close();
  });

  it('never hands out wrong bytes while JavaScript overwrites the pages being read', async () => {
    const t = await FileTier.open({ dir: dir() });
    const ns = 'race';
    const pages = Array.from({ length: 64 }, (_, i) => i);
    const v = [makePages(ns, pages, PS, 1), makePages(ns, pages, PS, 2)];
    await t.put(ns, pages, v[0]!);
    let stop = false;
    let writes = 0;
    const writer = (async () => {
      while (!stop) {
        // Alternate versions, in batches of different shapes.
        const which = writes++ % 2;
        const at = (writes * 7) % 48;
        await t.put(ns, pages.slice(at, at + 16), v[1 - which]!.subarray(at * PS, (at + 16) * PS));
        await t.put(ns, pages, v[which]!);
      }
    })();
    const r = await addon.hammer(t.nativeHandle!, namespaceId(ns), Float64Array.from(pages), 16, 2, 150, 1, 2);
    stop = true;
    await writer;
    expect(writes).toBeGreaterThan(0);
    expect(r.mismatches).toBe(0); // every page handed out is one of the two versions, exactly
    expect(r.misses).toBe(0);
    expect(r.errors).toBe(0);
    // A torn read survives its re-read only if the writer stalled between data and meta: rare, and
    // then reported as TS_E_CHECKSUM, never as data.
    expect(r.found + r.checksum).toBe(150 * 2 * 64);
    expect(r.found).toBeGreaterThan(r.checksum * 10);
    await t.close();
  });

  it('hides pages a stack queued for writing into it until the write lands (native readers take the JS path)', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let blocked = 0;
    class SlowFileTier extends FileTier {
      protected override async doPut(ns: string, pages: number[], data: Buffer, o: PutOptions): Promise<void> {
        blocked++;
        await gate;
        return super.doPut(ns, pages, data, o);
      }
    }
    const d = dir();
    const before = await FileTier.open({ dir: d });
    const ns = 'wb';
    const pages = [0, 1, 2, 3, 4, 5, 6, 7];
    await before.put(ns, pages, makePages(ns, pages, PS, 1)); // an older version already on disk
    await before.close();
    const bottom = new SlowFileTier({ dir: d });
    bottom.registerNamespace(ns); // what createJsPath().register does (directory scanning at open is asynchronous)
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 2 * PS }), bottom] });
    expect(stack.nativeChain().jsQueues).toBe(true);
    expect(createJsPath(stack).hasJsTiers).toBe(true); // native misses must reach the queue
    await stack.put(ns, pages, makePages(ns, pages, PS, 2)); // the memory tier evicts dirty pages into the queue
    expect(blocked).toBeGreaterThan(0);
    const queued = stack.pendingWritebackCount();
    expect(queued).toBeGreaterThan(0);
    expect(bottom.stats().extra.nativePendingPages).toBe(queued);
    const during = await nativeRead(bottom.nativeHandle!, ns, pages);
    // Pages waiting in the queue miss natively (never the v1 bytes on disk); the rest are still v1 on disk.
    expect(during.status.filter((s) => s === MISS).length).toBe(queued);
    pages.forEach((p, i) => {
      if (during.status[i] === FOUND) expect(pageMatches(during.out.subarray(i * PS, (i + 1) * PS), ns, p, 1)).toBe(true);
    });
    // The stack itself serves the queued copies.
    const js = await stack.get(ns, pages);
    expect(wrongPages(js.data, ns, pages, 2)).toEqual([]);
    release();
    await stack.flush();
    expect(bottom.stats().extra.nativePendingPages).toBe(0);
    const after = await nativeRead(bottom.nativeHandle!, ns, pages);
    expect(after.status.every((s) => s === FOUND)).toBe(true);
    expect(wrongPages(after.out, ns, pages, 2)).toEqual([]);
    await stack.close();
  });

  it('measures native gets from the page cache (figures printed, not asserted)', async () => {
    const t = await FileTier.open({ dir: dir() });
    const ns = 'bench';
    const pages = Array.from({ length: 4096 }, (_, i) => i);
    await t.put(ns, pages, makePages(ns, pages, PS));
    const h = t.nativeHandle!;
    const id = namespaceId(ns);
    const list = Float64Array.from(pages);
    for (const batch of [1, 16, 64]) {
      await addon.benchGet(h, id, list, batch, 200); // warm
      const r = await addon.benchGet(h, id, list, batch, batch === 1 ? 20_000 : 2_000);
      expect(r.found).toBe((batch === 1 ? 20_000 : 2_000) * batch);
      console.log(`native FileTier get, ${batch} page(s): ${(r.nsPerCall / 1000).toFixed(2)} µs/call, ${(r.nsPerCall / batch / 1000).toFixed(2)} µs/page`);
    }
    await t.close();
  });
});
