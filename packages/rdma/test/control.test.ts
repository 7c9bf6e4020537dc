/**
 * The memd control port under bad input: each malformed, oversized, truncated or
 * unauthenticated connection is closed, and a correct client is served afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Socket } from 'node:net';
import { get as httpGet } from 'node:http';
import { DonorClient, encodeFrame, MemdServer, PROTOCOL_VERSION, decodeFrame, FrameReader, parseSize } from '../src/index.js';
import { spawnMemd, stopAll, type MemdProcess } from './helpers.js';

const TOKEN = 'test-token-0123';
let memd: MemdProcess;

beforeAll(async () => {
  memd = await spawnMemd({ token: TOKEN, capacity: '16M', slabSize: '1M', metricsPort: 0 });
});
afterAll(stopAll);

/** Sends raw bytes; resolves with everything received once the donor closes the socket. */
function sendRaw(bytes: Buffer, closeAfterMs = 10_000): Promise<{ closed: boolean; received: Buffer }> {
  return new Promise((resolve) => {
    const s: Socket = connect(memd.port, memd.host);
    const got: Buffer[] = [];
    const t = setTimeout(() => {
      s.destroy();
      resolve({ closed: false, received: Buffer.concat(got) });
    }, closeAfterMs);
    s.on('connect', () => s.write(bytes));
    s.on('data', (c) => got.push(c));
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(t);
      resolve({ closed: true, received: Buffer.concat(got) });
    });
  });
}

async function correctClientWorks(): Promise<void> {
  const c = await DonorClient.connect({ host: memd.host, port: memd.port }, { token: TOKEN });
  const g = await c.allocSlab('check');
  expect(BigInt(g.size)).toBe(1n << 20n);
  const st = await c.stats();
  expect(st.slabs).toBeGreaterThanOrEqual(1);
  await c.freeSlab(BigInt(g.slabId));
  c.close();
}

const helloFrame = (token: string): Buffer => encodeFrame({ requestId: 1, hello: { version: PROTOCOL_VERSION, token } });

describe('memd control port', () => {
  it('serves a correct client', correctClientWorks);

  it('closes a connection that sends garbage bytes', async () => {
    const r = await sendRaw(Buffer.from([0, 0, 0, 12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
    expect(r.closed).toBe(true);
    await correctClientWorks();
  });

  it('closes a connection that sends a truncated protobuf', async () => {
    const full = helloFrame(TOKEN).subarray(4);
    const cut = full.subarray(0, full.length - 5);
    const framed = Buffer.concat([Buffer.from([0, 0, 0, cut.length]), cut]);
    const r = await sendRaw(framed);
    expect(r.closed).toBe(true);
    expect(r.received.length).toBe(0);
    await correctClientWorks();
  });

  it('rejects a wrong token with TS_ERR_PERMISSION and closes', async () => {
    const r = await sendRaw(helloFrame('wrong'));
    expect(r.closed).toBe(true);
    const frames = new FrameReader().push(r.received);
    expect(frames[0]?.error?.code).toBe('TS_ERR_PERMISSION');
    await expect(DonorClient.connect({ host: memd.host, port: memd.port }, { token: 'nope' })).rejects.toMatchObject({ code: 'TS_ERR_PERMISSION' });
    await correctClientWorks();
  });

  it('closes a connection that announces a huge frame, without waiting for it', async () => {
    const r = await sendRaw(Buffer.from([0xff, 0xff, 0xff, 0xf0, 1, 2, 3]));
    expect(r.closed).toBe(true);
    await correctClientWorks();
  });

  it('closes a connection that asks for slabs before hello', async () => {
    const r = await sendRaw(encodeFrame({ requestId: 1, allocSlab: { tag: 'x' } }));
    expect(r.closed).toBe(true);
    expect(r.received.length).toBe(0);
    await correctClientWorks();
  });

  it('frees a client slabs when its connection closes, and refuses allocation past capacity', async () => {
    const c = await DonorClient.connect({ host: memd.host, port: memd.port }, { token: TOKEN });
    const grants = [];
    for (let i = 0; i < 16; i++) grants.push(await c.allocSlab(`s${i}`));
    await expect(c.allocSlab('one-too-many')).rejects.toMatchObject({ code: 'TS_ERR_NO_SPACE' });
    c.close();
    const c2 = await DonorClient.connect({ host: memd.host, port: memd.port }, { token: TOKEN });
    for (let i = 0; i < 50 && (await c2.stats()).slabs > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect((await c2.stats()).slabs).toBe(0);
    c2.close();
  });

  it('exports prom-client metrics, counting rejected connections', async () => {
    const port = memd.metricsPort!;
    expect(port).toBeGreaterThan(0);
    const text = await new Promise<string>((resolve, reject) =>
      httpGet({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve(body));
      }).on('error', reject),
    );
    expect(text).toMatch(/memd_rejected_connections_total\{reason="bad-token"\} [1-9]/);
    expect(text).toMatch(/memd_slabs /);
  });
});

describe('memd configuration', () => {
  it('refuses a non-loopback bind without a token', () => {
    expect(() => new MemdServer({ host: '0.0.0.0', capacityBytes: 1 << 20, slabBytes: 1 << 20 })).toThrow(expect.objectContaining({ code: 'TS_ERR_PERMISSION' }));
    expect(() => new MemdServer({ dataHost: '0.0.0.0', capacityBytes: 1 << 20, slabBytes: 1 << 20 })).toThrow(expect.objectContaining({ code: 'TS_ERR_PERMISSION' }));
    expect(() => new MemdServer({ host: '0.0.0.0', capacityBytes: 1 << 20, slabBytes: 1 << 20, token: 't' })).not.toThrow();
  });
  it('parses sizes and rejects nonsense', () => {
    expect(parseSize('64M')).toBe(64 << 20);
    expect(parseSize('1GiB')).toBe(1 << 30);
    expect(parseSize('4096')).toBe(4096);
    expect(() => parseSize('lots')).toThrow(expect.objectContaining({ code: 'TS_ERR_BAD_ARGUMENT' }));
  });
  it('decodes frames and rejects empty or unknown ones with TS_ERR_PROTOCOL', () => {
    expect(() => decodeFrame(Buffer.alloc(0))).toThrow(expect.objectContaining({ code: 'TS_ERR_PROTOCOL' }));
    expect(() => new FrameReader().push(Buffer.from([0, 0, 0, 0]))).toThrow(expect.objectContaining({ code: 'TS_ERR_PROTOCOL' }));
    const f = decodeFrame(encodeFrame({ requestId: 7, freeSlab: { slabId: '18446744073709551615' } }).subarray(4));
    expect(f.freeSlab?.slabId).toBe('18446744073709551615');
  });
});
