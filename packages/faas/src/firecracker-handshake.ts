/**
 * The Firecracker UFFD handshake: after connecting, Firecracker sends ONE message, a JSON array
 * of guest memory mappings, with the userfaultfd as SCM_RIGHTS. Each mapping:
 *   {base_host_virt_addr, size, offset, page_size, page_size_kib}
 * (`offset`: where the region starts in the memory file, cumulative over regions; `page_size_kib`
 * is deprecated and also holds bytes). The memory-file offset of a fault is addr - base + offset.
 * This module checks a message against the snapshot's manifest before anything is served.
 */
import { TierStackError, ErrorCode } from '@tierstack/core';
import type { SnapshotManifest } from './manifest.js';

export interface GuestMapping {
  /** Host virtual address of the region in Firecracker's process. */
  base: number;
  size: number;
  /** Offset of the region in the memory file (= snapshot image). */
  offset: number;
  pageSize: number;
}

const reject = (why: string): TierStackError => new TierStackError(ErrorCode.Protocol, `Firecracker handshake rejected: ${why}`);

function int(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw reject(`${what} is not a non-negative integer`);
  return v;
}

/** Parses and validates the handshake JSON against the manifest; TS_ERR_PROTOCOL on any problem. */
export function parseFirecrackerHandshake(message: Uint8Array | string, m: SnapshotManifest): GuestMapping[] {
  let doc: unknown;
  try {
    doc = JSON.parse(typeof message === 'string' ? message : Buffer.from(message).toString('utf8'));
  } catch (err) {
    throw reject(`the message is not JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(doc) || doc.length === 0) throw reject('expected a non-empty JSON array of region mappings');
  const ps = m.pageSize;
  const mappings = doc.map((r: unknown, i): GuestMapping => {
    if (typeof r !== 'object' || r === null) throw reject(`mapping ${i} is not an object`);
    const o = r as Record<string, unknown>;
    const pageSize = o.page_size !== undefined ? int(o.page_size, `mapping ${i} page_size`) : int(o.page_size_kib, `mapping ${i} page_size_kib`);
    const g = { base: int(o.base_host_virt_addr, `mapping ${i} base_host_virt_addr`), size: int(o.size, `mapping ${i} size`), offset: int(o.offset, `mapping ${i} offset`), pageSize };
    if (g.pageSize !== ps) throw reject(`mapping ${i} uses ${g.pageSize}-byte pages, the snapshot ${ps}`);
    if (g.size === 0 || g.size % ps || g.base % ps || g.offset % ps) throw reject(`mapping ${i} is not page-aligned or empty`);
    if (g.offset + g.size > m.pageCount * ps) {
      throw reject(`mapping ${i} (offset ${g.offset}, ${g.size} bytes) does not fit the ${m.pageCount * ps}-byte snapshot ${m.id}`);
    }
    return g;
  });
  const byAddr = [...mappings].sort((a, b) => a.base - b.base);
  for (let i = 1; i < byAddr.length; i++) if (byAddr[i - 1]!.base + byAddr[i - 1]!.size > byAddr[i]!.base) throw reject('mappings overlap in memory');
  const byOff = [...mappings].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOff.length; i++) if (byOff[i - 1]!.offset + byOff[i - 1]!.size > byOff[i]!.offset) throw reject('mappings overlap in the memory file');
  return mappings;
}
