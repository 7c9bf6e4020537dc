import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { openSync, writeSync, closeSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { TierStack } from '@tierstack/core';
import { SnapshotCatalog, SnapshotManifest, importCriu, serveCriuPages, encodePsHeader, decodePsHeader, ADD_F_PRESENT, PS_IOV_GET, PS_IOV_CLOSE, type CriuPageServer } from '../src/index.js';
import { PS, tmp, cleanup, imageBytes, makeStack, writeCriuImages, CRIU_ENTRIES } from './fixtures.js';

let dir: string;
let stack: TierStack;
let catalog: SnapshotCatalog;
const pid = 4321;
const total = CRIU_ENTRIES.reduce((s, e) => s + e.nrPages, 0);
const pages = imageBytes(total, 11);

/** Bytes of the image at a virtual address (what the page server must send). */
function expected(vaddr: number, n: number): Buffer {
  let off = 0;
  for (const e of CRIU_ENTRIES) {
    if (vaddr >= e.vaddr && vaddr < e.vaddr + e.nrPages * PS) {
      const start = off + (vaddr - e.vaddr);
      const m = Math.min(n, (e.vaddr + e.nrPages * PS - vaddr) / PS);
      return pages.subarray(start, start + m * PS);
    }
    off += e.nrPages * PS;
  }
  throw new Error('bad test vaddr');
}

/** A minimal lazy-pages client: a socket with a byte queue we can await exact lengths from. */
class Client {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;
  constructor(readonly sock: Socket) {
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
  static async open(port: number): Promise<Client> {
    const s = connect(port, '127.0.0.1');
    await new Promise<void>((r, j) => s.once('connect', () => r()).once('error', j));
    return new Client(s);
  }
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length}/${n} bytes`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  async waitClosed(): Promise<void> {
    while (!this.closed) await new Promise<void>((r) => this.waiters.push(r));
  }
}

beforeAll(async () => {
  dir = tmp();
  stack = await makeStack(dir);
  catalog = new SnapshotCatalog(stack);
  writeCriuImages(join(dir, 'img'), pid, 1, CRIU_ENTRIES, 'v42', pages);
  await importCriu(catalog, 'criu', join(dir, 'img'));
});
afterAll(async () => {
  await stack.close();
  cleanup(dir);
});

const GETS = [
  { vaddr: 0x400000, n: 3 },
  { vaddr: 0x401000, n: 10 }, // clamped to the end of the mapping (2 pages)
  { vaddr: 0x7f0000000000 + 7 * PS, n: 16 },
  { vaddr: 0x7f0000000000 + 30 * PS, n: 64 }, // clamped to 10
  { vaddr: 0x7ffd00000000, n: 5 },
];

for (const layout of ['legacy', 'v42'] as const) {
  for (const configured of [layout, 'auto'] as const) {
    it(`answers pipelined GETs in order, byte-for-byte (${layout} client, server ${configured})`, async () => {
      const server = await serveCriuPages(catalog, { port: 0, snapshotId: 'criu', headerLayout: configured });
      try {
        const c = await Client.open(server.port);
        const dst = BigInt(pid); // lazy-pages sends the pid itself
        // All requests leave before any answer is read.
        c.sock.write(Buffer.concat(GETS.map((g) => encodePsHeader(layout, { cmd: PS_IOV_GET, nrPages: g.n, vaddr: g.vaddr, dstId: dst }))));
        const hsize = layout === 'v42' ? 32 : 24;
        for (const g of GETS) {
          const h = decodePsHeader(layout, await c.read(hsize));
          const want = expected(g.vaddr, g.n);
          expect(h).toEqual({ cmd: ADD_F_PRESENT, nrPages: want.length / PS, vaddr: g.vaddr, dstId: dst });
          expect((await c.read(want.length)).equals(want)).toBe(true);
        }
        c.sock.write(encodePsHeader(layout, { cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0, dstId: 0n }));
        expect((await c.read(4)).readInt32LE(0)).toBe(0);
        await c.waitClosed();
        expect(server.stats()).toMatchObject({
          gets: GETS.length,
          pagesServed: GETS.reduce((s, g) => s + expected(g.vaddr, g.n).length / PS, 0),
          // The layout the client spoke, as detected ('auto') or forced.
          v42Connections: layout === 'v42' ? 1 : 0,
          legacyConnections: layout === 'legacy' ? 1 : 0,
        });
      } finally {
        await server.close();
      }
    });
  }
}

it('a malformed header or an unknown address closes only that connection', async () => {
  const server = await serveCriuPages(catalog, { port: 0, snapshotId: 'criu', headerLayout: 'v42' });
  try {
    const good = await Client.open(server.port);
    const bad = await Client.open(server.port);
    const lost = await Client.open(server.port);
    bad.sock.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    lost.sock.write(encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: 1, vaddr: 0x1000, dstId: 1n }));
    await bad.waitClosed();
    await lost.waitClosed();
    good.sock.write(encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: 2, vaddr: 0x7ffd00000000, dstId: 1n }));
    expect(decodePsHeader('v42', await good.read(32)).nrPages).toBe(2);
    expect((await good.read(2 * PS)).equals(expected(0x7ffd00000000, 2))).toBe(true);
    expect(good.closed).toBe(false);
    expect(server.stats().rejectedConnections).toBe(2);
    expect(server.stats().lastError).toMatch(/vaddr|malformed/);
    good.sock.destroy();
  } finally {
    await server.close();
  }
});

it('an unknown snapshot is TS_ERR_NOT_FOUND', async () => {
  await expect(serveCriuPages(catalog, { port: 0, snapshotId: 'none' })).rejects.toMatchObject({ code: 'TS_ERR_NOT_FOUND' });
});

it('several pids: the GET dst_id is the pid itself (what lazy-pages sends), never read as pid << 8 | type', async () => {
  // Pids whose mappings share a vaddr (a fork): 25677 >> 8 === 100. A real CRIU 4.2 restore of
  // such a tree got pid 100's pages for pid 25677 while dst_id was decoded as pid << 8 | type.
  const d = join(dir, 'multi');
  const a = imageBytes(4, 40);
  const b = imageBytes(4, 41);
  writeCriuImages(d, 100, 1, [{ vaddr: 0x10000, nrPages: 4 }], 'legacy', a);
  writeCriuImages(d, 25677, 2, [{ vaddr: 0x10000, nrPages: 4 }], 'legacy', b);
  await importCriu(catalog, 'multi', d);
  const server = await serveCriuPages(catalog, { port: 0, snapshotId: 'multi', headerLayout: 'legacy' });
  try {
    const c = await Client.open(server.port);
    for (const [p, img] of [
      [25677, b],
      [100, a],
    ] as const) {
      c.sock.write(encodePsHeader('legacy', { cmd: PS_IOV_GET, nrPages: 2, vaddr: 0x11000, dstId: BigInt(p) }));
      expect(decodePsHeader('legacy', await c.read(24))).toEqual({ cmd: ADD_F_PRESENT, nrPages: 2, vaddr: 0x11000, dstId: BigInt(p) });
      expect((await c.read(2 * PS)).equals(img.subarray(PS, 3 * PS))).toBe(true);
    }
    expect(c.closed).toBe(false);
    // A pid the snapshot does not hold (25601 = 100 << 8 | 1) is refused, not served pid 100's pages.
    const other = await Client.open(server.port);
    other.sock.write(encodePsHeader('legacy', { cmd: PS_IOV_GET, nrPages: 2, vaddr: 0x11000, dstId: (100n << 8n) | 1n }));
    await other.waitClosed();
    expect(server.stats()).toMatchObject({ rejectedConnections: 1, lastErrorCode: 'TS_ERR_NOT_FOUND', pagesServed: 4 });
    c.sock.destroy();
  } finally {
    await server.close();
  }
});

describe('bounded memory under hostile clients', () => {
  const BIG = 8192; // pages of one mapping (32 MiB)
  const BASE = 0x7f1000000000;
  const bigPages = imageBytes(BIG, 77);

  beforeAll(async () => {
    writeCriuImages(join(dir, 'big'), 99, 1, [{ vaddr: BASE, nrPages: BIG }], 'v42', bigPages);
    await importCriu(catalog, 'big', join(dir, 'big'));
  });

  /** Expected sha256 of one connection's answer bytes for these GETs (clamped to the mapping). */
  const expectedSha = (gets: Array<{ vaddr: number; n: number }>): string => {
    const h = createHash('sha256');
    for (const g of gets) {
      const first = (g.vaddr - BASE) / PS;
      h.update(bigPages.subarray(first * PS, Math.min(BIG, first + g.n) * PS));
    }
    return h.digest('hex');
  };

  it('pipelined huge GETs from several connections that do not read: RSS stays bounded, every byte arrives right', async () => {
    const limits = { maxConnectionBytes: 2 << 20, maxTotalBytes: 8 << 20, chunkPages: 256 };
    const server = await serveCriuPages(catalog, { port: 0, snapshotId: 'big', headerLayout: 'v42', ...limits });
    const gets = Array.from({ length: 8 }, (_, k) => ({ vaddr: BASE + k * 512 * PS, n: 65536 }));
    const conns = 3;
    const rss = (): number => process.memoryUsage().rss;
    const base = rss();
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, rss())), 10);
    try {
      const client = spawn(process.execPath, [fileURLToPath(new URL('./criu-hammer-client.mjs', import.meta.url)), JSON.stringify({ port: server.port, conns, layout: 'v42', dstId: String((99n << 8n) | 1n), gets })], {
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      let out = '';
      client.stdout!.on('data', (d) => (out += d));
      const exited = new Promise<number | null>((r) => client.on('exit', r));
      for (let i = 0; i < 500 && !out.includes('sent'); i++) await new Promise((r) => setTimeout(r, 10));
      expect(out).toContain('sent');
      // The server fills its budget and stops: the clients read nothing yet.
      for (let i = 0; i < 300 && server.stats().bytesInFlight < limits.maxTotalBytes - limits.maxConnectionBytes; i++) await new Promise((r) => setTimeout(r, 10));
      expect(server.stats().bytesInFlight).toBeLessThanOrEqual(limits.maxTotalBytes);

      // Meanwhile a well-behaved client is served from what the budget has left.
      const good = await Client.open(server.port);
      good.sock.write(encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: 4, vaddr: BASE + 100 * PS, dstId: 1n }));
      expect(decodePsHeader('v42', await good.read(32)).nrPages).toBe(4);
      expect((await good.read(4 * PS)).equals(bigPages.subarray(100 * PS, 104 * PS))).toBe(true);
      good.sock.destroy();

      client.stdin!.write('go\n');
      expect(await exited).toBe(0);
      const results = JSON.parse(out.trim().split('\n').pop()!) as Array<{ replies: Array<{ cmd: number; nrPages: number; vaddr: number }>; sha256: string; closeAnswer: number }>;
      expect(results.length).toBe(conns);
      for (const r of results) {
        expect(r.replies.map((x) => [x.cmd, x.nrPages, x.vaddr])).toEqual(gets.map((g) => [ADD_F_PRESENT, Math.min(g.n, BIG - (g.vaddr - BASE) / PS), g.vaddr]));
        expect(r.sha256).toBe(expectedSha(gets));
        expect(r.closeAnswer).toBe(0);
      }
    } finally {
      clearInterval(sampler);
      await server.close();
    }
    const s = server.stats();
    const servedMiB = (s.pagesServed * PS) / 2 ** 20;
    const growthMiB = (peak - base) / 2 ** 20;
    console.log(`criu page server: ${servedMiB.toFixed(0)} MiB served to ${conns} non-reading pipelining clients; RSS ${(base / 2 ** 20).toFixed(0)} MiB -> peak ${(peak / 2 ** 20).toFixed(0)} MiB (+${growthMiB.toFixed(0)} MiB); peak in flight ${(s.peakBytesInFlight / 2 ** 20).toFixed(1)} MiB, per connection ${(s.peakConnectionBytes / 2 ** 20).toFixed(1)} MiB`);
    expect(s.peakBytesInFlight).toBeLessThanOrEqual(limits.maxTotalBytes);
    expect(s.peakConnectionBytes).toBeLessThanOrEqual(limits.maxConnectionBytes);
    expect(servedMiB).toBeGreaterThan(500);
    // Unbounded, this run holds every answer at once (> 1 GiB). Bounded: the budgets plus garbage.
    expect(growthMiB).toBeLessThan(192);
  });

  it('connection limit and idle timeout: extra and silent connections are closed, a good client is served after', async () => {
    const server = await serveCriuPages(catalog, { port: 0, snapshotId: 'big', headerLayout: 'v42', maxConnections: 2, idleTimeoutMs: 300 });
    try {
      const silent = await Client.open(server.port);
      const partial = await Client.open(server.port);
      // The first 20 bytes of a GET header, then nothing.
      partial.sock.write(encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: 1, vaddr: BASE, dstId: 1n }).subarray(0, 20));
      const extra = await Client.open(server.port);
      await extra.waitClosed();
      expect(server.stats().refusedConnections).toBe(1);
      await silent.waitClosed();
      await partial.waitClosed();
      expect(server.stats().idleClosed).toBe(2);
      expect(server.stats().lastErrorCode).toBe('TS_ERR_TIMEOUT');
      const good = await Client.open(server.port);
      good.sock.write(encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: 3, vaddr: BASE, dstId: 1n }));
      expect(decodePsHeader('v42', await good.read(32)).nrPages).toBe(3);
      expect((await good.read(3 * PS)).equals(bigPages.subarray(0, 3 * PS))).toBe(true);
      good.sock.destroy();
    } finally {
      await server.close();
    }
  });
});

describe('a forced layout the client does not speak', () => {
  for (const [server, client, hint] of [
    ['v42', 'legacy', /CRIU 3\.x-4\.1 \(24-byte\).*--criu-layout legacy or auto/],
    ['legacy', 'v42', /CRIU >= 4\.2 \(32-byte\).*--criu-layout v42 or auto/],
  ] as const) {
    it(`--criu-layout ${server} against a ${client} client: refused with a message, no deadlock; others are served`, { timeout: 10_000 }, async () => {
      const s = await serveCriuPages(catalog, { port: 0, snapshotId: 'criu', headerLayout: server, idleTimeoutMs: 0 });
      try {
        const good = await Client.open(s.port);
        const wrong = await Client.open(s.port);
        // One GET, then the client waits for its answer (as lazy-pages does).
        wrong.sock.write(encodePsHeader(client, { cmd: PS_IOV_GET, nrPages: 2, vaddr: 0x7ffd00000000, dstId: (BigInt(pid) << 8n) | 1n }));
        await wrong.waitClosed();
        expect(s.stats().lastErrorCode).toBe('TS_ERR_PROTOCOL');
        expect(s.stats().lastError).toMatch(hint);
        good.sock.write(encodePsHeader(server, { cmd: PS_IOV_GET, nrPages: 2, vaddr: 0x7ffd00000000, dstId: 1n }));
        expect(decodePsHeader(server, await good.read(server === 'v42' ? 32 : 24)).nrPages).toBe(2);
        expect((await good.read(2 * PS)).equals(expected(0x7ffd00000000, 2))).toBe(true);
        good.sock.destroy();
      } finally {
        await s.close();
      }
    });
  }
});

describe('a stored page that fails its checksum', () => {
  /** A fresh copy of the CRIU snapshot to damage. */
  const fresh = async (id: string): Promise<SnapshotManifest> => {
    await importCriu(catalog, id, join(dir, 'img'));
    return catalog.get(id);
  };
  const dst = (BigInt(pid) << 8n) | 1n;
  const MAP = 0x7f0000000000; // 40 pages, snapshot pages 3..42
  const get = (vaddr: number, n: number): Buffer => encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: n, vaddr, dstId: dst });

  it('a bad copy in the top tier is served from the tier below it: the session goes on, bytes are right', async () => {
    const m = await fresh('dmg-top');
    const p = m.storedPageList().find((x) => x > 10)!;
    // The DRAM tier holds a wrong copy of p (the file tier's is right).
    await stack.tiers[0]!.put(m.namespace, [p], Buffer.alloc(PS, 0xab));
    const server = await serveCriuPages(catalog, { port: 0, snapshotId: 'dmg-top', headerLayout: 'v42' });
    try {
      const c = await Client.open(server.port);
      const vaddr = MAP + (p - 3) * PS;
      c.sock.write(get(vaddr, 2));
      expect(decodePsHeader('v42', await c.read(32)).nrPages).toBe(2);
      expect((await c.read(2 * PS)).equals(expected(vaddr, 2))).toBe(true);
      expect(server.stats()).toMatchObject({ recoveredPages: 1, stuckConnections: 0, rejectedConnections: 0, v42Connections: 1, legacyConnections: 0 });
      c.sock.destroy();
    } finally {
      await server.close();
    }
  });

  it('no good copy anywhere: the answers before it go out, that GET is never answered (the session stays open), and serving resumes once a good copy exists', async () => {
    const m = await fresh('dmg-all');
    const stored = m.storedPageList().filter((x) => x >= 3 && x < 43);
    const p = stored[10]!;
    const vaddr = MAP + (p - 3) * PS;
    // The page on disk is damaged behind the file tier's back (its own CRC now fails, so a
    // batch read of the stack fails as a whole) and no cache holds it.
    const bottom = stack.tiers[stack.tiers.length - 1]!;
    await stack.tiers[0]!.remove(m.namespace, [p]);
    const file = findPagesFile(join(dir, 'file-tier'), m.namespace);
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.alloc(PS, 0xcd), 0, PS, p * PS);
    closeSync(fd);
    await expect(bottom.get(m.namespace, [p])).rejects.toMatchObject({ code: 'TS_ERR_CHECKSUM' });

    const server = await serveCriuPages(catalog, { port: 0, snapshotId: 'dmg-all', headerLayout: 'v42', badPageRetryMs: 20 });
    try {
      const c = await Client.open(server.port);
      const other = await Client.open(server.port);
      // A: before the bad page; B: starts 2 pages before it; C: after it.
      c.sock.write(Buffer.concat([get(MAP, 4), get(vaddr - 2 * PS, 5), get(vaddr + PS, 2)]));
      expect(decodePsHeader('v42', await c.read(32)).nrPages).toBe(4);
      expect((await c.read(4 * PS)).equals(expected(MAP, 4))).toBe(true);
      expect(decodePsHeader('v42', await c.read(32)).nrPages).toBe(5);
      expect((await c.read(2 * PS)).equals(expected(vaddr - 2 * PS, 2))).toBe(true);
      // The server keeps trying; the client gets nothing more and is not cut off.
      for (let i = 0; i < 500 && server.stats().unservableReads < 3; i++) await new Promise((r) => setTimeout(r, 10));
      // Its good neighbours, read again page by page because the batch failed as a whole, are not
      // counted as recovered (no copy of theirs was bad).
      expect(server.stats()).toMatchObject({ stuckConnections: 1, rejectedConnections: 0, lastErrorCode: 'TS_ERR_CHECKSUM', recoveredPages: 0 });
      expect(server.stats().unservableReads).toBeGreaterThanOrEqual(3);
      expect(c.closed).toBe(false);
      // Other connections are served meanwhile.
      other.sock.write(get(MAP + 30 * PS, 3));
      expect(decodePsHeader('v42', await other.read(32)).nrPages).toBe(3);
      expect((await other.read(3 * PS)).equals(expected(MAP + 30 * PS, 3))).toBe(true);

      // A good copy appears (repaired, or a tier came back): the held answer and the rest go out.
      await bottom.put(m.namespace, [p], expected(vaddr, 1));
      expect((await c.read(3 * PS)).equals(expected(vaddr, 3))).toBe(true);
      expect(decodePsHeader('v42', await c.read(32)).nrPages).toBe(2);
      expect((await c.read(2 * PS)).equals(expected(vaddr + PS, 2))).toBe(true);
      c.sock.write(encodePsHeader('v42', { cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0, dstId: 0n }));
      expect((await c.read(4)).readInt32LE(0)).toBe(0);
      expect(server.stats().stuckConnections).toBe(0);
      other.sock.destroy();
    } finally {
      await server.close();
    }
  });
});

/** The data file of segment 0 of a namespace in a FileTier directory. */
function findPagesFile(tierDir: string, ns: string): string {
  for (const d of readdirSync(tierDir)) {
    if (decodeURIComponent(d) === ns) return join(tierDir, d, '0.pages');
  }
  throw new Error(`no directory for ${ns} in ${tierDir}`);
}

describe('on a native stack [CxlTier(memfd), FileTier]: GETs are read by native threads', () => {
  let nstack: TierStack;
  let ncatalog: SnapshotCatalog;
  beforeAll(async () => {
    const { CxlTier } = await import('@tierstack/cxl');
    const { createTierStack, FileTier } = await import('@tierstack/core');
    nstack = createTierStack({ tiers: [await CxlTier.open({ backing: { kind: 'memfd', size: 8 << 20 } }), await FileTier.open({ dir: join(dir, 'native-file-tier') })] });
    ncatalog = new SnapshotCatalog(nstack);
    await importCriu(ncatalog, 'native', join(dir, 'img'));
  });
  afterAll(async () => {
    await nstack.close();
  });

  it('every page of every mapping arrives right, with no page through JavaScript; a bad CXL copy is repaired from the file tier', async () => {
    const m = await ncatalog.get('native');
    const victim = m.storedPageList().find((x) => x > 20)!;
    // Every stored page reaches the CXL cache first (a first pass), then the victim's cached copy goes bad.
    const server = await serveCriuPages(ncatalog, { port: 0, snapshotId: 'native', headerLayout: 'v42' });
    try {
      const c = await Client.open(server.port);
      const readAll = async (): Promise<void> => {
        for (const e of CRIU_ENTRIES) {
          c.sock.write(encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: e.nrPages, vaddr: e.vaddr, dstId: (BigInt(pid) << 8n) | 1n }));
          expect(decodePsHeader('v42', await c.read(32)).nrPages).toBe(e.nrPages);
          const got = await c.read(e.nrPages * PS);
          expect(createHash('sha256').update(got).digest('hex')).toBe(createHash('sha256').update(expected(e.vaddr, e.nrPages)).digest('hex'));
        }
      };
      await readAll();
      await nstack.tiers[0]!.put(m.namespace, [victim], Buffer.alloc(PS, 0x5a));
      await readAll();
      const st = server.stats();
      expect(st).toMatchObject({ nativeReads: true, jsPathPages: 0, recoveredPages: 1, stuckConnections: 0 });
      // The repaired copy is back in the cache: a third pass recovers nothing more.
      await readAll();
      expect(server.stats().recoveredPages).toBe(1);
      c.sock.destroy();
    } finally {
      await server.close();
    }
  });
});
