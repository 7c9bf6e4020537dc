/**
 * Receiving a uffd handshake (Firecracker's: one message, a JSON array of guest mappings, with
 * the userfaultfd as SCM_RIGHTS) — the one accept → check → parse sequence that both the
 * Firecracker handler (any number of VMs) and RestoreHook's `{ kind: 'socket' }` target (one
 * sender) use.
 *
 * Connections are accepted by Node (a Unix socket server whose connections are never read by
 * Node: `pauseOnConnect`) and each one's message and descriptor are received natively on its own
 * thread, concurrently: a peer that connects and says nothing holds only its own connection, for
 * at most `timeoutMs`, and never delays another (`maxPending` bounds how many may wait at once).
 * Every rejection is a TierStackError and one log line:
 * - no message within `timeoutMs`: TS_ERR_TIMEOUT;
 * - no descriptor, or one that is not a userfaultfd (/proc/self/fd/N is not
 *   `anon_inode:[userfaultfd]`: a pipe, an eventfd, a file), or a userfaultfd whose UFFDIO_API
 *   handshake was not done: TS_ERR_PROTOCOL — such a descriptor is closed, never adopted;
 * - mappings that do not fit the snapshot: TS_ERR_PROTOCOL (parseFirecrackerHandshake).
 * A descriptor is owned by this module until a handshake is handed out; then by its receiver.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { chmodSync, lstatSync, readFileSync, readlinkSync, unlinkSync } from 'node:fs';
import { TierStackError, ErrorCode, silentLogger, type Logger } from '@tierstack/core';
import { receiveUffd, closeFd } from '@tierstack/uffd';
import { parseFirecrackerHandshake, type GuestMapping } from './firecracker-handshake.js';
import type { SnapshotManifest } from './manifest.js';

/** A checked handshake: a verified userfaultfd and mappings that fit the snapshot. */
export interface Handshake {
  /** The userfaultfd (owned by the receiver: adopt it, or closeFd it). */
  fd: number;
  /** Peer credentials (SO_PEERCRED). */
  pid: number;
  uid: number;
  gid: number;
  mappings: GuestMapping[];
  /** Ends the connection (Firecracker keeps it open and may watch it); idempotent. */
  closeConnection(): void;
}

export const HANDSHAKE_DEFAULTS = {
  /** How long a connected peer has to send its message. */
  timeoutMs: 5000,
  /** Connections waiting for their message at once; more are closed on arrival. */
  maxPending: 64,
} as const;

export interface HandshakeListenerOptions {
  socketPath: string;
  /** The snapshot the mappings are checked against. */
  manifest: SnapshotManifest;
  timeoutMs?: number;
  maxPending?: number;
  logger?: Logger;
  /** A checked handshake (called concurrently for concurrent peers). */
  onHandshake: (h: Handshake) => void;
  /** A connection refused (already logged; its descriptor is closed). */
  onReject?: (err: TierStackError, peerPid: number | undefined) => void;
}

export interface HandshakeListener {
  readonly socketPath: string;
  /** Connections waiting for their message now. */
  pending(): number;
  /** Stops accepting. Handshakes still waiting are dropped when their wait ends. */
  close(): Promise<void>;
}

const protocol = (why: string): TierStackError => new TierStackError(ErrorCode.Protocol, `Firecracker handshake rejected: ${why}`);

/**
 * Throws TS_ERR_PROTOCOL unless `fd` is a userfaultfd whose owner did the UFFDIO_API handshake:
 * anything else (a pipe, an eventfd, a file) would be adopted as a fault source that never
 * faults, or that the fault threads cannot read.
 */
export function verifyUserfaultfd(fd: number): void {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch (err) {
    throw protocol(`cannot inspect the descriptor passed (${(err as Error).message})`);
  }
  if (target !== 'anon_inode:[userfaultfd]') throw protocol(`the descriptor passed is not a userfaultfd (it is ${target})`);
  // fdinfo: "API:\t<api>:<features>:<ioctls>". The kernel keeps features 0 until UFFDIO_API
  // (which sets at least its internal INITIALIZED bit), and read()/poll() on such a uffd fail.
  let info = '';
  try {
    info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    return;
  }
  const m = /^API:\s*([0-9a-f]+):([0-9a-f]+):/im.exec(info);
  if (m && Number.parseInt(m[2]!, 16) === 0) {
    throw protocol('the userfaultfd passed has not been through UFFDIO_API (its owner must do the API handshake and register its regions first)');
  }
}

function socketFd(sock: Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' ? fd : -1;
}

function positive(v: number | undefined, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v <= 0) throw new TierStackError(ErrorCode.BadArgument, `${what} must be a positive integer, not ${String(v)}`);
  return v;
}

/**
 * Listens on `socketPath` (mode 0600; a stale socket file is replaced) and hands every checked
 * handshake to `onHandshake`, each connection on its own.
 */
export async function listenForHandshakes(opts: HandshakeListenerOptions): Promise<HandshakeListener> {
  const timeoutMs = positive(opts.timeoutMs, HANDSHAKE_DEFAULTS.timeoutMs, 'handshake timeoutMs');
  const maxPending = positive(opts.maxPending, HANDSHAKE_DEFAULTS.maxPending, 'handshake maxPending');
  const log = opts.logger ?? silentLogger;
  const snapshot = opts.manifest.id;
  let pending = 0;
  let closed = false;

  const refuse = (err: TierStackError, peerPid: number | undefined): void => {
    log.warn({ snapshot, socket: opts.socketPath, peerPid, code: err.code, reason: err.message }, 'uffd handshake: rejected a connection');
    opts.onReject?.(err, peerPid);
  };

  /** accept → receive (natively, with a timeout) → check the descriptor → parse the mappings. */
  const handshake = async (sock: Socket): Promise<void> => {
    sock.on('error', () => undefined);
    const conn = socketFd(sock);
    if (conn < 0) {
      sock.destroy();
      return refuse(new TierStackError(ErrorCode.Io, 'an accepted connection has no descriptor'), undefined);
    }
    if (pending >= maxPending) {
      sock.destroy();
      return refuse(new TierStackError(ErrorCode.Unavailable, `${maxPending} handshakes are already waiting (maxPending); refusing another connection`), undefined);
    }
    pending++;
    let got: Awaited<ReturnType<typeof receiveUffd>>;
    try {
      // The socket is not closed before this returns: its descriptor is in use on another thread.
      got = await receiveUffd(conn, { timeoutMs });
    } catch (err) {
      sock.destroy();
      const code = (err as { code?: string }).code;
      const why =
        code === ErrorCode.Timeout
          ? new TierStackError(ErrorCode.Timeout, `no handshake message within ${timeoutMs} ms`, { cause: err })
          : code === ErrorCode.Protocol
            ? protocol('the message carried no descriptor (SCM_RIGHTS), or the peer hung up')
            : new TierStackError(ErrorCode.Io, `receiving the handshake failed: ${(err as Error).message}`, { cause: err });
      return refuse(why, undefined);
    } finally {
      pending--;
    }
    let open = true;
    const closeConnection = (): void => {
      if (open) sock.destroy();
      open = false;
    };
    const drop = (err: TierStackError): void => {
      closeFd(got.fd);
      closeConnection();
      refuse(err, got.pid);
    };
    if (closed) return drop(new TierStackError(ErrorCode.Closed, 'the handler closed while this handshake was under way'));
    let mappings: GuestMapping[];
    try {
      verifyUserfaultfd(got.fd);
      mappings = parseFirecrackerHandshake(got.message, opts.manifest);
    } catch (err) {
      return drop(err instanceof TierStackError ? err : protocol((err as Error).message));
    }
    opts.onHandshake({ fd: got.fd, pid: got.pid, uid: got.uid, gid: got.gid, mappings, closeConnection });
  };

  const server: Server = createServer({ pauseOnConnect: true }, (sock) => {
    if (closed) {
      sock.destroy();
      return;
    }
    void handshake(sock).catch((err: unknown) => log.error({ err, snapshot }, 'uffd handshake: unexpected error'));
  });
  server.on('error', (err) => log.error({ err, snapshot, socket: opts.socketPath }, 'uffd handshake listener error'));
  try {
    if (lstatSync(opts.socketPath, { throwIfNoEntry: false })?.isSocket()) unlinkSync(opts.socketPath);
  } catch {
    // listen() reports what is wrong with the path
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new TierStackError(ErrorCode.Io, `cannot listen on ${opts.socketPath}: ${err.message}`, { cause: err })));
    server.listen(opts.socketPath, () => resolve());
  });
  chmodSync(opts.socketPath, 0o600); // only the owner (and root) may hand us descriptors

  return {
    socketPath: opts.socketPath,
    pending: () => pending,
    // Stops listening at once (the socket file goes with it); connections handed out stay theirs.
    close: async () => {
      if (closed) return;
      closed = true;
      server.close();
    },
  };
}

/**
 * Waits for ONE sender on `socketPath` and returns its checked handshake. The first connection
 * decides: a bad one rejects (TS_ERR_PROTOCOL / TS_ERR_TIMEOUT), as does no connection within
 * `timeoutMs` (TS_ERR_TIMEOUT; default: wait forever). The socket is closed either way.
 */
export async function acceptHandshake(
  socketPath: string,
  opts: { manifest: SnapshotManifest; timeoutMs?: number | undefined; logger?: Logger | undefined },
): Promise<Handshake> {
  let settle!: { resolve: (h: Handshake) => void; reject: (e: unknown) => void };
  const result = new Promise<Handshake>((resolve, reject) => (settle = { resolve, reject }));
  let done = false;
  const listener = await listenForHandshakes({
    socketPath,
    manifest: opts.manifest,
    ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    maxPending: 1,
    ...(opts.logger ? { logger: opts.logger } : {}),
    onHandshake: (h) => {
      if (done) {
        closeFd(h.fd);
        h.closeConnection();
        return;
      }
      done = true;
      settle.resolve(h);
    },
    onReject: (err) => {
      if (done || err.code === ErrorCode.Unavailable) return; // a second peer while the first is waiting
      done = true;
      settle.reject(err);
    },
  });
  const timer =
    opts.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          if (done || listener.pending() > 0) return; // a connection is being received: its own timeout decides
          done = true;
          settle.reject(new TierStackError(ErrorCode.Timeout, `no sender connected to ${socketPath} within ${opts.timeoutMs} ms`));
        }, opts.timeoutMs);
  try {
    return await result;
  } finally {
    if (timer) clearTimeout(timer);
    await listener.close();
  }
}

/**
 * Runs `adopt` for a handshake; if it fails, the descriptor and the connection are closed here
 * (an adopted descriptor belongs to whoever adopted it).
 */
export async function adoptHandshake<T>(h: Handshake, adopt: (target: { kind: 'adopt'; fd: number; pid: number; mappings: GuestMapping[] }) => Promise<T>): Promise<T> {
  try {
    return await adopt({ kind: 'adopt', fd: h.fd, pid: h.pid, mappings: h.mappings });
  } catch (err) {
    closeFd(h.fd);
    h.closeConnection();
    throw err;
  }
}
