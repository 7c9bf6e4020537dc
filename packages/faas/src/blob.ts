/**
 * Byte blobs (manifests, the catalog index) stored across consecutive pages of a namespace.
 *
 * Page 0 starts with a 20-byte header {magic u32, version u32, length u32, crc32 u32,
 * generation u32} (LE), the bytes follow and continue over pages 1, 2, ... The header page is
 * written last and the CRC covers the bytes, so a torn or damaged blob reads as TS_ERR_CORRUPT,
 * never as wrong data. Callers that update a blob in place keep two slots and alternate between
 * them by generation (see catalog.ts), so an interrupted update leaves the previous version.
 */
import { crc32 } from 'node:zlib';
import { TierStackError, ErrorCode, type PageStore } from '@tierstack/core';

const MAGIC = 0x42505354; // "TSPB"
const VERSION = 1;
const HEADER = 20;

const range = (start: number, n: number): number[] => Array.from({ length: n }, (_, i) => start + i);

/** Pages a blob of `length` bytes occupies. */
export function blobPages(length: number, pageSize: number): number {
  return Math.ceil((HEADER + length) / pageSize);
}

export async function writeBlob(store: PageStore, ns: string, bytes: Uint8Array, generation = 0): Promise<number> {
  const ps = store.pageSize;
  const n = blobPages(bytes.length, ps);
  const buf = Buffer.alloc(n * ps);
  buf.writeUInt32LE(MAGIC, 0);
  buf.writeUInt32LE(VERSION, 4);
  buf.writeUInt32LE(bytes.length, 8);
  buf.writeUInt32LE(crc32(bytes) >>> 0, 12);
  buf.writeUInt32LE(generation >>> 0, 16);
  buf.set(bytes, HEADER);
  if (n > 1) await store.put(ns, range(1, n - 1), buf.subarray(ps));
  await store.put(ns, [0], buf.subarray(0, ps));
  return n;
}

export interface Blob {
  bytes: Buffer;
  generation: number;
}

/** Reads a blob; undefined when page 0 is absent. */
export async function readBlob(store: PageStore, ns: string, what: string): Promise<Blob | undefined> {
  const ps = store.pageSize;
  const head = await store.get(ns, [0]);
  if (!head.found[0]) return undefined;
  const h = head.data;
  const corrupt = (why: string): TierStackError => new TierStackError(ErrorCode.Corrupt, `${what} is corrupt: ${why}`, { details: { ns } });
  if (h.readUInt32LE(0) !== MAGIC) throw corrupt('bad magic');
  if (h.readUInt32LE(4) !== VERSION) throw corrupt(`unknown blob version ${h.readUInt32LE(4)}`);
  const length = h.readUInt32LE(8);
  const n = blobPages(length, ps);
  let all = h;
  if (n > 1) {
    const rest = await store.get(ns, range(1, n - 1));
    if (rest.hits !== n - 1) throw corrupt(`${n - 1 - rest.hits} of its pages are missing`);
    all = Buffer.concat([h, rest.data]);
  }
  const bytes = all.subarray(HEADER, HEADER + length);
  if ((crc32(bytes) >>> 0) !== h.readUInt32LE(12)) throw corrupt('checksum mismatch');
  return { bytes, generation: h.readUInt32LE(16) };
}

/** Removes a blob's pages (reads the header to know how many; a damaged header removes page 0 only). */
export async function removeBlob(store: PageStore, ns: string): Promise<void> {
  const ps = store.pageSize;
  const head = await store.get(ns, [0]);
  if (!head.found[0]) return;
  const length = head.data.readUInt32LE(0) === MAGIC ? head.data.readUInt32LE(8) : 0;
  await store.remove(ns, range(0, blobPages(length, ps)));
}
