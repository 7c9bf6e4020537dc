/**
 * Deterministic page contents for tests: every byte depends on (namespace, page, version), so a
 * page read back can be checked against what was written without keeping a copy, and a page
 * served for the wrong key or from an older write is caught.
 */
import { namespaceId } from '../keys.js';

function seedOf(ns: string, page: number, version: number): bigint {
  let x = namespaceId(ns) ^ (BigInt(page) * 0x9e3779b97f4a7c15n) ^ (BigInt(version) << 48n);
  x &= 0xffffffffffffffffn;
  return x === 0n ? 0x1234567n : x;
}

/** Fills `buf` (one page) with the pattern of (ns, page, version). The first 24 bytes spell the key. */
export function fillPage(buf: Uint8Array, ns: string, page: number, version = 0): void {
  let x = seedOf(ns, page, version);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const words = buf.byteLength >>> 3;
  for (let i = 0; i < words; i++) {
    x ^= (x << 13n) & 0xffffffffffffffffn;
    x ^= x >> 7n;
    x ^= (x << 17n) & 0xffffffffffffffffn;
    view.setBigUint64(i * 8, x, true);
  }
  view.setBigUint64(0, namespaceId(ns), true);
  view.setFloat64(8, page, true);
  view.setFloat64(16, version, true);
}

/** A buffer of `pages.length` pages, each filled with its pattern. */
export function makePages(ns: string, pages: ArrayLike<number>, pageSize: number, version = 0): Buffer {
  const buf = Buffer.alloc(pages.length * pageSize);
  for (let i = 0; i < pages.length; i++) fillPage(buf.subarray(i * pageSize, (i + 1) * pageSize), ns, pages[i]!, version);
  return buf;
}

/** Reads back the (page, version) a pattern page claims to be, or undefined if it is not one. */
export function decodePage(buf: Uint8Array, ns: string): { page: number; version: number } | undefined {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (view.getBigUint64(0, true) !== namespaceId(ns)) return undefined;
  const page = view.getFloat64(8, true);
  const version = view.getFloat64(16, true);
  const expect = Buffer.alloc(buf.byteLength);
  fillPage(expect, ns, page, version);
  return Buffer.compare(expect, Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)) === 0 ? { page, version } : undefined;
}

/** True if `buf` holds exactly the pattern of (ns, page, version). */
export function pageMatches(buf: Uint8Array, ns: string, page: number, version = 0): boolean {
  const expect = Buffer.alloc(buf.byteLength);
  fillPage(expect, ns, page, version);
  return Buffer.compare(expect, Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)) === 0;
}
