/**
 * A CRIU lazy-pages page server backed by a snapshot in the stack.
 *
 * Protocol (little-endian TCP, no handshake): the lazy-pages daemon sends GET headers
 * {cmd = 7, nr_pages, vaddr, dst_id}, possibly several in flight; each is answered, in order,
 * by an ADD_F|PRESENT header {0x00040006, m <= n, vaddr, dst_id} and m pages (m clamped to the
 * end of the mapping holding vaddr). CLOSE (0x1023) / FORCE_CLOSE (0x1024) is answered with an
 * int32 0 and the connection closes. A server that lacks a page closes the connection — and
 * CRIU then lets the kernel zero-fill what it has not fetched. This one reads a bad copy again
 * from the other tiers, and when no tier has a good copy it leaves that GET unanswered with the
 * connection open (the process blocks rather than runs on zeros), retrying the page with
 * backoff until a good copy appears (see the README).
 * Header layouts: CRIU >= 4.2 {cmd u32, pad u32, nr_pages u64, vaddr u64, dst_id u64} (32 bytes),
 * CRIU 3.x-4.1 {cmd u32, nr_pages u32, vaddr u64, dst_id u64} (24 bytes); there is no
 * negotiation, so the layout is configured, or detected from the first header ('auto': a GET
 * with a non-zero u32 at offset 4 is the legacy layout, where that word is nr_pages).
 *
 * Memory is bounded whatever the clients do: replies are produced in chunks (256 pages by
 * default) and a chunk is fetched only when the connection's budget (`maxConnectionBytes`) and
 * the server's (`maxTotalBytes`) have room for it; bytes count until the kernel took them. A
 * connection stops being read while `maxQueuedGets` requests wait for their answers (TCP then
 * pushes back on the client), so pipelining any number of huge GETs costs the server at most
 * its budgets. Connections beyond `maxConnections` are closed on arrival; a connection with
 * nothing to answer that stays silent (or a client that stops reading its replies) for
 * `idleTimeoutMs` is closed.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { TierStackError, ErrorCode, silentLogger, pageChecksum, SnapshotReader, coreAddonError, type Logger, type PageStore } from '@tierstack/core';
import type { SnapshotCatalog } from './catalog.js';
import type { SnapshotManifest, RegionInfo } from './manifest.js';
import { fetchSnapshotPages } from './reader.js';

export const PS_IOV_ADD_F = 6;
export const PS_IOV_GET = 7;
export const PS_IOV_CLOSE = 0x1023;
export const PS_IOV_FORCE_CLOSE = 0x1024;
export const PE_PRESENT_FLAG = 4;
export const ADD_F_PRESENT = (PE_PRESENT_FLAG << 16) | PS_IOV_ADD_F; // 0x00040006
export const LEGACY_HEADER = 24;
export const V42_HEADER = 32;

export type CriuHeaderLayout = 'v42' | 'legacy' | 'auto';

/** Defaults of the resource limits (also what `tierstack restore --criu-port` uses). */
export const CRIU_SERVER_DEFAULTS = {
  maxConnections: 16,
  maxConnectionBytes: 4 * 1024 * 1024,
  maxTotalBytes: 64 * 1024 * 1024,
  maxQueuedGets: 64,
  idleTimeoutMs: 60_000,
  chunkPages: 256,
  badPageRetryMs: 1000,
} as const;

const MAX_RETRY_MS = 30_000;
/** Largest part of a batch one job thread reads (see readNative). */
const READ_PART_PAGES = 32;
/** Native reads in flight at once, all connections together (each holds a job thread). */
const READS_IN_FLIGHT = 8;
/** Reply buffers kept for reuse (each one chunk: 1 MiB by default). */
const MAX_SPARE_BUFFERS = 8;

export interface CriuPageServerOptions {
  snapshotId: string;
  /** TCP port (0: any free port; read it from `.port`). Ignored with `listen: false`. */
  port: number;
  /** Listen on `host:port` (default true). `false`: serve only connections handed to
   *  `adoptConnection()` (the keeper's worker: the keeper owns the TCP endpoint). */
  listen?: boolean;
  /** Address to bind (default loopback: the protocol has no authentication). */
  host?: string;
  headerLayout?: CriuHeaderLayout;
  /** Serve only this pid's pages when the snapshot holds several (default: from each GET's dst_id). */
  dstId?: number;
  /** Largest nr_pages accepted in one GET (default 65536); more is a malformed header. */
  maxPagesPerGet?: number;
  /** Connections served at once (default 16); more are closed on arrival, with a log line. */
  maxConnections?: number;
  /** Reply bytes one connection may hold (fetched, not yet taken by the kernel); default 4 MiB. */
  maxConnectionBytes?: number;
  /** The same over all connections (default 64 MiB). */
  maxTotalBytes?: number;
  /** Requests parsed and waiting for their answer before a connection stops being read (default 64). */
  maxQueuedGets?: number;
  /** Close a connection that is silent with nothing to answer, or does not read its replies,
   *  for this long (default 60 s; 0: never). A connection waiting on a page we cannot produce is
   *  never closed by this: closing would let the kernel zero-fill the process's pages. */
  idleTimeoutMs?: number;
  /** Pages fetched from the stack per step (default 256; at most what the budgets hold). */
  chunkPages?: number;
  /** A page with no good copy in any tier is tried again after this long, doubling up to 30 s
   *  (default 1000 ms); its GET stays unanswered meanwhile (see the README). */
  badPageRetryMs?: number;
  logger?: Logger;
}

export interface CriuPageServerStats {
  connections: number;
  openConnections: number;
  gets: number;
  pagesServed: number;
  /** Connections closed for bad input, idleness, or because the limit was reached. */
  rejectedConnections: number;
  /** Of those: closed on arrival because `maxConnections` were open. */
  refusedConnections: number;
  /** Of those: closed for idleness (or for not reading their replies). */
  idleClosed: number;
  /** Reply bytes held now / at most so far (fetched, not yet taken by the kernel). */
  bytesInFlight: number;
  peakBytesInFlight: number;
  /** Per-connection peak of the same. */
  peakConnectionBytes: number;
  /** Pages whose copy in a tier failed the manifest checksum (or could not be read) and that
   *  were served from another tier's good copy. */
  recoveredPages: number;
  /** Connections by the header layout their GETs used: CRIU >= 4.2 (32-byte headers) / older (24). */
  v42Connections: number;
  legacyConnections: number;
  /** Connections waiting now on a page that no tier has a good copy of (their GET unanswered). */
  stuckConnections: number;
  /** Attempts to read such a page that found no good copy (the first and every retry). */
  unservableReads: number;
  /** Whether GETs are read by core's native SnapshotReader (job threads) or in JavaScript. */
  nativeReads: boolean;
  /** Pages read through the stack's JavaScript path (0 when native tiers held every page). */
  jsPathPages: number;
  lastError: string | undefined;
  lastErrorCode: string | undefined;
}

/** A connection handed to the server (see `adoptConnection`). */
export interface AdoptedConnectionOptions {
  /** The header layout already decided for this connection (a resumed one); default: the server's. */
  layout?: 'v42' | 'legacy';
  /**
   * Called after each GET whose whole answer the kernel took: every request in the first `inBytes`
   * bytes received on this connection is answered by the first `outBytes` bytes written. A relay
   * that keeps the requests from there on can give them to another server and drop the first
   * (bytes it has - outBytes) of its answers: answers are a pure function of the requests.
   */
  onCheckpoint?: (inBytes: number, outBytes: number, layout: 'v42' | 'legacy') => void;
}

export interface CriuPageServer {
  readonly port: number;
  readonly host: string;
  stats(): CriuPageServerStats;
  /** Serves an already connected stream (a Unix socket pair end, a TCP socket) like an accepted one. */
  adoptConnection(sock: Socket, options?: AdoptedConnectionOptions): void;
  close(): Promise<void>;
}

interface Header {
  cmd: number;
  nrPages: number;
  vaddr: number;
  dstId: bigint;
}

/** A connection's peer for log lines: its address, or what carries it (the keeper's relay: a socket pair). */
function peerOf(sock: Socket | undefined): string | undefined {
  if (!sock) return undefined;
  return sock.remoteAddress ? `${sock.remoteAddress}:${sock.remotePort}` : 'a relayed connection (keeper)';
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

const protocolError = (why: string): TierStackError => new TierStackError(ErrorCode.Protocol, why);

/** A byte budget with FIFO waiters (a grant never overtakes an earlier waiter). */
class ByteBudget {
  used = 0;
  peak = 0;
  private readonly waiters: Array<{ n: number; resolve: () => void }> = [];

  constructor(readonly limit: number) {}

  /** Undefined when granted at once, else a promise resolved on grant. */
  acquire(n: number): Promise<void> | undefined {
    if (this.waiters.length === 0 && this.used + n <= this.limit) {
      this.take(n);
      return undefined;
    }
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  }

  release(n: number): void {
    this.used -= n;
    while (this.waiters.length > 0 && this.used + this.waiters[0]!.n <= this.limit) {
      const w = this.waiters.shift()!;
      this.take(w.n);
      w.resolve();
    }
  }

  private take(n: number): void {
    this.used += n;
    if (this.used > this.peak) this.peak = this.used;
  }
}

/** One GET, resolved against the manifest when parsed. */
interface Plan {
  h: Header;
  /** Bytes of the connection's input up to the end of this request. */
  inEnd: number;
  /** Set when the GET cannot be answered (unknown address): the connection ends when it is reached. */
  error: TierStackError | undefined;
  /** Snapshot page of vaddr, and the pages answered (clamped to the end of the mapping). */
  first: number;
  n: number;
}

/** Part of a plan's answer produced by one chunk: pages [from, from + count) of the plan. */
interface Segment {
  plan: Plan;
  from: number;
  count: number;
}

/** The first `pages` pages of a batch. */
function cut(batch: Segment[], pages: number): Segment[] {
  const out: Segment[] = [];
  for (const s of batch) {
    if (pages <= 0) break;
    const count = Math.min(s.count, pages);
    out.push({ ...s, count });
    pages -= count;
  }
  return out;
}

/** One lazy-pages client connection: parses headers, answers them strictly in order, in chunks. */
class Connection {
  private buf: Buffer = Buffer.alloc(0);
  private layout: 'v42' | 'legacy' | undefined;
  /** The layout was counted in the server's stats (once, at the first whole header). */
  private layoutNoted = false;
  /** GETs parsed and not yet fully answered; queue[0] is being answered, `sent` pages of it so far. */
  private readonly queue: Plan[] = [];
  private sent = 0;
  /** Rejected or finished: nothing more is parsed or answered. */
  private done = false;
  /** A CLOSE arrived: later bytes are ignored, queued answers still go out. */
  private closing = false;
  private readonly local: ByteBudget;
  /** Releases of chunks whose bytes the kernel has not taken yet (run on close). */
  private readonly held = new Set<() => void>();
  private wake: (() => void) | undefined;
  private pumping = false;
  /** Waiting for a good copy of this snapshot page (its GET is not answered meanwhile). */
  private stuck: { page: number; tries: number } | undefined;
  private cancelSleep: (() => void) | undefined;
  /** Input bytes parsed into requests, and answer bytes written, so far. */
  private inConsumed = 0;
  private outWritten = 0;

  constructor(
    private readonly sock: Socket,
    private readonly server: PageServer,
    configured: CriuHeaderLayout,
    private readonly onCheckpoint?: (inBytes: number, outBytes: number, layout: 'v42' | 'legacy') => void,
  ) {
    this.layout = configured === 'auto' ? undefined : configured;
    this.local = new ByteBudget(server.limits.maxConnectionBytes);
    sock.on('data', (d) => this.onData(d));
    sock.on('error', (err) => this.server.log.debug({ err }, 'criu page server: connection error'));
    sock.on('close', () => this.onClose());
    if (server.limits.idleTimeoutMs > 0) {
      sock.setTimeout(server.limits.idleTimeoutMs, () => this.onTimeout());
    }
  }

  private get idle(): boolean {
    return this.queue.length === 0 && this.held.size === 0 && !this.closing;
  }

  private onTimeout(): void {
    if (this.done) return;
    const ms = this.server.limits.idleTimeoutMs;
    if (this.idle) {
      this.server.counters.idleClosed++;
      this.reject(new TierStackError(ErrorCode.Timeout, `idle for ${ms} ms${this.buf.length > 0 ? ` with ${this.buf.length} bytes of an incomplete header` : ''}`));
    } else if (this.held.size > 0) {
      // Replies are waiting for the kernel and the client took nothing for that long.
      this.server.counters.idleClosed++;
      this.reject(new TierStackError(ErrorCode.Timeout, `the client read none of its replies for ${ms} ms`));
    }
  }

  private onClose(): void {
    this.done = true;
    for (const release of [...this.held]) release();
    this.wake?.();
    this.cancelSleep?.();
    if (this.stuck) {
      this.server.stuck.delete(this);
      this.server.log.warn(
        { snapshot: this.server.manifest.id, page: this.stuck.page, tries: this.stuck.tries },
        'criu page server: the client hung up while its GET waited for a page with no good copy',
      );
    }
  }

  private reject(err: TierStackError): void {
    if (this.done) return;
    this.done = true;
    this.server.noteRejected(err, this.sock);
    this.sock.destroy();
  }

  private onData(d: Buffer): void {
    if (this.done || this.closing) return;
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    try {
      this.parse();
    } catch (err) {
      // Requests parsed before the bad header are dropped too: the connection is over.
      this.reject(err instanceof TierStackError ? err : protocolError((err as Error).message));
      return;
    }
    // Back-pressure: enough requests wait for their answers; TCP holds the rest at the client.
    if (this.queue.length >= this.server.limits.maxQueuedGets || this.closing) this.sock.pause();
    this.kick();
  }

  private parse(): void {
    const maxPages = this.server.maxPages;
    while (this.queue.length < this.server.limits.maxQueuedGets) {
      if (this.buf.length < 8) return;
      const cmd = this.buf.readUInt32LE(0);
      const code = cmd & 0xffff;
      if (code === PS_IOV_CLOSE || code === PS_IOV_FORCE_CLOSE) {
        // Both layouts: CLOSE carries no payload we need; answer once its shorter form arrived.
        if (this.buf.length < LEGACY_HEADER) return;
        this.buf = Buffer.alloc(0);
        this.closing = true;
        return;
      }
      if (code !== PS_IOV_GET) throw protocolError(`malformed header: unexpected command 0x${cmd.toString(16)}`);
      this.layout ??= this.buf.readUInt32LE(4) !== 0 ? 'legacy' : 'v42';
      if (!this.checkLayout()) return;
      const size = this.layout === 'v42' ? V42_HEADER : LEGACY_HEADER;
      if (this.buf.length < size) return;
      const h = decodePsHeader(this.layout, this.buf.subarray(0, size));
      this.buf = this.buf.subarray(size);
      if (!this.layoutNoted) {
        this.layoutNoted = true;
        this.server.noteLayout(this.layout);
      }
      this.inConsumed += size;
      if (h.nrPages <= 0 || h.nrPages > maxPages) throw protocolError(`malformed header: GET of ${h.nrPages} pages`);
      if (!Number.isSafeInteger(h.vaddr) || h.vaddr % this.server.pageSize !== 0) throw protocolError(`malformed header: GET at unaligned vaddr ${h.vaddr}`);
      this.queue.push({ ...this.server.plan(h), inEnd: this.inConsumed });
    }
  }

  /**
   * A client of the other layout (the layout was forced) would otherwise wait forever: a legacy
   * client's 24-byte GET never completes a 32-byte header, and a 4.2 client's pad word reads as
   * zero pages. A GET whose page count is impossible in this layout but right in the other one is
   * refused as soon as that much of it arrived, with a message saying what to run. False: wait
   * for more bytes before parsing.
   */
  private checkLayout(): boolean {
    const b = this.buf;
    const max = this.server.maxPages;
    const ps = this.server.pageSize;
    const okLegacy = (): boolean => b.length >= LEGACY_HEADER && b.readUInt32LE(4) > 0 && b.readUInt32LE(4) <= max && b.readBigUInt64LE(8) % BigInt(ps) === 0n;
    const okV42 = (): boolean => b.length >= V42_HEADER && b.readUInt32LE(4) === 0 && b.readBigUInt64LE(8) > 0n && b.readBigUInt64LE(8) <= BigInt(max) && b.readBigUInt64LE(16) % BigInt(ps) === 0n;
    const mismatch = (client: string, flag: string): TierStackError =>
      new TierStackError(
        ErrorCode.Protocol,
        `layout mismatch: the client sends ${client} page-server headers but this server was told --criu-layout ${this.layout} ` +
          `(headerLayout '${this.layout}'); restart it with --criu-layout ${flag} or auto`,
      );
    if (this.layout === 'v42' && b.length >= 16) {
      const n = b.readBigUInt64LE(8);
      if (n > 0n && n <= BigInt(max)) return true; // a plausible 4.2 GET
      if (b.length < LEGACY_HEADER) return false; // impossible as 4.2: is it a whole legacy GET?
      if (okLegacy()) throw mismatch('CRIU 3.x-4.1 (24-byte)', 'legacy');
      throw protocolError(`malformed header: GET of ${n} pages`);
    }
    if (this.layout === 'legacy' && b.readUInt32LE(4) === 0) {
      // Zero pages is no legacy GET; a 4.2 header has its pad word here.
      if (b.length >= 16 && !(b.readBigUInt64LE(8) > 0n && b.readBigUInt64LE(8) <= BigInt(max))) throw protocolError('malformed header: GET of 0 pages');
      if (b.length < V42_HEADER) return false;
      if (okV42()) throw mismatch('CRIU >= 4.2 (32-byte)', 'v42');
      throw protocolError('malformed header: GET of 0 pages');
    }
    return true;
  }

  /** Starts the answering loop if it is not running, or wakes it. */
  private kick(): void {
    if (this.wake) {
      const w = this.wake;
      this.wake = undefined;
      w();
    }
    if (this.pumping) return;
    this.pumping = true;
    void this.pump()
      .catch((err: unknown) => this.reject(err instanceof TierStackError ? err : new TierStackError(ErrorCode.Io, (err as Error).message, { cause: err })))
      .finally(() => (this.pumping = false));
  }

  /** The next pages to produce: whole GETs and parts of them, in order, up to one chunk. */
  private nextBatch(): Segment[] {
    const max = this.server.chunkPages;
    const out: Segment[] = [];
    let pages = 0;
    let sent = this.sent;
    for (const plan of this.queue) {
      if (plan.error) {
        if (out.length === 0) out.push({ plan, from: 0, count: 0 });
        break;
      }
      const count = Math.min(plan.n - sent, max - pages);
      out.push({ plan, from: sent, count });
      pages += count;
      sent = 0;
      if (pages >= max) break;
    }
    return out;
  }

  /** Answers the queue in order until it is empty, then waits for more (or ends on CLOSE). */
  private async pump(): Promise<void> {
    const ps = this.server.pageSize;
    while (!this.done) {
      const batch = this.nextBatch();
      if (batch.length === 0) {
        if (this.closing) {
          this.done = true;
          this.sock.end(Buffer.alloc(4)); // int32 0
          return;
        }
        if (this.sock.isPaused()) {
          this.resumeReading();
          if (this.queue.length > 0 || this.closing || this.done) continue;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      if (batch[0]!.plan.error) throw batch[0]!.plan.error;
      const pages = batch.reduce((n, s) => n + s.count, 0);
      const bytes = pages * ps;
      // Both budgets before any byte is fetched: the local one first, so a connection never
      // holds server budget while it waits for its own.
      const l = this.local.acquire(bytes);
      if (l) await l;
      const g = this.server.budget.acquire(bytes);
      if (g) await g;
      this.server.noteConnectionPeak(this.local.used);
      let released = false;
      // The reply's bytes live in a buffer of the server's pool until the kernel took them.
      const out = this.server.takeBuffer(bytes);
      const release = (): void => {
        if (released) return;
        released = true;
        this.held.delete(release);
        this.server.giveBack(out);
        this.local.release(bytes);
        this.server.budget.release(bytes);
      };
      this.held.add(release);
      if (this.done) {
        release();
        return;
      }
      const wanted = new Float64Array(pages);
      let w = 0;
      for (const s of batch) for (let i = 0; i < s.count; i++) wanted[w++] = s.plan.first + s.from + i;
      let r: { data: Buffer; bad: number[] };
      try {
        r = await this.server.fetch(wanted, out);
      } catch (err) {
        release();
        throw err;
      }
      if (this.done) {
        release();
        return;
      }
      if (r.bad.length === 0) {
        if (this.stuck) this.unstick();
        this.write(batch, r.data, release);
        continue;
      }
      // Answer up to the first page no tier has a good copy of, then hold that answer back:
      // closing (or answering zeros) would let the process run on wrong memory; an unanswered
      // GET blocks it instead. Try the page again later: a tier may come back or be repaired.
      const good = r.bad[0]!;
      if (good > 0) this.write(cut(batch, good), r.data, release);
      else release();
      await this.waitForGoodCopy(wanted[good]!);
    }
  }

  private async waitForGoodCopy(page: number): Promise<void> {
    const srv = this.server;
    srv.counters.unservableReads++;
    if (this.stuck?.page !== page) {
      this.stuck = { page, tries: 0 };
      srv.stuck.add(this);
      const plan = this.queue[0]!;
      const vaddr = plan.h.vaddr + (page - plan.first) * srv.pageSize;
      const err = new TierStackError(ErrorCode.Checksum, `page ${page} of snapshot ${srv.manifest.id} has no good copy in any tier`, {
        details: { id: srv.manifest.id, page, vaddr },
      });
      srv.lastError = err.message;
      srv.lastErrorCode = err.code;
      srv.log.error(
        { snapshot: srv.manifest.id, code: err.code, page, vaddr: `0x${vaddr.toString(16)}`, dstId: String(plan.h.dstId) },
        'criu page server: no tier has a good copy of a page; its GET stays unanswered so the restored process blocks on it instead of running on zeros (retrying)',
      );
    }
    const delay = Math.min(MAX_RETRY_MS, srv.badPageRetryMs * 2 ** Math.min(this.stuck.tries, 20));
    this.stuck.tries++;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, delay);
      this.cancelSleep = () => {
        clearTimeout(t);
        resolve();
      };
    });
    this.cancelSleep = undefined;
  }

  private unstick(): void {
    const s = this.stuck!;
    this.stuck = undefined;
    this.server.stuck.delete(this);
    this.server.log.warn({ snapshot: this.server.manifest.id, page: s.page, tries: s.tries }, 'criu page server: a good copy of the page appeared; answering again');
  }

  /** Writes a produced batch (headers where a GET's answer starts); `release` runs once the kernel took it all. */
  private write(batch: Segment[], data: Buffer, release: () => void): void {
    const ps = this.server.pageSize;
    const layout = this.layout!;
    const out: Buffer[] = [];
    let at = 0;
    let checkpoint: [number, number] | undefined;
    for (const s of batch) {
      const h = s.plan.h;
      if (s.from === 0) out.push(encodePsHeader(layout, { cmd: ADD_F_PRESENT, nrPages: s.plan.n, vaddr: h.vaddr, dstId: h.dstId }));
      if (s.count > 0) out.push(data.subarray(at * ps, (at + s.count) * ps));
      at += s.count;
      this.sent = s.from + s.count;
      this.server.counters.pagesServed += s.count;
      if (this.sent === s.plan.n) {
        this.queue.shift();
        this.sent = 0;
        this.server.counters.gets++;
        checkpoint = [s.plan.inEnd, this.outWritten + out.reduce((n, b) => n + b.length, 0)];
      }
    }
    this.outWritten += out.reduce((n, b) => n + b.length, 0);
    const onCheckpoint = this.onCheckpoint;
    const done = (err?: Error | null): void => {
      release();
      if (!err && checkpoint && onCheckpoint) onCheckpoint(checkpoint[0], checkpoint[1], layout);
    };
    this.sock.cork();
    // The last write's callback: everything before it went out too (or the socket is gone).
    out.forEach((b, i) => this.sock.write(b, i === out.length - 1 ? done : undefined));
    this.sock.uncork();
    if (this.sock.isPaused() && !this.closing && this.queue.length <= this.server.limits.maxQueuedGets / 2) this.resumeReading();
  }

  private resumeReading(): void {
    if (this.done || this.closing) return;
    // Requests already received but not parsed (the queue was full) come first.
    try {
      this.parse();
    } catch (err) {
      this.reject(err instanceof TierStackError ? err : protocolError((err as Error).message));
      return;
    }
    if (this.queue.length < this.server.limits.maxQueuedGets && !this.closing) this.sock.resume();
  }
}

interface Limits {
  maxConnections: number;
  maxConnectionBytes: number;
  maxTotalBytes: number;
  maxQueuedGets: number;
  idleTimeoutMs: number;
}

class PageServer implements CriuPageServer {
  readonly counters = { connections: 0, gets: 0, pagesServed: 0, rejectedConnections: 0, refusedConnections: 0, idleClosed: 0, recoveredPages: 0, unservableReads: 0, v42Connections: 0, legacyConnections: 0 };
  readonly stuck = new Set<object>();
  lastError: string | undefined;
  lastErrorCode: string | undefined;
  readonly sockets = new Set<Socket>();
  readonly pids: Set<number>;
  readonly budget: ByteBudget;
  readonly chunkPages: number;
  /** Native batch reads (core's addon); undefined without it (JS fetch + tier-by-tier repair). */
  private readonly reader: SnapshotReader | undefined;
  /** Reply buffers the kernel is done with (see takeBuffer). */
  private readonly spare: Buffer[] = [];
  /** Native reads in flight, server-wide (see readPart). */
  private readonly readSlots = new ByteBudget(READS_IN_FLIGHT);
  peakConnectionBytes = 0;

  constructor(
    readonly catalog: SnapshotCatalog,
    readonly manifest: SnapshotManifest,
    readonly net: Server,
    readonly host: string,
    readonly port: number,
    readonly maxPages: number,
    readonly dstPid: number | undefined,
    readonly limits: Limits,
    chunkPages: number,
    readonly badPageRetryMs: number,
    readonly log: Logger,
    private readonly listening = true,
  ) {
    this.pids = new Set(manifest.regions.map((r) => r.pid));
    this.reader = SnapshotReader.open(catalog.stack, manifest.namespace, manifest, { logger: log });
    if (!this.reader) {
      // Serving still works, slower and on the JS thread: say so where an operator looks.
      log.warn({ snapshot: manifest.id, err: (coreAddonError() as Error | undefined)?.message }, 'criu page server: core\'s native addon is not built: GETs are read in JavaScript (build it: pnpm --filter @tierstack/core run build:native)');
    }
    this.budget = new ByteBudget(limits.maxTotalBytes);
    const fit = Math.floor(Math.min(limits.maxConnectionBytes, limits.maxTotalBytes) / manifest.pageSize);
    this.chunkPages = Math.max(1, Math.min(chunkPages, fit));
  }

  get pageSize(): number {
    return this.manifest.pageSize;
  }

  /**
   * A GET's dst_id is the pid itself: lazy-pages sends its page_read's img_id, the pid whose
   * pagemap it opened (CRIU 3.x through 4.2; CRIU's own page server looks it up with
   * pstree_item_by_virt). The `pid << 8 | type` encoding is only for the dump side's ADD/OPEN,
   * never for GETs: reading a GET's dst_id that way sent pid 100's pages to pid 25677
   * (25677 >> 8 = 100) in a real CRIU 4.2 restore.
   */
  regionFor(vaddr: number, dstId: bigint): RegionInfo | undefined {
    if (this.dstPid !== undefined) return this.manifest.regionAt(vaddr, this.dstPid);
    if (this.pids.size <= 1) return this.manifest.regionAt(vaddr);
    const pid = Number(dstId);
    return this.pids.has(pid) ? this.manifest.regionAt(vaddr, pid) : undefined;
  }

  /** Resolves a GET to snapshot pages (clamped to the end of its mapping). */
  plan(h: Header): Omit<Plan, 'inEnd'> {
    const region = this.regionFor(h.vaddr, h.dstId);
    if (!region) {
      return { h, error: new TierStackError(ErrorCode.NotFound, `no mapping holds vaddr 0x${h.vaddr.toString(16)} (dst_id ${h.dstId})`), first: 0, n: 0 };
    }
    const ps = this.pageSize;
    const n = Math.min(h.nrPages, (region.base + region.size - h.vaddr) / ps);
    return { h, error: undefined, first: (region.fileOffset + (h.vaddr - region.base)) / ps, n };
  }

  /**
   * Snapshot pages, verified against the manifest. A page whose copy is bad (or a batch the stack
   * fails as a whole: a tier's own check, an unreachable tier) is read again tier by tier, top to
   * bottom, and the first copy that matches its checksum is served. `bad`: indexes (ascending)
   * of pages no tier has a good copy of; their bytes in `data` are zeros.
   */
  async fetch(pages: Float64Array, out?: Buffer): Promise<{ data: Buffer; bad: number[] }> {
    const m = this.manifest;
    const ps = m.pageSize;
    const data = out ? out.subarray(0, pages.length * ps) : Buffer.allocUnsafe(pages.length * ps);
    let bad: number[];
    let recovered = 0;
    // Pages of `bad` known to have had a copy that failed its checksum (rather than being read
    // again because a whole batch or level failed): only those, and those fromTiers sees fail,
    // count as recovered when a lower tier has a good copy.
    let knownBad: number[];
    if (this.reader) {
      // One native batch on a job thread: zero pages, native tiers, the JS path below them,
      // checksums, and repairs level by level. The JS path is one level to it, so a page it
      // could not serve is still worth a walk through the JS tiers one by one (below).
      const repairedBefore = this.reader.stats().repaired;
      bad = await this.readNative(this.reader, pages, data);
      recovered = this.reader.stats().repaired - repairedBefore;
      // The reader cannot tell a bad copy from a level that failed the whole batch (the JS path
      // rejects a batch for one bad page): fromTiers finds out page by page.
      knownBad = [];
      if (bad.length === 0) {
        this.noteRecovered(recovered);
        return { data, bad };
      }
    } else {
      try {
        const r = await fetchSnapshotPages(this.catalog.stack, m, pages, data);
        if (r.bad.length === 0) return { data, bad: [] };
        const badPages = new Set(r.bad.map((b) => b.page));
        bad = [];
        pages.forEach((p, i) => badPages.has(p) && bad.push(i));
        knownBad = bad;
      } catch (err) {
        this.log.warn({ snapshot: m.id, err: (err as Error).message, code: (err as { code?: string }).code }, 'criu page server: the stack failed a read; reading tier by tier');
        knownBad = [];
        bad = [];
        pages.forEach((p, i) => {
          if (m.isZero(p)) data.fill(0, i * ps, (i + 1) * ps);
          else bad.push(i);
        });
      }
    }
    const walked = await this.fromTiers(pages, bad, data, knownBad);
    this.noteRecovered(recovered + walked.recovered);
    return { data, bad: walked.left };
  }

  /**
   * A batch read as parts of at most READ_PART_PAGES pages on job threads at once: the parts'
   * copies and checksums run on several CPUs, as a pread server's reads run on libuv's pool,
   * instead of one thread doing the whole batch while the others idle. Returns the bad indexes.
   */
  private async readNative(reader: SnapshotReader, pages: Float64Array, data: Buffer): Promise<number[]> {
    const ps = this.pageSize;
    const parts: Promise<number[]>[] = [];
    for (let at = 0; at < pages.length; at += READ_PART_PAGES) {
      const end = Math.min(pages.length, at + READ_PART_PAGES);
      parts.push(this.readPart(reader, pages.subarray(at, end), data.subarray(at * ps, end * ps)).then((bad) => bad.map((i) => i + at)));
    }
    return parts.length === 1 ? parts[0]! : (await Promise.all(parts)).flat();
  }

  /** One part, once a read slot is free: each read in flight holds a job thread, so all the
   *  connections together keep at most READS_IN_FLIGHT of them busy. */
  private async readPart(reader: SnapshotReader, pages: Float64Array, out: Buffer): Promise<number[]> {
    const wait = this.readSlots.acquire(1);
    if (wait) await wait;
    try {
      return (await reader.read(pages, out)).bad;
    } finally {
      this.readSlots.release(1);
    }
  }

  private noteRecovered(recovered: number): void {
    if (recovered <= 0) return;
    this.counters.recoveredPages += recovered;
    this.log.warn({ snapshot: this.manifest.id, recovered }, 'criu page server: served pages from a lower tier (the copy above was bad or unreadable)');
  }

  /**
   * Reads the `idx` pages from each tier in turn. `left`: those no tier had a good copy of;
   * `recovered`: pages served whose copy was bad or unreadable somewhere above (`knownBad`: those
   * of `idx` already known to be) — a page a cache merely missed is not a recovery.
   */
  private async fromTiers(pages: Float64Array, idx: number[], data: Buffer, knownBad: readonly number[]): Promise<{ left: number[]; recovered: number }> {
    const m = this.manifest;
    const ps = m.pageSize;
    const stack = this.catalog.stack as { tiers?: readonly PageStore[] };
    const tiers: readonly PageStore[] = Array.isArray(stack.tiers) && stack.tiers.length > 0 ? stack.tiers : [this.catalog.stack];
    let left = idx;
    const sawBad = new Set<number>(knownBad);
    let recovered = 0;
    for (const tier of tiers) {
      if (left.length === 0) break;
      const want = left.map((i) => pages[i]!);
      const copies: Array<Buffer | undefined> = [];
      try {
        const r = await tier.get(m.namespace, want);
        want.forEach((_, k) => copies.push(r.found[k] ? r.data.subarray(k * ps, (k + 1) * ps) : undefined));
      } catch {
        // One bad page fails a batch in some tiers: ask for each page alone.
        for (const [k, p] of want.entries()) {
          try {
            const r = await tier.get(m.namespace, [p]);
            copies.push(r.found[0] ? r.data : undefined);
          } catch {
            copies.push(undefined);
            sawBad.add(left[k]!);
          }
        }
      }
      const still: number[] = [];
      left.forEach((i, k) => {
        const c = copies[k];
        if (c && pageChecksum(c) === m.checksum(pages[i]!)) {
          c.copy(data, i * ps);
          if (sawBad.has(i)) recovered++;
        } else {
          if (c) sawBad.add(i);
          still.push(i);
        }
      });
      left = still;
    }
    for (const i of left) data.fill(0, i * ps, (i + 1) * ps);
    return { left, recovered };
  }

  /**
   * A reply buffer of at least `bytes`. Replies are at most one chunk, so chunk-sized buffers are
   * kept for reuse: a fresh 1 MiB allocation per batch costs a page fault per page on first touch
   * and keeps the garbage collector busy. The budgets bound how many are out at once.
   */
  takeBuffer(bytes: number): Buffer {
    const chunkBytes = this.chunkPages * this.pageSize;
    if (bytes > chunkBytes) return Buffer.allocUnsafeSlow(bytes);
    return this.spare.pop() ?? Buffer.allocUnsafeSlow(chunkBytes);
  }

  giveBack(buf: Buffer): void {
    if (buf.length === this.chunkPages * this.pageSize && this.spare.length < MAX_SPARE_BUFFERS) this.spare.push(buf);
  }

  /** A connection's first GET said which header layout it speaks (detected with 'auto', or forced). */
  noteLayout(layout: 'v42' | 'legacy'): void {
    if (layout === 'v42') this.counters.v42Connections++;
    else this.counters.legacyConnections++;
    this.log.debug({ snapshot: this.manifest.id, layout }, 'criu page server: a client speaks this header layout');
  }

  noteConnectionPeak(bytes: number): void {
    if (bytes > this.peakConnectionBytes) this.peakConnectionBytes = bytes;
  }

  noteRejected(err: TierStackError, sock?: Socket): void {
    this.counters.rejectedConnections++;
    this.lastError = err.message;
    this.lastErrorCode = err.code;
    this.log.warn({ snapshot: this.manifest.id, code: err.code, reason: err.message, peer: peerOf(sock) }, 'criu page server: closing a connection');
  }

  stats(): CriuPageServerStats {
    return {
      ...this.counters,
      openConnections: this.sockets.size,
      bytesInFlight: this.budget.used,
      peakBytesInFlight: this.budget.peak,
      peakConnectionBytes: this.peakConnectionBytes,
      stuckConnections: this.stuck.size,
      nativeReads: this.reader !== undefined,
      jsPathPages: this.reader ? this.reader.stats().jsPathPages : this.counters.pagesServed,
      lastError: this.lastError,
      lastErrorCode: this.lastErrorCode,
    };
  }

  /** @internal set by serveCriuPages */
  accept: ((sock: Socket, adopted?: AdoptedConnectionOptions) => void) | undefined;

  adoptConnection(sock: Socket, options: AdoptedConnectionOptions = {}): void {
    if (options.layout !== undefined && options.layout !== 'v42' && options.layout !== 'legacy') {
      throw new TierStackError(ErrorCode.BadArgument, `unknown header layout ${String(options.layout)}`);
    }
    if (!this.accept) throw new TierStackError(ErrorCode.Closed, 'the page server is not running');
    this.accept(sock, options);
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.accept = undefined;
    this.reader?.close();
    if (!this.listening) return Promise.resolve();
    return new Promise((resolve) => this.net.close(() => resolve()));
  }
}

function positive(v: number | undefined, dflt: number, what: string, allowZero = false): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 0 || (v === 0 && !allowZero)) {
    throw new TierStackError(ErrorCode.BadArgument, `${what} must be a ${allowZero ? 'non-negative' : 'positive'} integer, not ${String(v)}`);
  }
  return v;
}

export async function serveCriuPages(catalog: SnapshotCatalog, opts: CriuPageServerOptions): Promise<CriuPageServer> {
  const d = CRIU_SERVER_DEFAULTS;
  const limits: Limits = {
    maxConnections: positive(opts.maxConnections, d.maxConnections, 'maxConnections'),
    maxConnectionBytes: positive(opts.maxConnectionBytes, d.maxConnectionBytes, 'maxConnectionBytes'),
    maxTotalBytes: positive(opts.maxTotalBytes, d.maxTotalBytes, 'maxTotalBytes'),
    maxQueuedGets: positive(opts.maxQueuedGets, d.maxQueuedGets, 'maxQueuedGets'),
    idleTimeoutMs: positive(opts.idleTimeoutMs, d.idleTimeoutMs, 'idleTimeoutMs', true),
  };
  const chunkPages = positive(opts.chunkPages, d.chunkPages, 'chunkPages');
  const badPageRetryMs = positive(opts.badPageRetryMs, d.badPageRetryMs, 'badPageRetryMs');
  const manifest = await catalog.get(opts.snapshotId);
  const ps = manifest.pageSize;
  if (limits.maxConnectionBytes < ps || limits.maxTotalBytes < ps) {
    throw new TierStackError(ErrorCode.BadArgument, `the reply budgets (${limits.maxConnectionBytes} per connection, ${limits.maxTotalBytes} in all) must hold at least one ${ps}-byte page`);
  }
  const host = opts.host ?? '127.0.0.1';
  const layout = opts.headerLayout ?? 'auto';
  if (!['v42', 'legacy', 'auto'].includes(layout)) throw new TierStackError(ErrorCode.BadArgument, `unknown header layout ${String(layout)}`);
  const log = opts.logger ?? silentLogger;
  const net = createServer();
  const listen = opts.listen !== false;
  if (listen) {
    await new Promise<void>((resolve, reject) => {
      net.once('error', (err) => reject(new TierStackError(ErrorCode.Io, `cannot listen on ${host}:${opts.port}: ${err.message}`, { cause: err })));
      net.listen(opts.port, host, () => resolve());
    });
  }
  const addr = listen ? net.address() : null;
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  const server = new PageServer(catalog, manifest, net, host, port, opts.maxPagesPerGet ?? 65536, opts.dstId, limits, chunkPages, badPageRetryMs, log, listen);
  const accept = (sock: Socket, adopted?: AdoptedConnectionOptions): void => {
    server.counters.connections++;
    sock.on('error', () => undefined);
    // A socket we destroyed counts no more, even before its 'close' event.
    if (server.sockets.size >= limits.maxConnections) for (const s of server.sockets) if (s.destroyed) server.sockets.delete(s);
    if (server.sockets.size >= limits.maxConnections) {
      server.counters.refusedConnections++;
      server.noteRejected(new TierStackError(ErrorCode.Unavailable, `${limits.maxConnections} connections are open (maxConnections); refusing another`), sock);
      sock.destroy();
      return;
    }
    server.sockets.add(sock);
    sock.on('close', () => server.sockets.delete(sock));
    sock.setNoDelay(true);
    new Connection(sock, server, adopted?.layout ?? layout, adopted?.onCheckpoint);
  };
  net.on('connection', (sock) => accept(sock));
  server.accept = accept;
  net.on('error', (err) => log.error({ err }, 'criu page server error'));
  return server;
}
