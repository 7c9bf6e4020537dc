/**
 * SnapshotReader (core's addon): snapshot pages read in batches on a job thread, verified against
 * their CRC-32, on a native stack (FileTier's C ABI read path) and on a stack with a JS tier on
 * top (pages through the JS path). Real files; bytes checked.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createTierStack, FileTier, MemoryTier, SnapshotReader, TsStatus, pageChecksums, type PageStore } from '../src/index.js';
import { coreAddon } from '../src/core-addon.js';

const PS = 4096;
const N = 96;
const dir = mkdtempSync(join(tmpdir(), 'ts-snapreader-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A snapshot of N pages: every third page zero, the rest distinct patterns. */
function snapshot(): { data: Buffer; zeroBitmap: Uint8Array; stored: number[]; checksums: Uint32Array } {
  const data = Buffer.alloc(N * PS);
  const zeroBitmap = new Uint8Array(N / 8);
  const stored: number[] = [];
  for (let p = 0; p < N; p++) {
    if (p % 3 === 0) zeroBitmap[p >> 3]! |= 1 << (p & 7);
    else {
      data.fill((p * 37) & 0xff, p * PS, (p + 1) * PS);
      data.writeUInt32LE(p, p * PS);
      stored.push(p);
    }
  }
  const sums = pageChecksums(Buffer.concat(stored.map((p) => data.subarray(p * PS, (p + 1) * PS))), PS);
  return { data, zeroBitmap, stored, checksums: Uint32Array.from(sums) };
}

async function load(store: PageStore, ns: string, s: ReturnType<typeof snapshot>): Promise<void> {
  await store.put(ns, s.stored, Buffer.concat(s.stored.map((p) => s.data.subarray(p * PS, (p + 1) * PS))));
  await store.flush();
}

describe('SnapshotReader', () => {
  it('the addon is built (the suite runs with it)', () => {
    expect(coreAddon()).toBeDefined();
  });

  for (const shape of ['native [FileTier]', 'JS on top [MemoryTier, FileTier]'] as const) {
    it(`${shape}: reads every page right (zero pages without a tier), any order, with duplicates; out-of-range pages are TS_E_NOT_FOUND`, async () => {
      const s = snapshot();
      const file = await FileTier.open({ dir: join(dir, shape.startsWith('native') ? 'a' : 'b') });
      const stack = createTierStack({ tiers: shape.startsWith('native') ? [file] : [new MemoryTier({ maxSize: 16 * PS }), file] });
      await load(stack, 'snap', s);
      const reader = SnapshotReader.open(stack, 'snap', { pageCount: N, zeroBitmap: s.zeroBitmap, checksums: s.checksums })!;
      try {
        const pages = [5, 0, 95, 1, 1, 40, 96, 3, 64, 2];
        const out = Buffer.alloc(pages.length * PS, 0xee);
        const r = await reader.read(pages, out);
        expect(r.bad).toEqual([6]); // page 96 is outside the snapshot
        expect(r.status[6]).toBe(TsStatus.NotFound);
        pages.forEach((p, i) => {
          const want = p < N ? s.data.subarray(p * PS, (p + 1) * PS) : Buffer.alloc(PS);
          expect(out.subarray(i * PS, (i + 1) * PS).equals(want)).toBe(true);
        });
        const st = reader.stats();
        expect(st.zeroServed).toBe(2); // pages 0 and 3
        expect(st.verified).toBe(7); // 5, 95, 1 (twice), 40, 64, 2
        expect(st.jsPathPages).toBe(shape.startsWith('native') ? 0 : 7);
      } finally {
        reader.close();
        await stack.close();
      }
    });
  }

  it('a stored copy that fails its checksum (no good copy anywhere) is TS_E_CHECKSUM and zeros; its neighbours are served', async () => {
    const s = snapshot();
    const file = await FileTier.open({ dir: join(dir, 'c') });
    await load(file, 'snap', s);
    // The tier now holds a different (self-consistent) copy of page 7: only the snapshot's CRC can tell.
    await file.put('snap', [7], Buffer.alloc(PS, 0x77));
    await file.flush();
    const reader = SnapshotReader.open(file, 'snap', { pageCount: N, zeroBitmap: s.zeroBitmap, checksums: s.checksums })!;
    try {
      const out = Buffer.alloc(3 * PS, 0xee);
      const r = await reader.read([5, 7, 8], out);
      expect(r.bad).toEqual([1]);
      expect(r.status[1]).toBe(TsStatus.Checksum);
      expect(out.subarray(PS, 2 * PS).equals(Buffer.alloc(PS))).toBe(true);
      expect(out.subarray(0, PS).equals(s.data.subarray(5 * PS, 6 * PS))).toBe(true);
      expect(out.subarray(2 * PS).equals(s.data.subarray(8 * PS, 9 * PS))).toBe(true);
      expect(reader.stats()).toMatchObject({ badCopies: 1, unrecoverable: 1, repaired: 0 });
    } finally {
      reader.close();
      await file.close();
    }
    await expect(reader.read([5], Buffer.alloc(PS))).rejects.toMatchObject({ code: 'TS_ERR_CLOSED' });
  });
});
