import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { TierStack } from '@tierstack/core';
import { SnapshotCatalog, importCriu, serveCriuPages, encodePsHeader, decodePsHeader, ADD_F_PRESENT, PS_IOV_GET, PS_IOV_CLOSE, type CriuPageServer } from '../src/index.js';
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
        const dst = BigInt(pid) << 8n | 1n;
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
        expect(server.stats()).toMatchObject({ gets: GETS.length, pagesServed: GETS.reduce((s, g) => s + expected(g.vaddr, g.n).length / PS, 0) });
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

it('several pids: the GET dst_id (pid << 8 | 1) selects the pid whose pages are served', async () => {
  const d = join(dir, 'multi');
  const a = imageBytes(4, 40);
  const b = imageBytes(4, 41);
  writeCriuImages(d, 100, 1, [{ vaddr: 0x10000, nrPages: 4 }], 'legacy', a);
  writeCriuImages(d, 200, 2, [{ vaddr: 0x10000, nrPages: 4 }], 'legacy', b);
  await importCriu(catalog, 'multi', d);
  const server = await serveCriuPages(catalog, { port: 0, snapshotId: 'multi', headerLayout: 'legacy' });
  try {
    const c = await Client.open(server.port);
    for (const [pid, img] of [
      [200, b],
      [100, a],
    ] as const) {
      c.sock.write(encodePsHeader('legacy', { cmd: PS_IOV_GET, nrPages: 2, vaddr: 0x11000, dstId: (BigInt(pid) << 8n) | 1n }));
      expect(decodePsHeader('legacy', await c.read(24)).nrPages).toBe(2);
      expect((await c.read(2 * PS)).equals(img.subarray(PS, 3 * PS))).toBe(true);
    }
    c.sock.destroy();
  } finally {
    await server.close();
  }
});
