/**
 * CRIU page-server connections through the keeper: the keeper is the TCP endpoint, the worker
 * serves a socket pair, and a worker killed -9 with GETs in flight is replaced without the
 * client noticing anything but a pause: the keeper replays the requests after the last
 * checkpoint to the next worker and drops the answer bytes the client already has. The client
 * speaks the legacy (24-byte) layout to a server left on `auto`, so a resumed connection must
 * also keep the layout decided before the kill.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { createTierStack, FileTier } from '@tierstack/core';
import { SnapshotCatalog, importCriu, encodePsHeader, decodePsHeader, ADD_F_PRESENT, PS_IOV_GET, PS_IOV_CLOSE } from '../src/index.js';
import { PS, tmp, cleanup, imageBytes, writeCriuImages } from './fixtures.js';
import { buildAll, startKeeper } from './keeper-helpers.js';

const PID = 4321;
const BASE = 0x7f0000000000;
const PAGES = 4096;
const pages = imageBytes(PAGES, 57);
let dir: string;

beforeAll(async () => {
  dir = tmp('faas-keeper-criu-');
  buildAll(dir);
  writeCriuImages(join(dir, 'img'), PID, 1, [{ vaddr: BASE, nrPages: PAGES }], 'legacy', pages);
  const stack = createTierStack({ tiers: [await FileTier.open({ dir: join(dir, 'data', 'pages') })] });
  await importCriu(new SnapshotCatalog(stack), 'ct', join(dir, 'img'));
  await stack.close();
}, 120_000);
afterAll(() => cleanup(dir));

class Reader {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  ended = false;
  constructor(sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    sock.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
  }
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  async end(): Promise<number> {
    while (!this.ended) await new Promise<void>((r) => (this.wake = r));
    return this.buf.length;
  }
}

describe('restore keeper (CRIU page server)', () => {
  it('a worker killed -9 twice with GETs in flight: every answer arrives whole, in order, byte-correct', async () => {
    const k = startKeeper({ criuPort: 0, statusPath: join(dir, 'criu.status'), memfds: [{ name: 'dram', bytes: 32 << 20 }], standby: true, dataDir: join(dir, 'data'), snapshotId: 'ct', mode: 'criu' });
    try {
      const first = await k.workerLine(0);
      expect(first.port).toBeGreaterThan(0);
      const sock = connect(first.port!, '127.0.0.1');
      await new Promise<void>((r, j) => sock.once('connect', () => r()).once('error', j));
      const rd = new Reader(sock);
      const dst = (BigInt(PID) << 8n) | 1n;
      const BATCHES = 40;
      const killAt = new Set([0, 10 + Math.floor(Math.random() * 25)]);
      let kills = 0;
      let gets = 0;
      let answered = 0;
      let rnd = 12345;
      const next = (n: number): number => ((rnd = (Math.imul(rnd, 1103515245) + 12345) >>> 0) % n);
      for (let b = 0; b < BATCHES; b++) {
        const batch = Array.from({ length: 12 }, () => {
          const n = 1 + next(48);
          return { first: next(PAGES - n), n };
        });
        sock.write(Buffer.concat(batch.map((g) => encodePsHeader('legacy', { cmd: PS_IOV_GET, nrPages: g.n, vaddr: BASE + g.first * PS, dstId: dst }))));
        gets += batch.length;
        if (killAt.has(b)) {
          // Answers of this batch are on their way (or not yet begun): kill the worker serving them.
          const line = await k.workerLine(kills);
          process.kill(line.workerPid, 'SIGKILL');
          kills++;
        }
        for (const g of batch) {
          const h = decodePsHeader('legacy', await rd.read(24));
          expect(h).toEqual({ cmd: ADD_F_PRESENT, nrPages: g.n, vaddr: BASE + g.first * PS, dstId: dst });
          const data = await rd.read(g.n * PS);
          expect(data.equals(pages.subarray(g.first * PS, (g.first + g.n) * PS))).toBe(true);
          answered++;
        }
      }
      sock.write(encodePsHeader('legacy', { cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0, dstId: 0n }));
      expect((await rd.read(4)).readInt32LE(0)).toBe(0);
      expect(await rd.end()).toBe(0); // closed by the server after the CLOSE answer, nothing extra
      expect(answered).toBe(gets);
      expect(kills).toBe(2);
      const s = await k.waitStatus((x) => x.criu !== undefined && x.criu.open === 0, 'the connection closed');
      expect(s.criu!.connections).toBe(1);
      expect(s.criu!.replays).toBe(2); // the connection went to a new worker after each kill
      expect(s.restarts).toBeGreaterThanOrEqual(2);
    } catch (err) {
      console.error(k.stderr().slice(-6000));
      throw err;
    } finally {
      await k.stop();
    }
  }, 30_000);
});
