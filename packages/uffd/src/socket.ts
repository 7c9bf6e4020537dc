/**
 * Receiving a userfaultfd from another process. Node's `net` cannot receive descriptors
 * (SCM_RIGHTS), so listening, accepting and receiving are native; each wait runs on its own
 * thread and resolves a promise.
 *
 *   const listener = listenForUffd('/run/fc/uffd.sock');
 *   const got = await listener.accept({ timeoutMs: 30_000 });   // { fd, message, pid, ... }
 *   const mappings = JSON.parse(got.message.toString());          // e.g. Firecracker's regions
 *   engine.adopt({ fd: got.fd, pid: got.pid, regions: ... });
 */
import { TierStackError, ErrorCode } from '@tierstack/core';
import { uffdAddon } from './native.js';

export interface ReceivedUffd {
  /** The descriptor passed (the uffd): give it to engine.adopt(), which then owns it. */
  fd: number;
  /** The connection it came on (left open: some senders watch it); closeConnection() ends it. */
  conn: number;
  /** Peer credentials (SO_PEERCRED). */
  pid: number;
  uid: number;
  gid: number;
  /** The bytes that came with the descriptor (Firecracker: a JSON array of region mappings). */
  message: Buffer;
  closeConnection(): void;
}

export interface AcceptOptions {
  /** Give up after this long (TS_ERR_TIMEOUT); default: wait forever. */
  timeoutMs?: number;
}

function wrap(r: { fd: number; conn: number; pid: number; uid: number; gid: number; message: Buffer }): ReceivedUffd {
  let conn = r.conn;
  return {
    ...r,
    closeConnection() {
      if (conn >= 0) uffdAddon().closeFd(conn);
      conn = -1;
    },
  };
}

export class UffdListener {
  #fd: number;
  #closed = false;
  /** Accepts under way (each on its own native thread, using #fd). */
  readonly #pending = new Set<Promise<unknown>>();

  constructor(readonly path: string) {
    this.#fd = uffdAddon().listenUnix(path);
  }

  /** Waits for one sender and receives its message and descriptor. */
  async accept(options: AcceptOptions = {}): Promise<ReceivedUffd> {
    if (this.#closed) throw new TierStackError(ErrorCode.Closed, `listener ${this.path} is closed`);
    const p = uffdAddon().acceptFd(this.#fd, options.timeoutMs ?? -1);
    this.#pending.add(p);
    try {
      return wrap(await p);
    } catch (err) {
      if (this.#closed) throw new TierStackError(ErrorCode.Closed, `listener ${this.path} was closed`, { cause: err });
      throw err;
    } finally {
      this.#pending.delete(p);
    }
  }

  /** Stops listening. A pending accept() fails with TS_ERR_CLOSED; the descriptor is closed once
   *  no native thread uses it (never while one might still call accept on its number). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const fd = this.#fd;
    if (this.#pending.size === 0) {
      uffdAddon().closeFd(fd);
      return;
    }
    uffdAddon().shutdownFd(fd);
    void Promise.allSettled([...this.#pending]).then(() => uffdAddon().closeFd(fd));
  }
}

/** Binds a Unix stream socket (mode 0600) that senders connect to and pass a uffd over. */
export function listenForUffd(path: string): UffdListener {
  return new UffdListener(path);
}

/** Receives one message + descriptor on an already connected Unix socket descriptor. */
export async function receiveUffd(connFd: number, options: AcceptOptions = {}): Promise<ReceivedUffd> {
  return wrap(await uffdAddon().receiveFd(connFd, options.timeoutMs ?? -1));
}

/** Sends `message` and `fd` to a listener at `path`; returns the connection descriptor (close it
 *  with closeFd when done). For handing a uffd on, and for tests. */
export function sendUffd(path: string, message: Buffer, fd: number): number {
  return uffdAddon().sendFd(path, message, fd);
}

export function closeFd(fd: number): void {
  uffdAddon().closeFd(fd);
}
