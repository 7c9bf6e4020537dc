/**
 * How a page is stored as a Redis value in the default key scheme: an 8-byte header, then the
 * page bytes.
 *
 *   offset 0  'T' 'S'   magic (tells our values apart from anything else under the prefix)
 *   offset 2  u8        format version (1)
 *   offset 3  u8        log2(page size)
 *   offset 4  u32 LE    CRC-32 of the page bytes (core's pageChecksum)
 *   offset 8  page bytes
 *
 * A value that does not decode is reported as TS_ERR_CORRUPT (wrong length, magic or version),
 * TS_ERR_PAGE_SIZE (a valid value of another page size) or TS_ERR_CHECKSUM (bytes changed);
 * its bytes never reach the caller.
 */
import { ErrorCode, TierStackError, pageChecksum } from '@tierstack/core';

export const VALUE_HEADER_BYTES = 8;
export const VALUE_FORMAT_VERSION = 1;
const MAGIC0 = 0x54; // 'T'
const MAGIC1 = 0x53; // 'S'

/**
 * Builds the stored value of one page (header + a copy of the page). `into`, when given, is
 * VALUE_HEADER_BYTES + pageSize bytes to build it in (a slice of one allocation per batch).
 */
export function encodeValue(data: Buffer, offset: number, pageSize: number, pageShift: number, into?: Buffer): Buffer {
  const page = data.subarray(offset, offset + pageSize);
  const value = into ?? Buffer.allocUnsafe(VALUE_HEADER_BYTES + pageSize);
  value[0] = MAGIC0;
  value[1] = MAGIC1;
  value[2] = VALUE_FORMAT_VERSION;
  value[3] = pageShift;
  value.writeUInt32LE(pageChecksum(page), 4);
  page.copy(value, VALUE_HEADER_BYTES);
  return value;
}

/** Where a bad value was found, for error details. */
export interface ValueSite {
  ns: string;
  page: number;
  key: string;
}

function corrupt(site: ValueSite, why: string, extra: Record<string, unknown> = {}): TierStackError {
  return new TierStackError(ErrorCode.Corrupt, `redis value of page ${site.page} in namespace "${site.ns}" (key ${site.key}) is corrupt: ${why}`, {
    details: { ...site, ...extra },
  });
}

/** Checks a stored value and copies its page to out[outOffset..]. Throws a typed error if it is bad. */
export function decodeValueInto(value: Buffer, out: Buffer, outOffset: number, pageSize: number, pageShift: number, site: ValueSite): void {
  if (value.length < VALUE_HEADER_BYTES || value[0] !== MAGIC0 || value[1] !== MAGIC1) {
    throw corrupt(site, `not a tierstack page value (${value.length} bytes, no header)`, { length: value.length });
  }
  if (value[2] !== VALUE_FORMAT_VERSION) throw corrupt(site, `unknown format version ${value[2]}`, { version: value[2] });
  if (value[3] !== pageShift) {
    const theirs = value[3]! < 31 ? 2 ** value[3]! : -1;
    throw new TierStackError(ErrorCode.PageSize, `redis value of page ${site.page} in namespace "${site.ns}" holds a ${theirs}-byte page, this tier uses ${pageSize}`, {
      details: { ...site, storedPageSize: theirs, pageSize },
    });
  }
  if (value.length !== VALUE_HEADER_BYTES + pageSize) {
    throw corrupt(site, `length ${value.length}, expected ${VALUE_HEADER_BYTES + pageSize}`, { length: value.length });
  }
  const page = value.subarray(VALUE_HEADER_BYTES);
  const stored = value.readUInt32LE(4);
  const actual = pageChecksum(page);
  if (stored !== actual) {
    throw new TierStackError(ErrorCode.Checksum, `redis value of page ${site.page} in namespace "${site.ns}" (key ${site.key}) fails its checksum`, {
      details: { ...site, stored, actual },
    });
  }
  page.copy(out, outOffset);
}

/** The headerless form of the ublk-sector scheme: the value is the raw page, nothing else. */
export function decodeRawInto(value: Buffer, out: Buffer, outOffset: number, pageSize: number, site: ValueSite): void {
  if (value.length !== pageSize) throw corrupt(site, `raw page of ${value.length} bytes, expected ${pageSize}`, { length: value.length });
  value.copy(out, outOffset);
}
