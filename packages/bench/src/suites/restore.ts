/**
 * Snapshot restore (@tierstack/faas).
 *
 * 1. CRIU page-server protocol: pages/s served by `serveCriuPages` (snapshot in a
 *    [DRAM, FileTier] stack, checksums verified per page) against a baseline server that parses
 *    the same GET headers and answers with pread from the CRIU pages image. One client
 *    connection keeps QD GETs of `pagesPerGet` pages in flight (random vaddrs).
 * 2. Restore into a toucher (when @tierstack/uffd is built), and tierstack's Firecracker handler
 *    against a C on-demand UFFD handler (the handler Firecracker users run today): see restore-uffd.ts.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { open, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createTierStack, FileTier, type PageStore } from '@tierstack/core';
import {
  SnapshotCatalog,
  importCriu,
  serveCriuPages,
  encodePsHeader,
  decodePsHeader,
  ADD_F_PRESENT,
  PS_IOV_GET,
  parsePagemap,
  CRIU_IMG_MAGIC,
  CRIU_PAGEMAP_MAGIC,
} from '@tierstack/faas';
import { compare, result, rng, type Suite, type CaseResult } from '../harness.js';

const PS = 4096;
const IMAGE_PAGES = 16384; // 64 MiB: imports in about a second here
const VADDR = 0x7f0000000000;

/** A client that keeps GETs pipelined and counts pages received. */
class PsClient {
  private buf = Buffer.alloc(0);
  private waiting: { need: number; resolve: (pages: number) => void } | undefined;
  private constructor(private readonly sock: Socket) {
    sock.on('data', (d) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.pump();
    });
  }
  static async open(port: number): Promise<PsClient> {
    const s = connect(port, '127.0.0.1');
    s.setNoDelay(true);
    await new Promise<void>((r, j) => s.once('connect', () => r()).once('error', j));
    return new PsClient(s);
  }
  private pending = 0;
  private got = 0;
  private pump(): void {
    for (;;) {
      if (this.buf.length < 32) break;
      const h = decodePsHeader('v42', this.buf.subarray(0, 32));
      if (h.cmd !== ADD_F_PRESENT) throw new Error('bad reply');
      const len = 32 + h.nrPages * PS;
      if (this.buf.length < len) break;
      this.buf = this.buf.subarray(len);
      this.pending--;
      this.got += h.nrPages;
    }
    if (this.waiting && this.pending === 0) {
      const w = this.waiting;
      this.waiting = undefined;
      const g = this.got;
      this.got = 0;
      w.resolve(g);
    }
  }
  /** Sends `vaddrs.length` GETs at once, resolves with the pages received when all are answered. */
  burst(vaddrs: number[], pagesPerGet: number): Promise<number> {
    this.pending += vaddrs.length;
    this.sock.write(Buffer.concat(vaddrs.map((v) => encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: pagesPerGet, vaddr: v, dstId: 1n }))));
    return new Promise((resolve) => (this.waiting = { need: vaddrs.length, resolve }));
  }
  close(): void {
    this.sock.destroy();
  }
}

/** The baseline: same protocol, pages straight from the pages image with pread. */
async function preadServer(dir: string): Promise<{ server: Server; port: number; close: () => Promise<void> }> {
  const { readFile } = await import('node:fs/promises');
  const pm = parsePagemap(await readFile(join(dir, 'pagemap-1.img')));
  const fh = await open(join(dir, `pages-${pm.pagesId}.img`), 'r');
  const entries: Array<{ vaddr: number; end: number; off: number }> = [];
  let off = 0;
  for (const e of pm.entries) {
    entries.push({ vaddr: e.vaddr, end: e.vaddr + e.nrPages * PS, off });
    off += e.nrPages * PS;
  }
  const server = createServer((sock) => {
    sock.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let chain = Promise.resolve();
    sock.on('data', (d) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      while (buf.length >= 32) {
        const h = decodePsHeader('v42', buf.subarray(0, 32));
        buf = buf.subarray(32);
        chain = chain.then(async () => {
          const e = entries.find((x) => h.vaddr >= x.vaddr && h.vaddr < x.end);
          if (!e) return void sock.destroy();
          const n = Math.min(h.nrPages, (e.end - h.vaddr) / PS);
          const out = Buffer.alloc(32 + n * PS);
          encodePsHeader('v42', { cmd: ADD_F_PRESENT, nrPages: n, vaddr: h.vaddr, dstId: h.dstId }).copy(out);
          await fh.read(out, 32, n * PS, e.off + (h.vaddr - e.vaddr));
          sock.write(out);
        });
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    server,
    port,
    close: async () => {
      await new Promise<void>((r) => server.close(() => r()));
      await fh.close();
    },
  };
}

/** Writes a CRIU image directory: one 64 MiB mapping, 25% zero pages. */
async function writeCriuDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  // Encode by hand (tiny): pagemap_head {1: pages_id=1}, pagemap_entry {1: vaddr, 2: 0, 4: flags=4, 5: nr_pages}.
  const varint = (n: bigint): number[] => {
    const out: number[] = [];
    do {
      let b = Number(n & 0x7fn);
      n >>= 7n;
      if (n > 0n) b |= 0x80;
      out.push(b);
    } while (n > 0n);
    return out;
  };
  const head = Buffer.from([0x08, ...varint(1n)]);
  const entry = Buffer.from([0x08, ...varint(BigInt(VADDR)), 0x10, 0, 0x20, 4, 0x28, ...varint(BigInt(IMAGE_PAGES))]);
  const rec = (b: Buffer): Buffer => Buffer.concat([Buffer.from(new Uint32Array([b.length]).buffer), b]);
  const magic = Buffer.alloc(8);
  magic.writeUInt32LE(CRIU_IMG_MAGIC, 0);
  magic.writeUInt32LE(CRIU_PAGEMAP_MAGIC, 4);
  await writeFile(join(dir, 'pagemap-1.img'), Buffer.concat([magic, rec(head), rec(entry)]));
  const pages = Buffer.alloc(IMAGE_PAGES * PS);
  for (let p = 0; p < IMAGE_PAGES; p++) if (p % 4 !== 3) pages.fill((p * 131) & 0xff, p * PS, p * PS + PS - 8), pages.writeUInt32LE(p, p * PS + PS - 8);
  await writeFile(join(dir, 'pages-1.img'), pages);
}

export const restoreSuite: Suite = {
  name: 'restore',
  description: 'snapshot restore: CRIU page server vs a pread server; eager vs lazy vs lazy+prefetch restore; Firecracker restores vs a C on-demand UFFD handler (with @tierstack/uffd)',
  async *run(ctx) {
    const dir = join(ctx.tmpDir, 'criu');
    await writeCriuDir(dir);
    // The default native stack: a DRAM cache (CxlTier over a memfd) over a FileTier with a native read path.
    const { CxlTier } = await import('@tierstack/cxl');
    const dram = await CxlTier.open({ backing: { kind: 'memfd', size: 128 << 20 }, name: 'dram' });
    const stack = createTierStack({ tiers: [dram as PageStore, await FileTier.open({ dir: join(ctx.tmpDir, 'file') })] });
    const catalog = new SnapshotCatalog(stack);
    ctx.log('importing a 64 MiB CRIU image');
    await importCriu(catalog, 'bench', dir);
    const ours = await serveCriuPages(catalog, { port: 0, snapshotId: 'bench', headerLayout: 'v42' });
    const base = await preadServer(dir);
    const a = await PsClient.open(ours.port);
    const b = await PsClient.open(base.port);
    try {
      // Both sides warm before measuring: the pread server reads the image from the page cache
      // (it was just written), so the stack first gets every page into its DRAM tier (one pass
      // of whole-mapping GETs through each server).
      ctx.log('criu: one warm-up pass over the image through both servers');
      for (let p = 0; p < IMAGE_PAGES; p += 256) {
        await a.burst([VADDR + p * PS], 256);
        await b.burst([VADDR + p * PS], 256);
      }
      for (const [pagesPerGet, qd] of [
        [1, 32],
        [16, 8],
      ] as const) {
        const next = rng(pagesPerGet * 7919);
        const vaddrs = (): number[] => Array.from({ length: qd }, () => VADDR + (next() % (IMAGE_PAGES - pagesPerGet)) * PS);
        ctx.log(`criu GET ${pagesPerGet} pages, QD ${qd}`);
        const m = await compare(
          () => a.burst(vaddrs(), pagesPerGet),
          () => b.burst(vaddrs(), pagesPerGet),
          ctx.measure,
        );
        yield result('restore', `criu GET ${pagesPerGet}p QD${qd} (pages/s)`, 'pread page server', m, `stack [DRAM (CxlTier memfd) 128 MiB, FileTier], both warm, crc32 verified per page; ${ours.stats().nativeReads ? 'native batch reads' : 'JS reads'}, ${ours.stats().jsPathPages} pages via JS`) as CaseResult;
      }
    } finally {
      a.close();
      b.close();
      await ours.close();
      await base.close();
    }
    const uffdCases = await import('./restore-uffd.js')
      .then((mod) => mod.restoreUffdCases)
      .catch((err: Error) => void ctx.log(`restore cases with uffd skipped: ${err.message.split('\n')[0]}`));
    if (uffdCases) yield* uffdCases(ctx, catalog);
    await stack.close();
  },
};
