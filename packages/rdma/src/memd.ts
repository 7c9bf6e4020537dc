/**
 * memd: the memory-donor daemon. It donates `capacityBytes` of RAM as slabs registered with
 * libfabric for one-sided remote reads and writes, and serves a small control protocol
 * (protocol.ts) over TCP: hello (version + token), slab allocate/free, stats, slab activity
 * reports, and evict notices it sends when the host runs short of memory (headroom).
 *
 * Safety: binds 127.0.0.1 unless told otherwise and refuses a non-loopback bind without a
 * token. A connection that sends a malformed, oversized or unauthenticated frame is closed with
 * a logged reason; everyone else is served on. A client's slabs are freed when its control
 * connection closes (a slab is a lease: nobody else could find its pages anyway).
 *
 * Quota: `clientQuotaSlabs` / `clientQuotaBytes` cap what one client (one control connection —
 * the unit that holds slabs) may hold, so one client cannot take every slab; an allocation past
 * it is refused with TS_ERR_NO_SPACE and a message that names the quota, and logged.
 */
import { createServer, isIP, type Server, type Socket, type AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { Counter, Gauge, Registry } from 'prom-client';
import { TierStackError, ErrorCode, silentLogger, serveMetrics, type Logger, type MetricsServer } from '@tierstack/core';
import { rdmaAddon, type NativeDonor } from './native.js';
import { FrameReader, encodeFrame, bodyKind, PROTOCOL_VERSION, MAX_FRAME_BYTES, type Frame } from './protocol.js';

export const DEFAULT_SLAB_BYTES = 1 << 30;
export const PROVIDERS = ['tcp', 'tcp;ofi_rxm', 'verbs;ofi_rxm', 'efa', 'verbs', 'net'] as const;

export interface MemdOptions {
  /** Control-plane bind address (default 127.0.0.1). */
  host?: string;
  /** Control port (0 = ephemeral). */
  port?: number;
  /** Address the libfabric passive endpoint listens on (default: host). */
  dataHost?: string;
  dataPort?: number;
  /** libfabric provider (default "tcp"). */
  provider?: string;
  /** RAM donated in total. */
  capacityBytes: number;
  /** Bytes per slab (default 1 GiB). */
  slabBytes?: number;
  /** Most slabs one client (control connection) may hold (default: no limit but capacity). */
  clientQuotaSlabs?: number;
  /** The same in bytes (whole slabs: floor(bytes / slabBytes)); with both, the smaller wins. */
  clientQuotaBytes?: number;
  /** Shared secret clients must present; required for a non-loopback bind. */
  token?: string;
  /** Keep at least this much host memory available; reclaim slabs below it (0 = off). */
  headroomBytes?: number;
  /** How often free memory is checked (ms). */
  headroomPollMs?: number;
  /** How long clients get to re-home an evicted slab (ms). */
  evictGraceMs?: number;
  /** Read "available bytes" from this file instead of /proc/meminfo (tests, simulations). */
  freeMemoryFile?: string;
  /** Donor id sent to clients (default: random). */
  donorId?: string;
  /** Serve prom-client metrics on this port (127.0.0.1 unless metricsHost). */
  metricsPort?: number;
  metricsHost?: string;
  logger?: Logger;
  /** Metrics go here (default: a registry of the daemon's own). */
  registry?: Registry;
}

interface ClientConn {
  id: bigint;
  socket: Socket;
  reader: FrameReader;
  authed: boolean;
  name: string;
  slabs: Set<bigint>;
  /** Allocations refused for the quota (the first is logged at warn, the rest at debug). */
  quotaRefusals: number;
}

interface SlabRecord {
  id: bigint;
  owner: ClientConn;
  size: number;
  lastActive: number;
  /** Set once an evict notice went out: the slab is freed at this time. */
  evictAt?: number;
}

const mib = (bytes: number): string => (bytes % 2 ** 30 === 0 ? `${bytes / 2 ** 30} GiB` : `${+(bytes / 2 ** 20).toFixed(1)} MiB`);

const isLoopback = (host: string): boolean =>
  host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));

export function readMemAvailable(): number {
  const text = readFileSync('/proc/meminfo', 'utf8');
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(text);
  return m ? Number(m[1]) * 1024 : 0;
}

export interface MemdAddress {
  host: string;
  port: number;
  dataNode: string;
  dataService: string;
  metricsPort?: number;
}

export class MemdServer {
  private readonly opts: Required<Omit<MemdOptions, 'token' | 'freeMemoryFile' | 'metricsPort' | 'registry' | 'logger' | 'metricsHost' | 'clientQuotaSlabs' | 'clientQuotaBytes'>> &
    Pick<MemdOptions, 'token' | 'freeMemoryFile' | 'metricsPort' | 'metricsHost' | 'clientQuotaSlabs' | 'clientQuotaBytes'>;
  /** Slabs one client may hold (Infinity: no quota). */
  private readonly quotaSlabs: number;
  private readonly log: Logger;
  private donor: NativeDonor | undefined;
  private server: Server | undefined;
  private metricsServer: MetricsServer | undefined;
  private readonly conns = new Set<ClientConn>();
  private readonly slabs = new Map<bigint, SlabRecord>();
  private nextSlabId = 1n;
  /** Slab allocation failures already logged at warn (by message): one warning per cause. */
  private readonly allocFailures = new Set<string>();
  private nextClientId = 1n;
  private headroomTimer: NodeJS.Timeout | undefined;
  private lastAvailable = -1;
  private reclaimedSinceSample = 0;
  readonly registry: Registry;
  private readonly metrics;

  constructor(options: MemdOptions) {
    const slabBytes = options.slabBytes ?? DEFAULT_SLAB_BYTES;
    if (!Number.isSafeInteger(slabBytes) || slabBytes <= 0 || slabBytes % 4096 !== 0) {
      throw new TierStackError(ErrorCode.BadArgument, `slab size ${slabBytes} must be a positive multiple of 4096`);
    }
    if (!Number.isSafeInteger(options.capacityBytes) || options.capacityBytes < slabBytes) {
      throw new TierStackError(ErrorCode.BadArgument, `capacity ${options.capacityBytes} must hold at least one slab of ${slabBytes} bytes`);
    }
    for (const [what, v] of [['client slab quota', options.clientQuotaSlabs], ['client byte quota', options.clientQuotaBytes]] as const) {
      if (v !== undefined && (!Number.isSafeInteger(v) || v <= 0)) throw new TierStackError(ErrorCode.BadArgument, `${what} must be a positive integer, not ${String(v)}`);
    }
    if (options.clientQuotaBytes !== undefined && options.clientQuotaBytes < slabBytes) {
      throw new TierStackError(ErrorCode.BadArgument, `a client byte quota of ${options.clientQuotaBytes} holds no slab of ${slabBytes} bytes`);
    }
    this.quotaSlabs = Math.min(
      options.clientQuotaSlabs ?? Infinity,
      options.clientQuotaBytes !== undefined ? Math.floor(options.clientQuotaBytes / slabBytes) : Infinity,
    );
    const host = options.host ?? '127.0.0.1';
    for (const h of [host, options.dataHost ?? host]) {
      if (!isLoopback(h) && !options.token) {
        throw new TierStackError(ErrorCode.Permission, `refusing to bind ${h} (not loopback) without a token: pass --token`);
      }
    }
    this.opts = {
      host,
      port: options.port ?? 0,
      dataHost: options.dataHost ?? host,
      dataPort: options.dataPort ?? 0,
      provider: options.provider ?? 'tcp',
      capacityBytes: options.capacityBytes,
      slabBytes,
      clientQuotaSlabs: options.clientQuotaSlabs,
      clientQuotaBytes: options.clientQuotaBytes,
      token: options.token,
      headroomBytes: options.headroomBytes ?? 0,
      headroomPollMs: options.headroomPollMs ?? 1000,
      evictGraceMs: options.evictGraceMs ?? 2000,
      freeMemoryFile: options.freeMemoryFile,
      donorId: options.donorId ?? `memd-${randomBytes(4).toString('hex')}`,
      metricsPort: options.metricsPort,
      metricsHost: options.metricsHost,
    };
    this.log = options.logger ?? silentLogger;
    this.registry = options.registry ?? new Registry();
    const r = [this.registry];
    this.metrics = {
      slabs: new Gauge({ name: 'memd_slabs', help: 'slabs handed out', registers: r }),
      freeBytes: new Gauge({ name: 'memd_free_bytes', help: 'donatable bytes not handed out', registers: r }),
      clients: new Gauge({ name: 'memd_clients', help: 'connected control clients', registers: r }),
      rejected: new Counter({ name: 'memd_rejected_connections_total', help: 'connections closed for bad input', labelNames: ['reason'], registers: r }),
      evicted: new Counter({ name: 'memd_evicted_slabs_total', help: 'slabs reclaimed for headroom', registers: r }),
      allocated: new Counter({ name: 'memd_allocated_slabs_total', help: 'slabs allocated', registers: r }),
      quotaRefused: new Counter({ name: 'memd_quota_refusals_total', help: 'slab allocations refused by the per-client quota', registers: r }),
    };
  }

  /** Opens the libfabric endpoint and starts listening; resolves with the bound addresses. */
  async start(): Promise<MemdAddress> {
    const addon = rdmaAddon();
    // Provider defaults (e.g. ofi_rxm over verbs: universe and queue sizes) before libfabric
    // starts; the log says which ones the environment overrode.
    const settings = addon.providerDefaults(this.opts.provider);
    this.donor = new addon.Donor(this.opts.provider, this.opts.dataHost, String(this.opts.dataPort));
    const server = createServer((socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    if (this.opts.metricsPort !== undefined) {
      // Gauges read from the donor (slabs, free memory) are refreshed per scrape.
      this.metricsServer = await serveMetrics(this.registry, {
        port: this.opts.metricsPort,
        ...(this.opts.metricsHost !== undefined ? { host: this.opts.metricsHost } : {}),
        beforeScrape: () => this.refreshGauges(),
      });
    }
    if (this.opts.headroomBytes > 0) {
      this.headroomTimer = setInterval(() => this.checkHeadroom(), this.opts.headroomPollMs);
    }
    const addr = this.address();
    this.log.info(
      {
        ...addr,
        provider: this.opts.provider,
        capacityBytes: this.opts.capacityBytes,
        slabBytes: this.opts.slabBytes,
        donorId: this.opts.donorId,
        libfabricEnv: Object.fromEntries(settings.map((s) => [s.name, s.ours ? s.value : `${s.value} (from the environment)`])),
        ...(Number.isFinite(this.quotaSlabs) ? { clientQuotaSlabs: this.quotaSlabs } : {}),
      },
      'memd listening',
    );
    return addr;
  }

  address(): MemdAddress {
    const a = this.server!.address() as AddressInfo;
    const d = this.donor!.address();
    const m = this.metricsServer;
    return { host: a.address, port: a.port, dataNode: d.node, dataService: d.service, ...(m ? { metricsPort: m.port } : {}) };
  }

  get slabCount(): number {
    return this.slabs.size;
  }

  async close(): Promise<void> {
    if (this.headroomTimer) clearInterval(this.headroomTimer);
    for (const c of this.conns) c.socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    await this.metricsServer?.close();
    for (const s of [...this.slabs.values()]) this.freeSlab(s);
    this.donor?.close();
    this.donor = undefined;
  }

  // ------------------------------------------------------------------ connections

  private accept(socket: Socket): void {
    const conn: ClientConn = {
      id: this.nextClientId++,
      socket,
      reader: new FrameReader(MAX_FRAME_BYTES),
      authed: false,
      name: `${socket.remoteAddress}:${socket.remotePort}`,
      slabs: new Set(),
      quotaRefusals: 0,
    };
    this.conns.add(conn);
    socket.setNoDelay(true);
    // A peer that never completes its hello is dropped.
    socket.setTimeout(10_000, () => {
      if (!conn.authed) this.reject(conn, 'hello-timeout', 'no hello within 10 s');
    });
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = conn.reader.push(chunk);
      } catch (err) {
        this.reject(conn, /exceeds the limit/.test((err as Error).message) ? 'oversized' : 'malformed', (err as Error).message);
        return;
      }
      for (const f of frames) {
        if (socket.destroyed) return;
        this.handle(conn, f);
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => this.drop(conn));
  }

  private reject(conn: ClientConn, reason: string, detail: string): void {
    this.metrics.rejected.inc({ reason });
    this.log.warn({ client: conn.name, reason, detail }, 'closing control connection');
    conn.socket.destroy();
  }

  private drop(conn: ClientConn): void {
    if (!this.conns.delete(conn)) return;
    const held = [...conn.slabs];
    for (const id of held) {
      const s = this.slabs.get(id);
      if (s) this.freeSlab(s);
    }
    if (conn.authed) this.log.info({ client: conn.name, slabsFreed: held.length }, 'client disconnected');
  }

  private send(conn: ClientConn, frame: Frame): void {
    if (!conn.socket.destroyed) conn.socket.write(encodeFrame(frame));
  }

  private handle(conn: ClientConn, f: Frame): void {
    const kind = bodyKind(f);
    const requestId = f.requestId ?? 0;
    if (!conn.authed) {
      if (kind !== 'hello') return this.reject(conn, 'unauthenticated', `${kind} before hello`);
      const h = f.hello!;
      if (h.version !== PROTOCOL_VERSION) {
        this.send(conn, { requestId, error: { code: ErrorCode.Unsupported, message: `protocol version ${h.version} (donor speaks ${PROTOCOL_VERSION})` } });
        return this.reject(conn, 'version', `protocol version ${h.version}`);
      }
      if (!this.tokenMatches(h.token ?? '')) {
        this.send(conn, { requestId, error: { code: ErrorCode.Permission, message: 'bad token' } });
        return this.reject(conn, 'bad-token', 'wrong token');
      }
      conn.authed = true;
      conn.socket.setTimeout(0);
      if (h.clientName) conn.name = `${h.clientName}@${conn.name}`;
      const d = this.donor!.address();
      this.send(conn, {
        requestId,
        helloOk: {
          version: PROTOCOL_VERSION,
          donorId: this.opts.donorId,
          provider: this.opts.provider,
          dataNode: d.node,
          dataService: d.service,
          slabSize: String(this.opts.slabBytes),
          mrMode: this.donor!.mrMode(),
          clientId: String(conn.id),
          dataAddr: this.donor!.rawAddress(),
        },
      });
      this.log.info({ client: conn.name }, 'client connected');
      return;
    }
    switch (kind) {
      case 'allocSlab':
        return this.alloc(conn, requestId, f.allocSlab?.tag ?? '');
      case 'freeSlab': {
        const id = BigInt(f.freeSlab!.slabId);
        const s = this.slabs.get(id);
        if (s && s.owner === conn) this.freeSlab(s);
        this.send(conn, { requestId, freed: { slabId: String(id) } });
        return;
      }
      case 'slabActivity': {
        const now = Date.now();
        for (const id of f.slabActivity!.slabIds) {
          const s = this.slabs.get(BigInt(id));
          if (s && s.owner === conn) s.lastActive = now;
        }
        return;
      }
      case 'statsRequest':
        this.send(conn, { requestId, stats: this.statsBody() });
        return;
      default:
        return this.reject(conn, 'unexpected', `unexpected ${kind} from a client`);
    }
  }

  private tokenMatches(given: string): boolean {
    const want = this.opts.token ?? '';
    const a = Buffer.from(given);
    const b = Buffer.from(want);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  // ------------------------------------------------------------------ slabs

  private usedBytes(): number {
    return this.slabs.size * this.opts.slabBytes;
  }

  private available(): number {
    if (this.opts.freeMemoryFile) {
      try {
        return Number(readFileSync(this.opts.freeMemoryFile, 'utf8').trim()) || 0;
      } catch {
        return readMemAvailable();
      }
    }
    return readMemAvailable();
  }

  /** Donatable bytes: what capacity allows, capped by the host's memory above the headroom. */
  private freeBytes(): number {
    const byCapacity = this.opts.capacityBytes - this.usedBytes();
    if (this.opts.headroomBytes <= 0) return Math.max(0, byCapacity);
    const byHost = this.available() - this.opts.headroomBytes;
    return Math.max(0, Math.min(byCapacity, byHost));
  }

  /** The quota as the operator set it, for messages: "4 slabs (4 MiB) per client (--client-quota-slabs 4)". */
  private quotaText(): string {
    const n = this.quotaSlabs;
    const flags = [
      ...(this.opts.clientQuotaSlabs !== undefined ? [`--client-quota-slabs ${this.opts.clientQuotaSlabs}`] : []),
      ...(this.opts.clientQuotaBytes !== undefined ? [`--client-quota ${mib(this.opts.clientQuotaBytes)}`] : []),
    ];
    return `${n} slab${n === 1 ? '' : 's'} (${mib(n * this.opts.slabBytes)}) per client (${flags.join(', ')})`;
  }

  private alloc(conn: ClientConn, requestId: number, tag: string): void {
    if (conn.slabs.size >= this.quotaSlabs) {
      this.metrics.quotaRefused.inc();
      const message = `client quota reached: this client holds ${conn.slabs.size} slabs, the quota is ${this.quotaText()}; free a slab or ask the donor's operator for a larger quota`;
      const fields = { client: conn.name, slabs: conn.slabs.size, quotaSlabs: this.quotaSlabs, tag };
      if (conn.quotaRefusals++ === 0) this.log.warn(fields, 'memd: slab refused: client quota reached');
      else this.log.debug(fields, 'memd: slab refused: client quota reached');
      this.send(conn, { requestId, error: { code: ErrorCode.NoSpace, message } });
      return;
    }
    if (this.freeBytes() < this.opts.slabBytes) {
      this.send(conn, { requestId, error: { code: ErrorCode.NoSpace, message: 'no donatable memory left' } });
      return;
    }
    const id = this.nextSlabId++;
    let grant: { addr: bigint; rkey: bigint };
    try {
      // A random key: knowing a slab id (or guessing the next one) does not give access to it.
      grant = this.donor!.allocSlab(id, this.opts.slabBytes, randomBytes(8).readBigUInt64LE(0));
    } catch (err) {
      // The cause goes to the client and into the log (a registration refused for a lock limit
      // is an operator's problem, not a full donor): warn once per cause, then debug.
      const message = (err as Error).message;
      const fields = { client: conn.name, tag, err: message, errno: (err as { errno?: number }).errno };
      if (!this.allocFailures.has(message)) {
        this.allocFailures.add(message);
        this.log.warn(fields, 'memd: slab allocation failed');
      } else this.log.debug(fields, 'memd: slab allocation failed');
      this.send(conn, { requestId, error: { code: ErrorCode.NoSpace, message } });
      return;
    }
    this.slabs.set(id, { id, owner: conn, size: this.opts.slabBytes, lastActive: Date.now() });
    conn.slabs.add(id);
    this.metrics.allocated.inc();
    this.log.debug({ client: conn.name, slab: String(id), tag }, 'slab allocated');
    this.send(conn, {
      requestId,
      slabGrant: { slabId: String(id), remoteAddr: String(grant.addr), rkey: String(grant.rkey), size: String(this.opts.slabBytes) },
    });
  }

  private freeSlab(s: SlabRecord): void {
    this.donor?.freeSlab(s.id);
    this.slabs.delete(s.id);
    s.owner.slabs.delete(s.id);
  }

  private statsBody(): NonNullable<Frame['stats']> {
    return {
      capacityBytes: String(this.opts.capacityBytes),
      freeBytes: String(this.freeBytes()),
      slabs: this.slabs.size,
      clients: [...this.conns].filter((c) => c.authed).length,
      load: loadavg()[0] ?? 0,
      hostAvailableBytes: String(this.available()),
    };
  }

  private refreshGauges(): void {
    this.metrics.slabs.set(this.slabs.size);
    this.metrics.freeBytes.set(this.freeBytes());
    this.metrics.clients.set([...this.conns].filter((c) => c.authed).length);
  }

  // ------------------------------------------------------------------ headroom

  /**
   * Below the headroom, picks the least recently active slabs that cover the shortfall, tells
   * their clients (EvictNotice), and frees them after the grace period. A simulated free-memory
   * file does not rise when slabs are freed, so reclaimed bytes count as recovered until the
   * file's value changes.
   */
  private checkHeadroom(): void {
    const now = Date.now();
    for (const s of [...this.slabs.values()]) {
      if (s.evictAt !== undefined && s.evictAt <= now) {
        this.log.info({ slab: String(s.id), client: s.owner.name }, 'slab reclaimed for headroom');
        this.reclaimedSinceSample += s.size;
        this.metrics.evicted.inc();
        this.freeSlab(s);
      }
    }
    const available = this.available();
    if (available !== this.lastAvailable) {
      this.lastAvailable = available;
      this.reclaimedSinceSample = 0;
    }
    const pending = [...this.slabs.values()].filter((s) => s.evictAt !== undefined).reduce((n, s) => n + s.size, 0);
    const recovered = this.opts.freeMemoryFile ? this.reclaimedSinceSample : 0;
    let shortfall = this.opts.headroomBytes - available - recovered - pending;
    if (shortfall <= 0) return;
    const victims = [...this.slabs.values()].filter((s) => s.evictAt === undefined).sort((a, b) => a.lastActive - b.lastActive);
    const byOwner = new Map<ClientConn, bigint[]>();
    for (const s of victims) {
      if (shortfall <= 0) break;
      s.evictAt = now + this.opts.evictGraceMs;
      shortfall -= s.size;
      const list = byOwner.get(s.owner) ?? [];
      list.push(s.id);
      byOwner.set(s.owner, list);
    }
    for (const [owner, ids] of byOwner) {
      this.log.warn({ client: owner.name, slabs: ids.map(String), available, headroom: this.opts.headroomBytes }, 'host below headroom: evicting slabs');
      this.send(owner, { requestId: 0, evictNotice: { slabIds: ids.map(String), graceMs: this.opts.evictGraceMs, reason: 'headroom' } });
    }
  }
}

/** Starts a memd daemon; resolves once it listens. */
export async function startMemd(options: MemdOptions): Promise<MemdServer> {
  const server = new MemdServer(options);
  await server.start();
  return server;
}
