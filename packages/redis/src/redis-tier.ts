/**
 * RedisTier: a PageStore whose pages live in Redis (standalone, Sentinel or Cluster), on ioredis.
 *
 * A batch is split into windows of at most `pipelinePages` pages; each window costs one round
 * trip: on a standalone server one pipeline of multi-key commands (MGET/MSET/DEL of up to
 * `chunkPages` keys each), on a Cluster one multi-key command per hash slot, all sent at once.
 * Pages are binary values with a small checksummed header (value-format.ts) named by the key
 * scheme (key-scheme.ts).
 *
 * While Redis is down a call waits at most `timeoutMs` for the connection and then fails with
 * TS_ERR_UNAVAILABLE; the client keeps reconnecting in the background, so the same tier works
 * again once Redis is back.
 */
import type { Cluster, Redis } from 'ioredis';
import calculateSlot from 'cluster-key-slot';
import { BasePageStore, DEFAULT_PAGE_SIZE, assertNamespace, badArgument, silentLogger, type Logger, type PutOptions } from '@tierstack/core';
import { resolveConnection, type RedisClient, type RedisConnection } from './connection.js';
import { DefaultKeyScheme, UblkSectorKeyScheme, type KeyScheme, type KeySchemeName } from './key-scheme.js';
import { VALUE_HEADER_BYTES, decodeRawInto, decodeValueInto, encodeValue } from './value-format.js';
import { mapRedisError, unavailable } from './redis-errors.js';

/** Time to live of pages per namespace: one value for all, a table, or a function (ms; undefined = none). */
export type NamespaceTtl = number | Record<string, number> | ((ns: string) => number | undefined);

export interface RedisTierOptions {
  /** A redis:// URL, ioredis options (also Sentinel), { cluster: nodes, options? }, or a Redis/Cluster instance. */
  connection: RedisConnection;
  name?: string;
  pageSize?: number;
  /** Prepended to every key (default "tierstack:" for the default scheme, "" for ublk-sector). */
  keyPrefix?: string;
  /** 'default' (checksummed values, hash-tagged keys) or 'ublk-sector' (the ublk+Redis swap prototype's raw values). */
  keyScheme?: KeySchemeName;
  /** Consecutive pages sharing a Cluster hash tag, and the most keys in one command (default 64). */
  chunkPages?: number;
  /** Most pages in one round trip; larger batches take several (default 1024). */
  pipelinePages?: number;
  /** Bound on waiting for the connection plus one round trip (ms, default 3000). */
  timeoutMs?: number;
  /** Longest pause between reconnect attempts of a client the tier creates (ms, default 500). */
  maxReconnectDelayMs?: number;
  /** Expire pages this long after they are written (ms), per namespace. */
  ttlMs?: NamespaceTtl;
  logger?: Logger;
}

type Command = [name: string, args: Array<string | Buffer | number>];

/** Keys of one multi-key command and the batch positions they stand for. */
interface Group {
  idx: number[];
  keys: string[];
}

export class RedisTier extends BasePageStore {
  readonly keyScheme: KeyScheme;
  readonly isCluster: boolean;
  /** True when the tier created its client (and closes it on close()). */
  readonly ownsClient: boolean;
  readonly timeoutMs: number;
  private readonly client: RedisClient;
  private readonly chunkPages: number;
  private readonly pipelinePages: number;
  private readonly pageShift: number;
  private readonly ttlOption: NamespaceTtl | undefined;
  private readonly ttlOverrides = new Map<string, number | undefined>();
  private readonly log: Logger;
  private readyWaiter: { promise: Promise<void>; resolve: () => void } | undefined;
  private readonly onReady = (): void => {
    if (this.everReady) {
      this.counters.reconnects++;
      this.log.info({ tier: this.name }, 'redis connection restored');
    }
    this.everReady = true;
    this.wakeWaiters();
  };
  private readonly onEnd = (): void => this.wakeWaiters();
  private readonly onError = (err: unknown): void => this.log.debug({ err }, 'redis connection error');
  private everReady = false;
  private readonly counters = { roundTrips: 0, commands: 0, reconnects: 0, badValues: 0, timeouts: 0 };

  constructor(options: RedisTierOptions) {
    super(options.name ?? 'redis', options.pageSize ?? DEFAULT_PAGE_SIZE);
    const schemeName = options.keyScheme ?? 'default';
    this.chunkPages = options.chunkPages ?? 64;
    this.pipelinePages = options.pipelinePages ?? 1024;
    this.timeoutMs = options.timeoutMs ?? 3000;
    if (!Number.isInteger(this.pipelinePages) || this.pipelinePages < 1) throw badArgument('pipelinePages must be a positive integer', { pipelinePages: this.pipelinePages });
    if (!(this.timeoutMs > 0)) throw badArgument('timeoutMs must be positive', { timeoutMs: this.timeoutMs });
    if (schemeName === 'default') this.keyScheme = new DefaultKeyScheme(options.keyPrefix ?? 'tierstack:', this.chunkPages);
    else if (schemeName === 'ublk-sector') {
      if (!Number.isInteger(this.chunkPages) || this.chunkPages < 1) throw badArgument('chunkPages must be a positive integer', { chunkPages: this.chunkPages });
      this.keyScheme = new UblkSectorKeyScheme(options.keyPrefix ?? '', this.pageSize);
    } else throw badArgument(`unknown keyScheme ${String(schemeName)} (default, ublk-sector)`);
    this.pageShift = Math.log2(this.pageSize);
    this.ttlOption = options.ttlMs;
    if (typeof this.ttlOption === 'number' && !(Number.isInteger(this.ttlOption) && this.ttlOption > 0)) {
      throw badArgument('ttlMs must be a positive integer (ms)', { ttlMs: this.ttlOption });
    }
    this.log = options.logger ?? silentLogger;
    const conn = resolveConnection(options.connection, { timeoutMs: this.timeoutMs, maxReconnectDelayMs: options.maxReconnectDelayMs ?? 500 });
    this.client = conn.client;
    this.isCluster = conn.isCluster;
    this.ownsClient = conn.owned;
    this.everReady = this.client.status === 'ready';
    this.client.on('ready', this.onReady);
    this.client.on('end', this.onEnd);
    // Without an 'error' listener ioredis prints every failed reconnect; only for our own client.
    if (this.ownsClient) this.client.on('error', this.onError);
  }

  /** The ioredis client (shared with the tier: do not close it while the tier is open). */
  get redis(): RedisClient {
    return this.client;
  }

  /** Waits until the client is connected (at most timeoutMs); TS_ERR_UNAVAILABLE otherwise. */
  async ready(): Promise<void> {
    this.assertOpen();
    try {
      await this.waitReady('connect', Date.now() + this.timeoutMs);
    } catch (err) {
      throw mapRedisError(err, 'connect');
    }
  }

  /** Sets (or clears, with undefined) the TTL of pages written to `ns` from now on. */
  setNamespaceTtl(ns: string, ttlMs: number | undefined): void {
    assertNamespace(ns);
    if (ttlMs !== undefined && !(Number.isInteger(ttlMs) && ttlMs > 0)) throw badArgument('ttlMs must be a positive integer', { ttlMs });
    this.ttlOverrides.set(ns, ttlMs);
  }

  ttlFor(ns: string): number | undefined {
    if (this.ttlOverrides.has(ns)) return this.ttlOverrides.get(ns);
    const t = this.ttlOption;
    const ttl = typeof t === 'function' ? t(ns) : typeof t === 'number' ? t : t?.[ns];
    if (ttl === undefined) return undefined;
    if (!(Number.isInteger(ttl) && ttl > 0)) throw badArgument(`ttlMs for namespace "${ns}" must be a positive integer`, { ttl });
    return ttl;
  }

  /**
   * Deletes every page of `ns` without blocking Redis: SCAN (on every master of a Cluster) and
   * UNLINK of what it finds. Returns the number of keys removed. In the ublk-sector scheme the
   * namespace is not part of the key, so this removes every sector key under the prefix.
   */
  removeNamespace(ns: string): Promise<number> {
    return this.track(async () => {
      assertNamespace(ns);
      await this.run('removeNamespace', async () => undefined);
      const pattern = this.keyScheme.scanPattern(ns);
      const nodes: Redis[] = this.isCluster ? (this.client as Cluster).nodes('master') : [this.client as Redis];
      let removed = 0;
      for (const node of nodes) {
        let cursor = '0';
        do {
          const [next, keys] = await this.run('removeNamespace', () => node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000));
          cursor = next;
          const mine = keys.filter((k) => this.keyScheme.owns(ns, k));
          if (mine.length > 0) removed += await this.unlink(mine);
        } while (cursor !== '0');
      }
      return removed;
    });
  }

  // ---- the PageStore operations ----

  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const ps = this.pageSize;
    const headered = this.keyScheme.headered;
    let hits = 0;
    await this.forWindows('get', pages.length, async (start, end) => {
      const groups = this.group(ns, pages, start, end);
      const replies = await this.exec(groups.map((g): Command => ['mget', g.keys]));
      groups.forEach((g, gi) => {
        const values = replies[gi] as Array<Buffer | null>;
        for (let j = 0; j < g.idx.length; j++) {
          const v = values[j];
          if (v === null || v === undefined) continue;
          const i = g.idx[j]!;
          try {
            if (headered) decodeValueInto(v, out, i * ps, ps, this.pageShift, { ns, page: pages[i]!, key: g.keys[j]! });
            else decodeRawInto(v, out, i * ps, ps, { ns, page: pages[i]!, key: g.keys[j]! });
          } catch (err) {
            this.counters.badValues++;
            throw err;
          }
          found[i] = 1;
          hits++;
        }
      });
    });
    return hits;
  }

  protected async doPut(ns: string, pages: number[], data: Buffer, _options: PutOptions): Promise<void> {
    const ps = this.pageSize;
    const ttl = this.ttlFor(ns);
    const vs = VALUE_HEADER_BYTES + ps;
    await this.forWindows('put', pages.length, async (start, end) => {
      // One allocation for the window's values instead of one per page.
      const arena = this.keyScheme.headered ? Buffer.allocUnsafe((end - start) * vs) : undefined;
      const value = arena
        ? (i: number): Buffer => encodeValue(data, i * ps, ps, this.pageShift, arena.subarray((i - start) * vs, (i - start + 1) * vs))
        : (i: number): Buffer => data.subarray(i * ps, (i + 1) * ps);
      const cmds: Command[] = [];
      for (const g of this.group(ns, pages, start, end)) {
        if (ttl === undefined) {
          const args: Array<string | Buffer> = new Array(g.keys.length * 2);
          g.keys.forEach((k, j) => {
            args[2 * j] = k;
            args[2 * j + 1] = value(g.idx[j]!);
          });
          cmds.push(['mset', args]);
        } else {
          // MSET cannot set a TTL: one SET ... PX per page, in the same round trip.
          g.keys.forEach((k, j) => cmds.push(['set', [k, value(g.idx[j]!), 'PX', ttl]]));
        }
      }
      await this.exec(cmds);
    });
  }

  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    await this.forWindows('remove', pages.length, async (start, end) => {
      await this.exec(this.group(ns, pages, start, end).map((g): Command => ['del', g.keys]));
    });
  }

  protected override async doClose(): Promise<void> {
    this.client.off('ready', this.onReady);
    this.client.off('end', this.onEnd);
    this.wakeWaiters();
    if (!this.ownsClient) return;
    try {
      if (this.client.status === 'ready') await withDeadline(this.client.quit(), this.timeoutMs, () => unavailable('close', 'QUIT timed out'));
    } catch {
      // The server is gone or slow: dropping the connection is all that is left to do.
    } finally {
      // Stop reconnecting, and return only once the client has really ended.
      const ended = new Promise<void>((resolve) => (this.client.status === 'end' ? resolve() : this.client.once('end', () => resolve())));
      this.client.disconnect();
      await withDeadline(ended, this.timeoutMs, () => unavailable('close', 'the connection did not end')).catch(() => {});
      this.client.off('error', this.onError);
    }
  }

  protected override extraStats(): Record<string, number> {
    return { ...this.counters };
  }

  // ---- batching ----

  /** Runs `body` on consecutive windows of at most pipelinePages batch positions, one after another. */
  private async forWindows(what: string, n: number, body: (start: number, end: number) => Promise<void>): Promise<void> {
    for (let start = 0; start < n; start += this.pipelinePages) {
      const end = Math.min(n, start + this.pipelinePages);
      await this.run(what, () => body(start, end));
    }
  }

  /**
   * Splits batch positions [start, end) into multi-key commands. Standalone: runs of up to
   * chunkPages keys in batch order. Cluster: keys grouped by hash slot (in the default scheme the
   * chunk number stands for the slot: a chunk is one hash tag), each group cut to chunkPages keys.
   */
  private group(ns: string, pages: number[], start: number, end: number): Group[] {
    const scheme = this.keyScheme;
    const max = this.chunkPages;
    const groups: Group[] = [];
    if (!this.isCluster) {
      for (let s = start; s < end; s += max) {
        const e = Math.min(end, s + max);
        const g: Group = { idx: new Array(e - s), keys: new Array(e - s) };
        for (let i = s; i < e; i++) {
          g.idx[i - s] = i;
          g.keys[i - s] = scheme.key(ns, pages[i]!);
        }
        groups.push(g);
      }
      return groups;
    }
    const bySlot = new Map<number, Group>();
    const byChunk = scheme.name === 'default';
    for (let i = start; i < end; i++) {
      const page = pages[i]!;
      const key = scheme.key(ns, page);
      const slot = byChunk ? Math.floor(page / max) : calculateSlot(key);
      let g = bySlot.get(slot);
      if (g === undefined || g.keys.length >= max) {
        g = { idx: [], keys: [] };
        bySlot.set(slot, g);
        groups.push(g);
      }
      g.idx.push(i);
      g.keys.push(key);
    }
    return groups;
  }

  /** Sends commands as one round trip and returns their replies in order (throws the first error). */
  private async exec(cmds: Command[]): Promise<unknown[]> {
    this.counters.roundTrips++;
    this.counters.commands += cmds.length;
    const client = this.client;
    // A Cluster routes each command to its slot's node; sent together they share the round trip.
    if (this.isCluster || cmds.length === 1) return Promise.all(cmds.map(([name, args]) => client.callBuffer(name, ...args)));
    const pipeline = client.pipeline();
    for (const [name, args] of cmds) pipeline.callBuffer(name, ...args);
    const results = await pipeline.exec();
    if (results === null) throw unavailable('pipeline', 'the pipeline was aborted');
    return results.map(([err, reply]) => {
      if (err) throw err;
      return reply;
    });
  }

  private async unlink(keys: string[]): Promise<number> {
    const cmds: Command[] = [];
    if (this.isCluster) {
      const bySlot = new Map<number, string[]>();
      for (const k of keys) {
        const slot = calculateSlot(k);
        const list = bySlot.get(slot);
        if (list) list.push(k);
        else bySlot.set(slot, [k]);
      }
      for (const list of bySlot.values()) cmds.push(['unlink', list]);
    } else {
      for (let s = 0; s < keys.length; s += 512) cmds.push(['unlink', keys.slice(s, s + 512)]);
    }
    const replies = await this.run('removeNamespace', () => this.exec(cmds));
    return replies.reduce<number>((n, r) => n + Number(r), 0);
  }

  // ---- connection state and deadlines ----

  /** Waits for the connection (bounded by the deadline), then runs `body` within what is left of it. */
  private async run<T>(what: string, body: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.timeoutMs;
    try {
      if (this.client.status !== 'ready') await this.waitReady(what, deadline);
      return await withDeadline(body(), deadline - Date.now(), () => {
        this.counters.timeouts++;
        return unavailable(what, `no reply within ${this.timeoutMs} ms`);
      });
    } catch (err) {
      throw mapRedisError(err, `redis ${what}`);
    }
  }

  private async waitReady(what: string, deadline: number): Promise<void> {
    for (;;) {
      const status = this.client.status;
      if (status === 'ready') return;
      if (status === 'end') throw unavailable(what, 'the connection was closed and will not reconnect');
      if (this.isClosed) throw unavailable(what, 'the tier is closing');
      if (status === 'wait') this.client.connect().catch(() => {}); // a lazyConnect client nobody connected yet
      const left = deadline - Date.now();
      if (left <= 0) throw unavailable(what, `not connected within ${this.timeoutMs} ms (status ${status})`);
      if (!this.readyWaiter) {
        let resolve!: () => void;
        const promise = new Promise<void>((r) => (resolve = r));
        this.readyWaiter = { promise, resolve };
      }
      await withDeadline(this.readyWaiter.promise, left, () => unavailable(what, `not connected within ${this.timeoutMs} ms (status ${this.client.status})`));
    }
  }

  private wakeWaiters(): void {
    const w = this.readyWaiter;
    this.readyWaiter = undefined;
    w?.resolve();
  }
}

/** `p`, or the error of `onTimeout` if it does not settle within `ms`. */
function withDeadline<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  if (ms <= 0) {
    p.catch(() => {});
    return Promise.reject(onTimeout());
  }
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), ms);
    timer.unref?.();
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}
