/**
 * A CRIU lazy-pages page server backed by a snapshot in the stack.
 *
 * Protocol (little-endian TCP, no handshake): the lazy-pages daemon sends GET headers
 * {cmd = 7, nr_pages, vaddr, dst_id}, possibly several in flight; each is answered, in order,
 * by an ADD_F|PRESENT header {0x00040006, m <= n, vaddr, dst_id} and m pages (m clamped to the
 * end of the mapping holding vaddr). CLOSE (0x1023) / FORCE_CLOSE (0x1024) is answered with an
 * int32 0 and the connection closes. A server that lacks a page closes the connection.
 * Header layouts: CRIU >= 4.2 {cmd u32, pad u32, nr_pages u64, vaddr u64, dst_id u64} (32 bytes),
 * CRIU 3.x-4.1 {cmd u32, nr_pages u32, vaddr u64, dst_id u64} (24 bytes); there is no
 * negotiation, so the layout is configured, or detected from the first header ('auto': a GET
 * with a non-zero u32 at offset 4 is the legacy layout, where that word is nr_pages).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { TierStackError, ErrorCode, silentLogger, type Logger } from '@tierstack/core';
import type { SnapshotCatalog } from './catalog.js';
import type { SnapshotManifest, RegionInfo } from './manifest.js';
import { fetchSnapshotPages, badPageError } from './reader.js';

export const PS_IOV_ADD_F = 6;
export const PS_IOV_GET = 7;
export const PS_IOV_CLOSE = 0x1023;
export const PS_IOV_FORCE_CLOSE = 0x1024;
export const PE_PRESENT_FLAG = 4;
export const ADD_F_PRESENT = (PE_PRESENT_FLAG << 16) | PS_IOV_ADD_F; // 0x00040006
export const LEGACY_HEADER = 24;
export const V42_HEADER = 32;

export type CriuHeaderLayout = 'v42' | 'legacy' | 'auto';

export interface CriuPageServerOptions {
  snapshotId: string;
  /** TCP port (0: any free port; read it from `.port`). */
  port: number;
  /** Address to bind (default loopback: the protocol has no authentication). */
  host?: string;
  headerLayout?: CriuHeaderLayout;
  /** Serve only this pid's pages when the snapshot holds several (default: from each GET's dst_id). */
  dstId?: number;
  /** Largest nr_pages accepted in one GET (default 65536); more is a malformed header. */
  maxPagesPerGet?: number;
  logger?: Logger;
}

export interface CriuPageServerStats {
  connections: number;
  openConnections: number;
  gets: number;
  pagesServed: number;
  rejectedConnections: number;
  lastError: string | undefined;
}

export interface CriuPageServer {
  readonly port: number;
  readonly host: string;
  stats(): CriuPageServerStats;
  close(): Promise<void>;
}

interface Header {
  cmd: number;
  nrPages: number;
  vaddr: number;
  dstId: bigint;
}

/** Encodes a page-server header in the given layout (exported for tests and clients). */
export function encodePsHeader(layout: 'v42' | 'legacy', h: Header): Buffer {
  const b = Buffer.alloc(layout === 'v42' ? V42_HEADER : LEGACY_HEADER);
  b.writeUInt32LE(h.cmd >>> 0, 0);
  if (layout === 'v42') {
    b.writeBigUInt64LE(BigInt(h.nrPages), 8);
    b.writeBigUInt64LE(BigInt(h.vaddr), 16);
    b.writeBigUInt64LE(h.dstId, 24);
  } else {
    b.writeUInt32LE(h.nrPages >>> 0, 4);
    b.writeBigUInt64LE(BigInt(h.vaddr), 8);
    b.writeBigUInt64LE(h.dstId, 16);
  }
  return b;
}

export function decodePsHeader(layout: 'v42' | 'legacy', b: Buffer): Header {
  if (layout === 'v42') {
    return { cmd: b.readUInt32LE(0), nrPages: Number(b.readBigUInt64LE(8)), vaddr: Number(b.readBigUInt64LE(16)), dstId: b.readBigUInt64LE(24) };
  }
  return { cmd: b.readUInt32LE(0), nrPages: b.readUInt32LE(4), vaddr: Number(b.readBigUInt64LE(8)), dstId: b.readBigUInt64LE(16) };
}

class MalformedHeader extends Error {}

/** One lazy-pages client connection: parses headers, answers them strictly in order. */
class Connection {
  private buf: Buffer = Buffer.alloc(0);
  private layout: 'v42' | 'legacy' | undefined;
  private chain: Promise<void> = Promise.resolve();
  private queued = 0;
  /** Rejected or finished: nothing more is parsed or answered. */
  private done = false;
  /** A CLOSE arrived: later bytes are ignored, queued answers still go out. */
  private closing = false;

  constructor(
    private readonly sock: Socket,
    private readonly server: PageServer,
    configured: CriuHeaderLayout,
  ) {
    this.layout = configured === 'auto' ? undefined : configured;
    sock.on('data', (d) => this.onData(d));
    sock.on('error', (err) => this.server.log.debug({ err }, 'criu page server: connection error'));
  }

  private reject(why: string): void {
    if (this.done) return;
    this.done = true;
    this.server.noteRejected(why);
    this.sock.destroy();
  }

  private onData(d: Buffer): void {
    if (this.done || this.closing) return;
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    // GETs that arrived together are fetched from the stack with one batched call; their
    // answers still go out one by one, in order.
    const gets: Header[] = [];
    try {
      for (;;) {
        if (this.buf.length < 8) break;
        const cmd = this.buf.readUInt32LE(0);
        const code = cmd & 0xffff;
        if (code === PS_IOV_CLOSE || code === PS_IOV_FORCE_CLOSE) {
          // Both layouts: CLOSE carries no payload we need; answer once its shorter form arrived.
          if (this.buf.length < LEGACY_HEADER) break;
          this.buf = Buffer.alloc(0);
          this.closing = true;
          break;
        }
        if (code !== PS_IOV_GET) throw new MalformedHeader(`unexpected command 0x${cmd.toString(16)}`);
        this.layout ??= this.buf.readUInt32LE(4) !== 0 ? 'legacy' : 'v42';
        const size = this.layout === 'v42' ? V42_HEADER : LEGACY_HEADER;
        if (this.buf.length < size) break;
        const h = decodePsHeader(this.layout, this.buf.subarray(0, size));
        this.buf = this.buf.subarray(size);
        if (h.nrPages <= 0 || h.nrPages > this.server.maxPages) throw new MalformedHeader(`GET of ${h.nrPages} pages`);
        if (!Number.isSafeInteger(h.vaddr) || h.vaddr % this.server.pageSize !== 0) throw new MalformedHeader(`GET at unaligned vaddr ${h.vaddr}`);
        gets.push(h);
      }
    } catch (err) {
      // Requests parsed before the bad header are dropped too: the connection is over.
      this.reject(err instanceof MalformedHeader ? `malformed header: ${err.message}` : (err as Error).message);
      return;
    }
    if (gets.length > 0) this.serveGets(this.layout!, gets);
    if (this.closing) {
      this.enqueue(async () => {
        await this.write(Buffer.alloc(4)); // int32 0
        this.done = true;
        this.sock.end();
      });
    }
  }

  /** Resolves each GET to its pages (clamped), fetches all of them at once, answers in order. */
  private serveGets(layout: 'v42' | 'legacy', gets: Header[]): void {
    const m = this.server.manifest;
    const ps = m.pageSize;
    const plans = gets.map((h) => {
      const region = this.server.regionFor(h.vaddr, h.dstId);
      if (!region) return { h, error: `no mapping holds vaddr 0x${h.vaddr.toString(16)} (dst_id ${h.dstId})`, first: 0, n: 0 };
      const n = Math.min(h.nrPages, (region.base + region.size - h.vaddr) / ps);
      return { h, error: undefined, first: (region.fileOffset + (h.vaddr - region.base)) / ps, n };
    });
    const all: number[] = [];
    for (const p of plans) for (let i = 0; i < p.n; i++) all.push(p.first + i);
    const fetched = fetchSnapshotPages(this.server.catalog.stack, m, all);
    fetched.catch(() => undefined);
    let at = 0;
    for (const p of plans) {
      const start = at;
      at += p.n;
      this.enqueue(async () => {
        if (p.error) throw new Error(p.error);
        const r = await fetched;
        if (r.bad.length > 0) {
          const mine = r.bad.filter((b) => b.page >= p.first && b.page < p.first + p.n);
          if (mine.length > 0) throw badPageError(m, mine);
        }
        const header = encodePsHeader(layout, { cmd: ADD_F_PRESENT, nrPages: p.n, vaddr: p.h.vaddr, dstId: p.h.dstId });
        await this.write(Buffer.concat([header, r.data.subarray(start * ps, (start + p.n) * ps)]));
        this.server.counters.gets++;
        this.server.counters.pagesServed += p.n;
      });
    }
  }

  private enqueue(fn: () => Promise<void>): void {
    this.queued++;
    // Back-pressure: stop reading while many requests wait.
    if (this.queued > 64) this.sock.pause();
    this.chain = this.chain.then(async () => {
      if (this.sock.destroyed) return;
      try {
        await fn();
      } catch (err) {
        this.reject((err as Error).message);
      } finally {
        this.queued--;
        if (this.queued <= 16 && this.sock.isPaused() && !this.done && !this.closing) this.sock.resume();
      }
    });
  }

  private write(b: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.sock.destroyed) return reject(new Error('connection closed'));
      if (this.sock.write(b)) resolve();
      else {
        const onDrain = (): void => {
          this.sock.off('close', onClose);
          resolve();
        };
        const onClose = (): void => {
          this.sock.off('drain', onDrain);
          reject(new Error('connection closed'));
        };
        this.sock.once('drain', onDrain);
        this.sock.once('close', onClose);
      }
    });
  }
}

class PageServer implements CriuPageServer {
  readonly counters = { connections: 0, gets: 0, pagesServed: 0, rejectedConnections: 0 };
  lastError: string | undefined;
  readonly sockets = new Set<Socket>();
  readonly pids: Set<number>;

  constructor(
    readonly catalog: SnapshotCatalog,
    readonly manifest: SnapshotManifest,
    readonly net: Server,
    readonly host: string,
    readonly port: number,
    readonly maxPages: number,
    readonly dstPid: number | undefined,
    readonly log: Logger,
  ) {
    this.pids = new Set(manifest.regions.map((r) => r.pid));
  }

  get pageSize(): number {
    return this.manifest.pageSize;
  }

  /** CRIU encodes dst_id as pid << 8 | type (type 1 = a process pagemap); raw pids are accepted too. */
  regionFor(vaddr: number, dstId: bigint): RegionInfo | undefined {
    if (this.dstPid !== undefined) return this.manifest.regionAt(vaddr, this.dstPid);
    if (this.pids.size <= 1) return this.manifest.regionAt(vaddr);
    for (const pid of [Number(dstId >> 8n), Number(dstId)]) {
      if (this.pids.has(pid)) return this.manifest.regionAt(vaddr, pid);
    }
    return undefined;
  }

  noteRejected(why: string): void {
    this.counters.rejectedConnections++;
    this.lastError = why;
    this.log.warn({ snapshot: this.manifest.id, reason: why }, 'criu page server: closing a connection');
  }

  stats(): CriuPageServerStats {
    return { ...this.counters, openConnections: this.sockets.size, lastError: this.lastError };
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.net.close(() => resolve()));
  }
}

export async function serveCriuPages(catalog: SnapshotCatalog, opts: CriuPageServerOptions): Promise<CriuPageServer> {
  const manifest = await catalog.get(opts.snapshotId);
  const host = opts.host ?? '127.0.0.1';
  const layout = opts.headerLayout ?? 'auto';
  if (!['v42', 'legacy', 'auto'].includes(layout)) throw new TierStackError(ErrorCode.BadArgument, `unknown header layout ${String(layout)}`);
  const log = opts.logger ?? silentLogger;
  const net = createServer();
  await new Promise<void>((resolve, reject) => {
    net.once('error', (err) => reject(new TierStackError(ErrorCode.Io, `cannot listen on ${host}:${opts.port}: ${err.message}`, { cause: err })));
    net.listen(opts.port, host, () => resolve());
  });
  const addr = net.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  const server = new PageServer(catalog, manifest, net, host, port, opts.maxPagesPerGet ?? 65536, opts.dstId, log);
  net.on('connection', (sock) => {
    server.counters.connections++;
    server.sockets.add(sock);
    sock.on('close', () => server.sockets.delete(sock));
    sock.setNoDelay(true);
    new Connection(sock, server, layout);
  });
  net.on('error', (err) => log.error({ err }, 'criu page server error'));
  return server;
}
