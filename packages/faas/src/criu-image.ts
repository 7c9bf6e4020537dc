/**
 * CRIU image directories: `pagemap-<pid>.img` says which virtual ranges were dumped,
 * `pages-<pages_id>.img` holds their bytes (the pages of PRESENT entries, in order).
 *
 * Image framing: u32 LE magic 0x54564319, u32 LE per-image magic (pagemap 0x56084025), then
 * records [u32 LE length][protobuf]. The first pagemap record is pagemap_head {pages_id}, the
 * rest pagemap_entry {vaddr, nr_pages, in_parent, flags, ...}. CRIU before 4.2 writes nr_pages
 * as field 2 (uint32); 4.2+ writes 0 there and the count in field 5 (uint64). Both are read.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { TierStackError, ErrorCode } from '@tierstack/core';
import { protoTypes, toNumber } from './proto.js';
import type { RegionInfo } from './manifest.js';
import { importImage, type ImageSource, type ImportOptions, type ImportResult } from './import.js';
import type { SnapshotCatalog } from './catalog.js';

export const CRIU_IMG_MAGIC = 0x54564319;
export const CRIU_PAGEMAP_MAGIC = 0x56084025;
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;
export const CRIU_PAGE_SIZE = 4096;

export interface PagemapEntry {
  vaddr: number;
  nrPages: number;
  flags: number;
  inParent: boolean;
}

export interface Pagemap {
  pid: number;
  pagesId: number;
  entries: PagemapEntry[];
  /** Which nr_pages field the image used. */
  layout: 'legacy' | 'v42';
}

const corrupt = (file: string, why: string): TierStackError =>
  new TierStackError(ErrorCode.Corrupt, `CRIU image ${file} is corrupt: ${why}`, { details: { file } });

/** Parses the bytes of a pagemap image. */
export function parsePagemap(buf: Buffer, file = 'pagemap', pid = 0): Pagemap {
  const { PagemapHead, PagemapEntry } = protoTypes();
  if (buf.length < 8) throw corrupt(file, 'shorter than its magic');
  if (buf.readUInt32LE(0) !== CRIU_IMG_MAGIC) throw corrupt(file, `bad image magic 0x${buf.readUInt32LE(0).toString(16)}`);
  if (buf.readUInt32LE(4) !== CRIU_PAGEMAP_MAGIC) throw corrupt(file, `not a pagemap image (magic 0x${buf.readUInt32LE(4).toString(16)})`);
  const records: Buffer[] = [];
  for (let off = 8; off < buf.length; ) {
    if (off + 4 > buf.length) throw corrupt(file, 'truncated record length');
    const len = buf.readUInt32LE(off);
    if (off + 4 + len > buf.length) throw corrupt(file, `truncated record at offset ${off} (${len} bytes announced)`);
    records.push(buf.subarray(off + 4, off + 4 + len));
    off += 4 + len;
  }
  if (records.length === 0) throw corrupt(file, 'no pagemap_head');
  const decode = <T>(type: typeof PagemapHead, rec: Buffer, what: string): T => {
    try {
      return type.toObject(type.decode(rec), { longs: Number }) as T;
    } catch (err) {
      throw corrupt(file, `${what} does not decode: ${(err as Error).message}`);
    }
  };
  const head = decode<{ pagesId: number }>(PagemapHead, records[0]!, 'pagemap_head');
  let layout: Pagemap['layout'] = 'legacy';
  const entries = records.slice(1).map((rec, i) => {
    const e = decode<{ vaddr: unknown; nrPages?: number; nrPagesU64?: unknown; flags?: number; inParent?: boolean }>(PagemapEntry, rec, `pagemap_entry ${i}`);
    const wide = toNumber(e.nrPagesU64);
    if (wide > 0) layout = 'v42';
    const nrPages = wide > 0 ? wide : (e.nrPages ?? 0);
    const vaddr = toNumber(e.vaddr);
    if (nrPages <= 0) throw corrupt(file, `entry ${i} has no pages`);
    if (vaddr % CRIU_PAGE_SIZE !== 0) throw corrupt(file, `entry ${i} vaddr 0x${vaddr.toString(16)} is not page-aligned`);
    return { vaddr, nrPages, flags: e.flags ?? PE_PRESENT, inParent: e.inParent === true };
  });
  return { pid, pagesId: head.pagesId, entries, layout };
}

/** Builds the image source of a CRIU directory (all pagemaps, or one pid's). */
export async function criuImageSource(dir: string, opts: { pid?: number } = {}): Promise<ImageSource & { pagemaps: Pagemap[] }> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw new TierStackError(ErrorCode.NotFound, `cannot read the CRIU image directory ${dir}: ${(err as Error).message}`, { cause: err });
  }
  const pids = names
    .map((n) => /^pagemap-(\d+)\.img$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .filter((pid) => opts.pid === undefined || pid === opts.pid)
    .sort((a, b) => a - b);
  if (pids.length === 0) {
    throw new TierStackError(ErrorCode.NotFound, `no pagemap-${opts.pid ?? '<pid>'}.img in ${dir}`, { details: { dir } });
  }
  const pagemaps: Pagemap[] = [];
  const segments: ImageSource['segments'] = [];
  const regions: RegionInfo[] = [];
  let offset = 0;
  for (const pid of pids) {
    const file = join(dir, `pagemap-${pid}.img`);
    const pm = parsePagemap(await readFile(file), file, pid);
    pagemaps.push(pm);
    let pages = 0;
    for (const e of pm.entries) {
      const present = (e.flags & PE_PRESENT) !== 0 && !e.inParent;
      if (!present) {
        throw new TierStackError(
          ErrorCode.Unsupported,
          `${file}: entry at 0x${e.vaddr.toString(16)} is not PRESENT (flags ${e.flags}${e.inParent ? ', in_parent' : ''}); incremental (parent) images are not supported — restore from a full dump`,
        );
      }
      regions.push({ name: `${pid}@0x${e.vaddr.toString(16)}`, size: e.nrPages * CRIU_PAGE_SIZE, fileOffset: offset, base: e.vaddr, pid });
      offset += e.nrPages * CRIU_PAGE_SIZE;
      pages += e.nrPages;
    }
    const pagesFile = join(dir, `pages-${pm.pagesId}.img`);
    const want = pages * CRIU_PAGE_SIZE;
    let have: number;
    try {
      have = (await stat(pagesFile)).size;
    } catch {
      throw corrupt(pagesFile, 'the pages image named by the pagemap is missing');
    }
    if (have < want) throw corrupt(pagesFile, `truncated: the pagemap needs ${want} bytes, the file has ${have}`);
    if (have > want) throw corrupt(pagesFile, `${have - want} bytes more than the pagemap describes`);
    if (want > 0) segments.push({ path: pagesFile, length: want });
  }
  return { kind: 'criu', source: dir, segments, regions, pagemaps };
}

export interface CriuImportOptions extends ImportOptions {
  /** Import only this pid's pagemap (default: every pagemap-<pid>.img of the directory). */
  pid?: number;
}

/** Imports a CRIU image directory; the raw image is the pages images in pid order. */
export async function importCriu(catalog: SnapshotCatalog, id: string, dir: string, opts: CriuImportOptions = {}): Promise<ImportResult> {
  if (catalog.pageSize !== CRIU_PAGE_SIZE) {
    throw new TierStackError(ErrorCode.PageSize, `CRIU images use ${CRIU_PAGE_SIZE}-byte pages, the stack ${catalog.pageSize}`);
  }
  const src = await criuImageSource(dir, opts.pid === undefined ? {} : { pid: opts.pid });
  return importImage(catalog, id, src, opts);
}
