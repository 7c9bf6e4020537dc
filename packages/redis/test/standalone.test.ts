/**
 * RedisTier against a private standalone redis-server: the core conformance suite, connection
 * forms, value integrity, key schemes (including the ublk+Redis prototype's), TTL and
 * removeNamespace.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { runPageStoreConformance, makePages, pageMatches } from '@tierstack/core/testing';
import { RedisTier, VALUE_HEADER_BYTES, isClientInstance, isClusterInstance } from '../src/index.js';
import { RedisServer } from '../src/testing/index.js';

let server: RedisServer;
let plain: Redis;

beforeAll(async () => {
  server = await RedisServer.start();
  plain = new Redis(server.port, server.host);
});

afterAll(async () => {
  plain?.disconnect();
  await server?.stop();
});

const ns = (label: string): string => `${label}-${randomBytes(4).toString('hex')}`;

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

runPageStoreConformance('RedisTier (standalone, URL)', () => new RedisTier({ connection: server.url }));

describe('RedisTier standalone', () => {
  it('accepts a URL, ioredis options and a Redis instance; never closes a client it did not create', async () => {
    const n = ns('conn');
    const a = new RedisTier({ connection: server.url });
    const b = new RedisTier({ connection: { host: server.host, port: server.port } });
    const shared = new Redis(server.port, server.host);
    const c = new RedisTier({ connection: shared });
    expect([a.ownsClient, b.ownsClient, c.ownsClient]).toEqual([true, true, false]);
    expect(c.isCluster).toBe(false);
    await a.put(n, [1, 2], makePages(n, [1, 2], 4096));
    for (const t of [b, c]) {
      const r = await t.get(n, [1, 2]);
      expect(r.hits).toBe(2);
      expect(pageMatches(r.data.subarray(0, 4096), n, 1)).toBe(true);
    }
    await Promise.all([a.close(), b.close(), c.close()]);
    expect(a.redis.status).toBe('end');
    expect(shared.status).toBe('ready');
    expect(await shared.ping()).toBe('PONG');
    shared.disconnect();
  });

  it('connects through a Sentinel (ioredis sentinel options)', async () => {
    const sentinel = await RedisServer.start({ sentinelOf: { name: 'pages', host: server.host, port: server.port } });
    try {
      const n = ns('sentinel');
      const t = new RedisTier({ connection: { sentinels: [{ host: sentinel.host, port: sentinel.port }], name: 'pages' } });
      await t.put(n, [3], makePages(n, [3], 4096));
      const direct = new RedisTier({ connection: server.url });
      expect(pageMatches((await direct.get(n, [3])).data, n, 3)).toBe(true);
      await Promise.all([t.close(), direct.close()]);
    } finally {
      await sentinel.stop();
    }
  });

  it('recognises clients by shape, not instanceof', () => {
    const fn = (): void => {};
    const likeRedis = { status: 'ready', pipeline: fn, on: fn, sendCommand: fn, isCluster: false };
    const likeCluster = { status: 'ready', pipeline: fn, on: fn, sendCommand: fn, nodes: fn, refreshSlotsCache: fn };
    expect(isClientInstance(likeRedis) && !isClusterInstance(likeRedis)).toBe(true);
    expect(isClientInstance(likeCluster) && isClusterInstance(likeCluster)).toBe(true);
    expect(isClientInstance({ host: 'x', port: 1 })).toBe(false);
    expect(isClientInstance(plain) && !isClusterInstance(plain)).toBe(true);
  });

  it('rejects ioredis keyPrefix and bad options with typed errors', () => {
    const code = (f: () => unknown): string | undefined => {
      try {
        f();
      } catch (err) {
        return (err as { code?: string }).code;
      }
      return undefined;
    };
    expect(code(() => new RedisTier({ connection: { port: server.port, keyPrefix: 'x:' } }))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(code(() => new RedisTier({ connection: 'http://nope' }))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(code(() => new RedisTier({ connection: server.url, keyPrefix: 'a{b' }))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(code(() => new RedisTier({ connection: server.url, keyScheme: 'nope' as 'default' }))).toBe('TS_ERR_BAD_ARGUMENT');
  });

  it('stores binary values with a checksummed header under hash-tagged keys', async () => {
    const n = ns('fmt:{x}%');
    const t = new RedisTier({ connection: server.url, keyPrefix: 'ts:' });
    await t.put(n, [0, 63, 64, 130], makePages(n, [0, 63, 64, 130], 4096));
    const enc = n.replace('%', '%25').replace(':', '%3A').replace('{', '%7B').replace('}', '%7D');
    const keys = (await plain.keys(`ts:*`)).filter((k) => k.includes(enc)).sort();
    expect(keys).toEqual([`ts:{${enc}:0}:0`, `ts:{${enc}:0}:63`, `ts:{${enc}:1}:64`, `ts:{${enc}:2}:130`].sort());
    const v = (await plain.getBuffer(`ts:{${enc}:2}:130`))!;
    expect(v.length).toBe(VALUE_HEADER_BYTES + 4096);
    expect(v.subarray(0, 4).toString('latin1')).toBe('TS\u0001\u000c');
    expect(pageMatches(v.subarray(VALUE_HEADER_BYTES), n, 130)).toBe(true);
    await t.close();
  });

  it('moves a large batch in a bounded number of round trips', async () => {
    const n = ns('rt');
    const t = new RedisTier({ connection: server.url, pipelinePages: 1024 });
    const pages = Array.from({ length: 2048 }, (_, i) => i * 7);
    await t.ready();
    const before = t.stats().extra.roundTrips!;
    await t.put(n, pages, makePages(n, pages, 4096));
    const r = await t.get(n, pages);
    expect(r.hits).toBe(2048);
    expect(t.stats().extra.roundTrips! - before).toBe(4); // 2 windows of 1024 pages, put + get
    for (let i = 0; i < pages.length; i += 97) expect(pageMatches(r.data.subarray(i * 4096, (i + 1) * 4096), n, pages[i]!)).toBe(true);
    await t.close();
  });

  it('reports a value overwritten with garbage as corrupt or failing its checksum, never as data', async () => {
    const n = ns('garbage');
    const t = new RedisTier({ connection: server.url });
    await t.put(n, [1, 2, 3, 4], makePages(n, [1, 2, 3, 4], 4096));
    const keyOf = (p: number): string => `tierstack:{${n}:0}:${p}`;
    // 1: plain garbage of the wrong length; 2: right length, header destroyed;
    // 3: header intact, one page byte flipped.
    await plain.set(keyOf(1), 'garbage');
    await plain.set(keyOf(2), randomBytes(VALUE_HEADER_BYTES + 4096));
    const v3 = (await plain.getBuffer(keyOf(3)))!;
    v3[VALUE_HEADER_BYTES + 100]! ^= 0xff;
    await plain.set(keyOf(3), v3);
    expect(await codeOf(t.get(n, [1]))).toBe('TS_ERR_CORRUPT');
    expect(await codeOf(t.get(n, [2]))).toBe('TS_ERR_CORRUPT');
    expect(await codeOf(t.get(n, [3]))).toBe('TS_ERR_CHECKSUM');
    // The whole batch fails when one value in it is bad.
    expect(await codeOf(t.get(n, [4, 3]))).toBe('TS_ERR_CHECKSUM');
    // A value of another page size is a page-size error.
    const small = new RedisTier({ connection: server.url, pageSize: 512 });
    await small.put(n, [5], makePages(n, [5], 512));
    expect(await codeOf(t.get(n, [5]))).toBe('TS_ERR_PAGE_SIZE');
    // Overwriting a bad value repairs it.
    await t.put(n, [1, 3], makePages(n, [1, 3], 4096, 1));
    const r = await t.get(n, [1, 3]);
    expect(pageMatches(r.data.subarray(0, 4096), n, 1, 1) && pageMatches(r.data.subarray(4096), n, 3, 1)).toBe(true);
    expect(t.stats().extra.badValues).toBeGreaterThanOrEqual(5);
    await Promise.all([t.close(), small.close()]);
  });

  it('reads and writes the ublk+Redis swap prototype scheme: raw 4 KiB values keyed by starting sector', async () => {
    const prefix = `ublk-${randomBytes(3).toString('hex')}:`;
    const t = new RedisTier({ connection: server.url, keyScheme: 'ublk-sector', keyPrefix: prefix });
    const n = 'swap0';
    // Pages written by the prototype (a plain client): page p at key String(p * 8), raw bytes.
    const prototypePages = [0, 1, 5, 1000];
    for (const p of prototypePages) await plain.set(`${prefix}${p * 8}`, makePages(n, [p], 4096));
    const r = await t.get(n, [...prototypePages, 2]);
    expect([...r.found]).toEqual([1, 1, 1, 1, 0]);
    prototypePages.forEach((p, i) => expect(pageMatches(r.data.subarray(i * 4096, (i + 1) * 4096), n, p)).toBe(true));
    // And what the tier writes the prototype can read: raw values, no header.
    await t.put(n, [7], makePages(n, [7], 4096, 3));
    const raw = (await plain.getBuffer(`${prefix}56`))!;
    expect(raw.length).toBe(4096);
    expect(pageMatches(raw, n, 7, 3)).toBe(true);
    // Large page numbers keep exact sector numbers.
    await t.put(n, [2 ** 51 + 3], makePages(n, [2 ** 51 + 3], 4096));
    expect(await plain.exists(`${prefix}${(2n ** 51n + 3n) * 8n}`)).toBe(1);
    expect((await t.get(n, [2 ** 51 + 3])).hits).toBe(1);
    // A value of the wrong length is corrupt.
    await plain.set(`${prefix}${9 * 8}`, Buffer.alloc(4095));
    expect(await codeOf(t.get(n, [9]))).toBe('TS_ERR_CORRUPT');
    expect(await t.removeNamespace(n)).toBe(prototypePages.length + 3);
    expect(await plain.keys(`${prefix}*`)).toEqual([]);
    await t.close();
  });

  it('expires pages of namespaces with a TTL', async () => {
    const a = ns('ttl');
    const b = ns('keep');
    const t = new RedisTier({ connection: server.url, ttlMs: { [a]: 60_000 } });
    await t.put(a, [0], makePages(a, [0], 4096));
    await t.put(b, [0], makePages(b, [0], 4096));
    const ttlA = await plain.pttl(`tierstack:{${a}:0}:0`);
    expect(ttlA).toBeGreaterThan(0);
    expect(ttlA).toBeLessThanOrEqual(60_000);
    expect(await plain.pttl(`tierstack:{${b}:0}:0`)).toBe(-1);
    t.setNamespaceTtl(b, 1);
    await t.put(b, [1], makePages(b, [1], 4096));
    // Redis expires the key lazily on access after 1 ms: wait until it is gone (asserts data, not time).
    let left = 1;
    for (let i = 0; i < 200 && left > 0; i++) left = (await t.get(b, [1])).hits;
    expect(left).toBe(0);
    expect((await t.get(b, [0])).hits).toBe(1);
    await t.close();
  });

  it('removes a namespace with SCAN, leaving other namespaces (even prefixes of it) alone', async () => {
    const base = ns('rmns');
    const other = `${base}:1`; // shares a textual prefix with base
    const t = new RedisTier({ connection: server.url });
    const pages = Array.from({ length: 3000 }, (_, i) => i);
    await t.put(base, pages, makePages(base, pages, 4096));
    await t.put(other, [0, 1], makePages(other, [0, 1], 4096));
    expect(await t.removeNamespace(base)).toBe(3000);
    expect((await t.get(base, [0, 1, 2999])).hits).toBe(0);
    expect((await t.get(other, [0, 1])).hits).toBe(2);
    expect(await t.removeNamespace(base)).toBe(0);
    // Glob metacharacters in a namespace match only themselves.
    const glob = `${base}*[ab]?\\`;
    const lookalike = `${base}XaZ\\`;
    await t.put(glob, [0], makePages(glob, [0], 4096));
    await t.put(lookalike, [0], makePages(lookalike, [0], 4096));
    expect(await t.removeNamespace(glob)).toBe(1);
    expect((await t.get(lookalike, [0])).hits).toBe(1);
    await t.close();
  });
});
