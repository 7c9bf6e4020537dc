/** Test fixtures: memory images with a realistic mix, CRIU image directories in both layouts. */
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, readdirSync, openSync, readSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, MemoryTier, FileTier, type TierStack } from '@tierstack/core';
import { protoTypes } from '../src/proto.js';
import { CRIU_IMG_MAGIC, CRIU_PAGEMAP_MAGIC } from '../src/criu-image.js';

export const PS = 4096;

export function tmp(prefix = 'faas-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** Deterministic page bytes: every 8-byte word encodes (seed, page, word). Page p is zero when zero(p). */
export function imageBytes(pages: number, seed: number, zero: (p: number) => boolean = (p) => p % 5 === 3): Buffer {
  const buf = Buffer.alloc(pages * PS);
  for (let p = 0; p < pages; p++) {
    if (zero(p)) continue;
    for (let w = 0; w < PS / 8; w++) buf.writeUInt32LE(((seed * 2654435761) ^ (p * 40503) ^ (w * 97)) >>> 0, p * PS + w * 8), buf.writeUInt32LE(p, p * PS + w * 8 + 4);
  }
  return buf;
}

export async function makeStack(dir: string, memoryPages = 64): Promise<TierStack> {
  return createTierStack({ tiers: [new MemoryTier({ maxSize: memoryPages * PS }), await FileTier.open({ dir: join(dir, 'file-tier') })] });
}

export interface CriuEntry {
  vaddr: number;
  nrPages: number;
  flags?: number;
}

/** Writes pagemap-<pid>.img (+ pages-<pagesId>.img) as CRIU would, in either layout. */
export function writeCriuImages(dir: string, pid: number, pagesId: number, entries: CriuEntry[], layout: 'legacy' | 'v42', pages: Buffer): void {
  mkdirSync(dir, { recursive: true });
  const { PagemapHead, PagemapEntry } = protoTypes();
  const recs: Buffer[] = [];
  const rec = (b: Uint8Array): void => {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    recs.push(len, Buffer.from(b));
  };
  rec(PagemapHead.encode(PagemapHead.fromObject({ pagesId })).finish());
  for (const e of entries) {
    const o: Record<string, unknown> = { vaddr: e.vaddr, nrPages: layout === 'v42' ? 0 : e.nrPages };
    if (layout === 'v42') o.nrPagesU64 = e.nrPages;
    if (e.flags !== undefined) o.flags = e.flags;
    rec(PagemapEntry.encode(PagemapEntry.fromObject(o)).finish());
  }
  const head = Buffer.alloc(8);
  head.writeUInt32LE(CRIU_IMG_MAGIC, 0);
  head.writeUInt32LE(CRIU_PAGEMAP_MAGIC, 4);
  writeFileSync(join(dir, `pagemap-${pid}.img`), Buffer.concat([head, ...recs]));
  writeFileSync(join(dir, `pages-${pagesId}.img`), pages);
}

export const CRIU_ENTRIES: CriuEntry[] = [
  { vaddr: 0x400000, nrPages: 3, flags: 4 },
  { vaddr: 0x7f0000000000, nrPages: 40, flags: 4 | 2 },
  { vaddr: 0x7ffd00000000, nrPages: 5 },
];

/** Flips bytes of a stored page in a FileTier directory behind the tier's back (its own CRC then fails). */
export function corruptFileTierPage(tierDir: string, ns: string, page: number, pageSize = PS): void {
  const d = readdirSync(tierDir).find((x) => decodeURIComponent(x) === ns);
  if (!d) throw new Error(`no directory for ${ns} in ${tierDir}`);
  const file = join(tierDir, d, `${Math.floor(page / 2 ** 18)}.pages`);
  const fd = openSync(file, 'r+');
  try {
    const b = Buffer.alloc(64);
    readSync(fd, b, 0, 64, (page % 2 ** 18) * pageSize + 64);
    for (let i = 0; i < b.length; i++) b[i] = b[i]! ^ 0x5a;
    writeSync(fd, b, 0, 64, (page % 2 ** 18) * pageSize + 64);
  } finally {
    closeSync(fd);
  }
}
