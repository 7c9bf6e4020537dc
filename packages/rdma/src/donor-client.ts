/**
 * The client end of one memd control connection: hello, request/response by request id (with
 * a timeout), and the donor's unsolicited evict notices. The pool tier holds one per donor.
 */
import { connect, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import { TierStackError, ErrorCode, isTierStackError, type ErrorCode as Code } from '@tierstack/core';
import { FrameReader, encodeFrame, PROTOCOL_VERSION, type Frame, type HelloOk, type SlabGrant, type Stats, type EvictNotice } from './protocol.js';

export interface DonorAddress {
  host: string;
  port: number;
}

/** Parses "host:port", "[v6]:port" or {host, port}. */
export function parseDonorAddress(spec: string | DonorAddress): DonorAddress {
  if (typeof spec !== 'string') return spec;
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(spec.trim());
  if (!m) throw new TierStackError(ErrorCode.BadArgument, `donor address "${spec}" is not host:port`);
  return { host: m[1]!, port: Number(m[2]) };
}

interface Pending {
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export interface DonorClientEvents {
  evict: [EvictNotice];
  close: [Error | undefined];
}

export class DonorClient extends EventEmitter<DonorClientEvents> {
  private readonly reader = new FrameReader();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closedErr: Error | undefined;
  hello!: HelloOk;

  private constructor(
    private readonly socket: Socket,
    readonly address: DonorAddress,
    private readonly timeoutMs: number,
  ) {
    super();
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.reader.push(chunk);
      } catch (err) {
        this.fail(err as Error);
        return;
      }
      for (const f of frames) this.onFrame(f);
    });
    socket.on('error', (err) => this.fail(new TierStackError(ErrorCode.Unavailable, `donor ${address.host}:${address.port}: ${err.message}`, { cause: err })));
    socket.on('close', () => this.fail(new TierStackError(ErrorCode.Unavailable, `donor ${address.host}:${address.port} closed the control connection`)));
  }

  /** Connects and says hello; rejects with TS_ERR_PERMISSION on a bad token, TS_ERR_UNAVAILABLE if unreachable. */
  static async connect(address: DonorAddress, opts: { token?: string; clientName?: string; timeoutMs?: number } = {}): Promise<DonorClient> {
    const timeoutMs = opts.timeoutMs ?? 5000;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(address.port, address.host);
      const t = setTimeout(() => {
        s.destroy();
        reject(new TierStackError(ErrorCode.Unavailable, `donor ${address.host}:${address.port}: connect timed out`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        resolve(s);
      });
      s.once('error', (err) => {
        clearTimeout(t);
        reject(new TierStackError(ErrorCode.Unavailable, `donor ${address.host}:${address.port}: ${err.message}`, { cause: err }));
      });
    });
    const client = new DonorClient(socket, address, timeoutMs);
    const f = await client.request({ hello: { version: PROTOCOL_VERSION, token: opts.token ?? '', clientName: opts.clientName ?? 'rdma-pool' } });
    if (!f.helloOk) {
      client.close();
      throw new TierStackError(ErrorCode.Protocol, 'donor answered hello with something else');
    }
    client.hello = f.helloOk;
    return client;
  }

  get isOpen(): boolean {
    return this.closedErr === undefined;
  }

  /** Sends a frame and waits for the answer with the same request id. */
  request(body: Omit<Frame, 'requestId'>): Promise<Frame> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    const requestId = this.nextId++;
    return new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new TierStackError(ErrorCode.Timeout, `donor ${this.address.host}:${this.address.port} did not answer in ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(requestId, {
        resolve: (f) => {
          if (f.error) reject(new TierStackError((f.error.code as Code) || ErrorCode.Protocol, `donor: ${f.error.message}`));
          else resolve(f);
        },
        reject,
        timer,
      });
      this.socket.write(encodeFrame({ ...body, requestId }));
    });
  }

  /** Sends a frame that has no answer. */
  send(body: Omit<Frame, 'requestId'>): void {
    if (!this.closedErr) this.socket.write(encodeFrame({ ...body, requestId: 0 }));
  }

  async allocSlab(tag: string): Promise<SlabGrant> {
    const f = await this.request({ allocSlab: { tag } });
    if (!f.slabGrant) throw new TierStackError(ErrorCode.Protocol, 'donor answered alloc with something else');
    return f.slabGrant;
  }

  async freeSlab(slabId: bigint): Promise<void> {
    await this.request({ freeSlab: { slabId: String(slabId) } });
  }

  async stats(): Promise<Stats> {
    const f = await this.request({ statsRequest: {} });
    if (!f.stats) throw new TierStackError(ErrorCode.Protocol, 'donor answered stats with something else');
    return f.stats;
  }

  close(): void {
    this.fail(new TierStackError(ErrorCode.Closed, 'donor connection closed by the client'));
  }

  private onFrame(f: Frame): void {
    if (f.evictNotice && !f.requestId) {
      this.emit('evict', f.evictNotice);
      return;
    }
    const p = this.pending.get(f.requestId ?? 0);
    if (!p) return;
    this.pending.delete(f.requestId!);
    clearTimeout(p.timer);
    p.resolve(f);
  }

  private fail(err: Error): void {
    if (this.closedErr) return;
    this.closedErr = isTierStackError(err) ? err : new TierStackError(ErrorCode.Unavailable, err.message, { cause: err });
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(this.closedErr);
    }
    this.pending.clear();
    this.socket.destroy();
    this.emit('close', err);
  }
}
