/**
 * A served device's control socket (`<state-dir>/<name>.ctl`): how other processes ask the
 * running server what only it knows. One JSON request line per connection:
 *   {"cmd":"trace","seconds":N,"capacity":C}  -> JSON lines {"records":[...],"lost":n} about every
 *       200 ms, then {"end":true} after N seconds (or until the client hangs up when N is absent).
 *       Several tracers share one ring; it is switched off when the last one leaves.
 *   {"cmd":"locate","pages":[p,...]}          -> {"tiers":[name|null,...]}: the top-most tier that
 *       holds each page of the device's namespace now (null: none; the page reads as zeros).
 * Both only read: a trace or a locate never changes what the stack holds.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import { ErrorCode, TierStackError, isLayeredStore, type Logger, type PageStore, type TraceRecord } from '@tierstack/core';
import type { BlockDevice } from './device.js';

const DRAIN_MS = 200;
const LOCATE_CHUNK = 4096;
const MAX_LOCATE = 1 << 22;

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

/** The top-most tier holding each page (null when none does). Reads tiers directly: no promotion. */
export async function locatePages(stack: PageStore, ns: string, pages: number[]): Promise<Array<string | null>> {
  const tiers = isLayeredStore(stack) ? stack.tiers : [stack];
  const out: Array<string | null> = new Array<string | null>(pages.length).fill(null);
  for (let start = 0; start < pages.length; start += LOCATE_CHUNK) {
    let idx = Array.from({ length: Math.min(LOCATE_CHUNK, pages.length - start) }, (_, i) => start + i);
    for (const t of tiers) {
      if (idx.length === 0) break;
      const r = await t.get(ns, idx.map((i) => pages[i]!));
      const left: number[] = [];
      idx.forEach((i, k) => (r.found[k] ? (out[i] = t.name) : left.push(i)));
      idx = left;
    }
  }
  return out;
}

export async function serveControl(path: string, device: BlockDevice, stack: PageStore, log: Logger): Promise<ControlServer> {
  const tracers = new Set<{ sock: Socket; until: number }>();
  let timer: NodeJS.Timeout | undefined;

  const send = (sock: Socket, obj: unknown): void => {
    if (!sock.destroyed) sock.write(`${JSON.stringify(obj)}\n`);
  };
  const drain = (): void => {
    const { records, lost } = device.trace.take(1 << 20);
    const now = Date.now();
    for (const t of [...tracers]) {
      send(t.sock, { records, lost });
      if (now >= t.until) {
        send(t.sock, { end: true });
        t.sock.end();
        leave(t);
      }
    }
  };
  const leave = (t: { sock: Socket; until: number }): void => {
    if (!tracers.delete(t)) return;
    if (tracers.size === 0) {
      device.trace.stop();
      clearInterval(timer);
      timer = undefined;
    }
  };

  const handle = async (sock: Socket, line: string): Promise<void> => {
    let req: { cmd?: string; seconds?: number; capacity?: number; pages?: number[] };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      send(sock, { error: { code: ErrorCode.Protocol, message: 'one JSON request line expected' } });
      sock.end();
      return;
    }
    if (req.cmd === 'trace') {
      const seconds = typeof req.seconds === 'number' && req.seconds > 0 ? req.seconds : Infinity;
      if (tracers.size === 0) device.trace.start(typeof req.capacity === 'number' ? req.capacity : 65536);
      const t = { sock, until: Date.now() + seconds * 1000 };
      tracers.add(t);
      sock.on('close', () => leave(t));
      timer ??= setInterval(drain, DRAIN_MS);
      send(sock, { started: true, device: device.name, path: device.path, namespace: device.namespace });
      return;
    }
    if (req.cmd === 'locate') {
      const pages = req.pages;
      if (!Array.isArray(pages) || pages.length > MAX_LOCATE || !pages.every((p) => Number.isSafeInteger(p) && p >= 0)) {
        send(sock, { error: { code: ErrorCode.BadArgument, message: `pages: up to ${MAX_LOCATE} page numbers` } });
      } else {
        try {
          send(sock, { tiers: await locatePages(stack, device.namespace, pages) });
        } catch (err) {
          send(sock, { error: { code: (err as { code?: string }).code ?? ErrorCode.Io, message: (err as Error).message } });
        }
      }
      sock.end();
      return;
    }
    send(sock, { error: { code: ErrorCode.BadArgument, message: `unknown command ${String(req.cmd)}` } });
    sock.end();
  };

  rmSync(path, { force: true });
  const server: Server = createServer((sock) => {
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('error', () => undefined); // a client that went away
    const onData = (d: string): void => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > 64 << 20) sock.destroy();
        return;
      }
      sock.off('data', onData);
      handle(sock, buf.slice(0, nl)).catch((err: unknown) => log.warn({ err }, 'control request failed'));
    };
    sock.on('data', onData);
  });
  server.unref();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    path,
    async close() {
      for (const t of [...tracers]) {
        t.sock.destroy();
        leave(t);
      }
      await new Promise<void>((r) => server.close(() => r()));
      rmSync(path, { force: true });
    },
  };
}

/** One request to a device's control socket; resolves with the answer lines as they come. */
function request(path: string, req: unknown, onLine: (obj: Record<string, unknown>) => boolean | void): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let buf = '';
    let failed = false;
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const obj = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        const e = obj['error'] as { code: string; message: string } | undefined;
        if (e) {
          failed = true;
          sock.destroy();
          reject(new TierStackError(e.code as ErrorCode, e.message));
          return;
        }
        if (onLine(obj) === false) {
          sock.destroy();
          resolve();
          return;
        }
      }
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      failed = true;
      const code = err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? ErrorCode.Unavailable : ErrorCode.Io;
      reject(new TierStackError(code, `no server answers at ${path} (is the device served?): ${err.message}`, { cause: err }));
    });
    sock.on('close', () => {
      if (!failed) resolve();
    });
  });
}

export interface TraceStreamOptions {
  /** Stop after this many seconds (default: until `onBatch` returns false). */
  seconds?: number;
  capacity?: number;
  /** The server has started tracing (requests from now on are recorded). */
  onStart?: () => void;
  onBatch: (records: TraceRecord[], lost: number) => boolean | void;
}

/** Streams a running server's request trace. */
export function streamTrace(controlPath: string, o: TraceStreamOptions): Promise<void> {
  return request(controlPath, { cmd: 'trace', ...(o.seconds ? { seconds: o.seconds } : {}), ...(o.capacity ? { capacity: o.capacity } : {}) }, (obj) => {
    if (obj['end']) return false;
    if (obj['started']) o.onStart?.();
    if (Array.isArray(obj['records'])) return o.onBatch(obj['records'] as TraceRecord[], Number(obj['lost'] ?? 0));
    return undefined;
  });
}

/** Asks a running server which tier holds each page of its device now. */
export async function locateRemote(controlPath: string, pages: number[]): Promise<Array<string | null>> {
  let tiers: Array<string | null> = [];
  await request(controlPath, { cmd: 'locate', pages }, (obj) => {
    if (Array.isArray(obj['tiers'])) tiers = obj['tiers'] as Array<string | null>;
  });
  return tiers;
}
