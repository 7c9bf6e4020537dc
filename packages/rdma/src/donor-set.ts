/**
 * The donors of one RdmaPoolTier: their control connections (DonorClient), the native data
 * connection of each donor's current session, free memory as last reported, loss and
 * reconnection. A donor that comes back gets a new native connection index: replicas of the
 * old session (its memory is gone) are never reused.
 */
import { ErrorCode, TierStackError, hasCode, type Logger } from '@tierstack/core';
import { DonorClient, type DonorAddress } from './donor-client.js';
import type { NativePool } from './native.js';
import type { EvictNotice } from './protocol.js';

export interface DonorState {
  /** Position in the donor list (stable; what replicaReport() and logs use). */
  idx: number;
  /** The native connection of the current session with this donor (-1: none yet). */
  conn: number;
  address: DonorAddress;
  client?: DonorClient;
  freeBytes: number;
  up: boolean;
}

export interface DonorSetOptions {
  token?: string | undefined;
  clientName: string;
  timeoutMs: number;
  /** How often a lost or unreachable donor is tried again (0 = never). */
  reconnectMs: number;
  log: Logger;
  /** The tier is closed: no reconnection. */
  isClosed: () => boolean;
  /** Something to repair: a donor lost, or a donor back. */
  onChange: () => void;
  onEvict: (d: DonorState, n: EvictNotice) => void;
}

/** Native connection indexes available to a pool (native Connections::kMaxConns). */
const MAX_CONNS = 256;

export const where = (d: DonorState): string => `${d.address.host}:${d.address.port}`;

export class DonorSet {
  readonly all: DonorState[] = [];
  private readonly byConn = new Map<number, DonorState>();
  private nextConn = 0;
  private native!: NativePool;
  private slabBytes = 0;
  private provider = '';

  constructor(private readonly o: DonorSetOptions) {}

  private connectClient(a: DonorAddress): Promise<DonorClient> {
    return DonorClient.connect(a, { ...(this.o.token ? { token: this.o.token } : {}), clientName: this.o.clientName, timeoutMs: this.o.timeoutMs });
  }

  /** Says hello to every donor; the first answer decides slab size and provider. */
  async hello(addrs: DonorAddress[]): Promise<{ clients: PromiseSettledResult<DonorClient>[]; first: DonorClient }> {
    const clients = await Promise.allSettled(addrs.map((a) => this.connectClient(a)));
    const first = clients.find((c): c is PromiseFulfilledResult<DonorClient> => c.status === 'fulfilled');
    if (!first) {
      const errs = clients.map((c) => (c as PromiseRejectedResult).reason as Error);
      const perm = errs.find((e) => hasCode(e, ErrorCode.Permission));
      throw perm ?? new TierStackError(ErrorCode.Unavailable, `no donor answered: ${errs.map((e) => e.message).join('; ')}`);
    }
    return { clients, first: first.value };
  }

  /** Connects the data path of every donor that answered; the others are tried again later. */
  async attachAll(native: NativePool, slabBytes: number, provider: string, addrs: DonorAddress[], clients: PromiseSettledResult<DonorClient>[]): Promise<void> {
    this.native = native;
    this.slabBytes = slabBytes;
    this.provider = provider;
    this.nextConn = addrs.length;
    addrs.forEach((address, idx) => this.all.push({ idx, conn: -1, address, freeBytes: 0, up: false }));
    await Promise.all(
      this.all.map(async (d) => {
        const r = clients[d.idx]!;
        if (r.status === 'rejected') {
          this.o.log.warn({ donor: where(d), err: (r.reason as Error).message }, 'donor unavailable at open');
          this.scheduleReconnect(d);
          return;
        }
        await this.attach(d, r.value, d.idx);
      }),
    );
  }

  /** The donor of a native connection, if that connection is its current session. */
  current(conn: number): DonorState | undefined {
    const d = this.byConn.get(conn);
    return d?.up && d.conn === conn ? d : undefined;
  }

  /** The donor a native connection belongs (or belonged) to. */
  ofConn(conn: number): DonorState | undefined {
    return this.byConn.get(conn);
  }

  /** Donors up (control and data), except the excluded positions. */
  up(exclude: Set<number> = new Set()): DonorState[] {
    return this.all.filter((d) => d.up && !exclude.has(d.idx) && this.native.connUp(d.conn));
  }

  /** Donor positions holding the given replicas. */
  positionsOf(reps: Array<{ conn: number }>): Set<number> {
    const out = new Set<number>();
    for (const r of reps) {
      const d = this.byConn.get(r.conn);
      if (d) out.add(d.idx);
    }
    return out;
  }

  /** Gives a donor's slab back if the session that holds it is still the current one. */
  async free(conn: number, slabId: bigint): Promise<void> {
    await this.current(conn)
      ?.client!.freeSlab(slabId)
      .catch(() => {});
  }

  async refreshStats(): Promise<void> {
    await Promise.all(
      this.all
        .filter((d) => d.up)
        .map(async (d) => {
          try {
            d.freeBytes = Number((await d.client!.stats()).freeBytes);
          } catch {
            /* a lost donor is handled by its close event */
          }
        }),
    );
  }

  /** Tells each donor which of its slabs were used since the last report. */
  reportActivity(): void {
    const perConn = new Map<number, string[]>();
    for (const [conn, slabId] of this.native.takeTouched()) {
      const list = perConn.get(conn) ?? [];
      list.push(String(slabId));
      perConn.set(conn, list);
    }
    for (const [conn, ids] of perConn) this.current(conn)?.client?.send({ slabActivity: { slabIds: ids } });
  }

  closeAll(): void {
    for (const d of this.all) d.client?.close();
  }

  /** Connects the data path of a donor whose control connection said hello; false if unusable. */
  private async attach(d: DonorState, c: DonorClient, conn: number): Promise<boolean> {
    if (Number(c.hello.slabSize) !== this.slabBytes || c.hello.provider !== this.provider) {
      this.o.log.warn({ donor: where(d) }, 'donor has a different slab size or provider: not used');
      c.close();
      return false;
    }
    try {
      await this.native.connect(conn, c.hello.dataNode, c.hello.dataService, Buffer.from(c.hello.dataAddr ?? []));
    } catch (err) {
      this.o.log.warn({ donor: where(d), err: (err as Error).message }, 'libfabric connect failed');
      c.close();
      this.scheduleReconnect(d);
      return false;
    }
    d.client = c;
    d.conn = conn;
    d.up = true;
    this.byConn.set(conn, d);
    d.freeBytes = Number((await c.stats().catch(() => ({ freeBytes: '0' }))).freeBytes);
    c.on('close', () => this.lost(d, 'control connection closed'));
    c.on('evict', (n: EvictNotice) => this.o.onEvict(d, n));
    return true;
  }

  private lost(d: DonorState, why: string): void {
    if (!d.up) return;
    d.up = false;
    this.o.log.warn({ donor: where(d), why }, 'donor lost');
    if (!this.o.isClosed()) {
      this.native.killConn(d.conn);
      this.o.onChange();
      this.scheduleReconnect(d);
    }
  }

  private scheduleReconnect(d: DonorState): void {
    if (this.o.reconnectMs <= 0 || this.o.isClosed()) return;
    const t = setTimeout(() => void this.reconnect(d), this.o.reconnectMs);
    t.unref();
  }

  private async reconnect(d: DonorState): Promise<void> {
    if (this.o.isClosed() || d.up || !this.native) return;
    if (this.nextConn >= MAX_CONNS) {
      this.o.log.error({ donor: d.idx }, 'no native connection slots left: not reconnecting');
      return;
    }
    let c: DonorClient;
    try {
      c = await this.connectClient(d.address);
    } catch {
      this.scheduleReconnect(d);
      return;
    }
    if (this.o.isClosed()) {
      c.close();
      return;
    }
    if (await this.attach(d, c, this.nextConn++)) {
      this.o.log.info({ donor: where(d), conn: d.conn }, 'donor connected again');
      this.o.onChange();
    }
  }
}
