/**
 * RedisTier against a private 3-node Redis Cluster: the conformance suite through a shared
 * Cluster instance (which the tiers must not close), hash-tag spread, multi-key commands per
 * chunk, removeNamespace over every master, and the ublk-sector scheme (keys without tags).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Cluster } from 'ioredis';
import calculateSlot from 'cluster-key-slot';
import { runPageStoreConformance, makePages, pageMatches } from '@tierstack/core/testing';
import { RedisTier } from '../src/index.js';
import { RedisCluster } from '../src/testing/index.js';

let cluster: RedisCluster;
let shared: Cluster;

beforeAll(async () => {
  cluster = await RedisCluster.start(3);
  shared = new Cluster(cluster.nodes, { enableOfflineQueue: false });
  await new Promise<void>((resolve, reject) => {
    shared.once('ready', () => resolve());
    shared.once('error', reject);
  });
}, 120_000);

afterAll(async () => {
  shared?.disconnect();
  await cluster?.stop();
});

const ns = (label: string): string => `${label}-${randomBytes(4).toString('hex')}`;

runPageStoreConformance('RedisTier (cluster, shared Cluster instance)', () => new RedisTier({ connection: shared }));

describe('RedisTier on a cluster', () => {
  it('did not close the shared Cluster instance', async () => {
    expect(shared.status).toBe('ready');
    expect(await shared.set(ns('alive'), '1')).toBe('OK');
  });

  it('creates its own Cluster client from seed nodes, spreads a namespace over every master, one command per chunk', async () => {
    const n = ns('spread');
    const t = new RedisTier({ connection: { cluster: cluster.nodes } });
    expect(t.isCluster && t.ownsClient).toBe(true);
    const pages = Array.from({ length: 64 * 48 }, (_, i) => i);
    await t.ready();
    const before = t.stats().extra;
    await t.put(n, pages, makePages(n, pages, 4096));
    const r = await t.get(n, pages);
    const after = t.stats().extra;
    expect(r.hits).toBe(pages.length);
    for (let i = 0; i < pages.length; i += 61) expect(pageMatches(r.data.subarray(i * 4096, (i + 1) * 4096), n, i)).toBe(true);
    // 3072 pages = 3 windows of 1024 pages per op; 48 chunks of 64 pages = 48 multi-key commands per op.
    expect(after.roundTrips! - before.roundTrips!).toBe(6);
    expect(after.commands! - before.commands!).toBe(96);
    // Every master holds some of the namespace's keys.
    const counts = await Promise.all(
      shared.nodes('master').map(async (node) => {
        const [, keys] = await node.scan('0', 'MATCH', `tierstack:{${n}:*`, 'COUNT', 10000);
        return keys.length;
      }),
    );
    expect(counts.length).toBe(3);
    expect(counts.every((c) => c > 0)).toBe(true);
    // Keys of one chunk share a slot.
    expect(calculateSlot(`tierstack:{${n}:3}:192`)).toBe(calculateSlot(`tierstack:{${n}:3}:255`));
    await t.close();
    expect(t.redis.status).toBe('end');
  });

  it('removes a namespace from every master', async () => {
    const n = ns('rmns');
    const keep = ns('keep');
    const t = new RedisTier({ connection: shared });
    const pages = Array.from({ length: 2000 }, (_, i) => i * 3);
    await t.put(n, pages, makePages(n, pages, 4096));
    await t.put(keep, [0], makePages(keep, [0], 4096));
    expect(await t.removeNamespace(n)).toBe(pages.length);
    expect((await t.get(n, pages)).hits).toBe(0);
    expect((await t.get(keep, [0])).hits).toBe(1);
    await t.close();
  });

  it('serves the ublk-sector scheme, whose keys carry no hash tag, grouped by slot', async () => {
    const prefix = `sect-${randomBytes(3).toString('hex')}:`;
    const t = new RedisTier({ connection: shared, keyScheme: 'ublk-sector', keyPrefix: prefix });
    const pages = Array.from({ length: 300 }, (_, i) => i);
    await t.put('dev', pages, makePages('dev', pages, 4096));
    expect(pageMatches((await shared.getBuffer(`${prefix}${17 * 8}`))!, 'dev', 17)).toBe(true);
    const r = await t.get('dev', pages);
    expect(r.hits).toBe(300);
    for (const i of [0, 99, 299]) expect(pageMatches(r.data.subarray(i * 4096, (i + 1) * 4096), 'dev', i)).toBe(true);
    expect(await t.removeNamespace('dev')).toBe(300);
    await t.close();
  });
});

describe('RedisTier on a cluster losing a master', () => {
  // Last in this file: it kills and restarts one node of the shared cluster.
  it('fails with TS_ERR_UNAVAILABLE while a master is down and recovers once it is back', async () => {
    const n = ns('outage');
    const t = new RedisTier({ connection: { cluster: cluster.nodes }, timeoutMs: 2000 });
    const pages = Array.from({ length: 128 }, (_, i) => i * 64); // 128 chunks: some surely on the killed master
    await t.put(n, pages, makePages(n, pages, 4096));
    await cluster.servers[1]!.kill();
    let code: string | undefined;
    try {
      await t.get(n, pages);
    } catch (err) {
      code = (err as { code?: string }).code;
    }
    expect(code).toBe('TS_ERR_UNAVAILABLE');
    // Same port and node config: the node rejoins (empty: no persistence).
    await cluster.servers[1]!.restart();
    await cluster.waitOk();
    // The cluster client may need a moment to refresh its slot map: retry a bounded number of
    // times (each attempt is bounded by timeoutMs); the assertion is on the data.
    let r: Awaited<ReturnType<RedisTier['get']>> | undefined;
    for (let attempt = 0; attempt < 20 && r === undefined; attempt++) {
      try {
        await t.put(n, pages, makePages(n, pages, 4096, 2));
        r = await t.get(n, pages);
      } catch (err) {
        expect((err as { code?: string }).code).toBe('TS_ERR_UNAVAILABLE');
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
    expect(r?.hits).toBe(pages.length);
    const wrong = pages.filter((p, i) => !pageMatches(r!.data.subarray(i * 4096, (i + 1) * 4096), n, p, 2));
    expect(wrong).toEqual([]);
    await t.close();
  }, 60_000);
});
