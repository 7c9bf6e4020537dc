/**
 * Page checksums for JavaScript tiers and manifests: CRC-32 (the zlib polynomial), computed by
 * Node's built-in zlib.crc32, which runs natively at several GB/s. Native tiers may use a
 * different algorithm internally (page_store.h offers a hardware CRC-32C); a checksum never
 * crosses from one tier to another.
 */
import { crc32 } from 'node:zlib';

export function pageChecksum(page: Uint8Array): number {
  return crc32(page) >>> 0;
}

/** True if every byte of `buf` is zero (used to elide zero pages). */
export function isZeroPage(buf: Uint8Array): boolean {
  // Compare 8 bytes at a time where alignment allows; fall back to bytes.
  const len = buf.byteLength;
  if ((buf.byteOffset & 7) === 0 && (len & 7) === 0) {
    const words = new BigUint64Array(buf.buffer, buf.byteOffset, len >>> 3);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
    return true;
  }
  for (let i = 0; i < len; i++) if (buf[i] !== 0) return false;
  return true;
}
