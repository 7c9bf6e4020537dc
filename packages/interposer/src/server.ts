/**
 * RunServer: the server side of `tierstack run`. Programs that preload libtierstack_run.so
 * connect to its Unix socket at their first big allocation and hand over their arena (a memfd
 * mapped MAP_SHARED) and a userfaultfd; the server adopts the arena as a shared managed region of
 * a uffd engine (see @tierstack/uffd adoptShared) whose fault threads serve it from the tier stack
 * under the program's residency budget. JavaScript only handles the control messages (HELLO, FREE,
 * FORK) and session ends; no page fault goes through it.
 *
 * Sessions end when the program's connection closes (exit, crash, kill -9, exec) or its process
 * exits: the arena's pages are then removed from every tier and the namespace is dropped from
 * tiers that can (FileTier deletes its directory), so nothing is left behind.
 */
import { EventEmitter } from 'node:events';
import { Socket } from 'node:net';
import { fstatSync, mkdtempSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ErrorCode,
  TierStack,
  TierStackError,
  badArgument,
  canRemoveNamespace,
  silentLogger,
  type Logger,
  type MetricsRegistry,
  type PageStore,
} from '@tierstack/core';
import { createUffdEngine, sharedRegionsSupported, type RegionStats, type SharedAdoption, type UffdEngine } from '@tierstack/uffd';
import { interposerAddon, type CowStoreStats } from './native.js';
import { Op, TSR_MSG_SIZE, decode, encode, type Msg } from './protocol.js';
import { RunStore } from './run-store.js';

export const DEFAULT_MIN_SIZE = 16 * 2 ** 20;
export const DEFAULT_FAULT_AROUND = 16;
const FORK_TOKEN_TTL_MS = 30_000;
// TS_E_* statuses sent back to the library.
const TS_E_BAD_ARGUMENT = -3;
const TS_E_NOT_FOUND = -4;
const TS_E_UNSUPPORTED = -10;
const TS_E_IO = -9;

export interface RunServerOptions {
  /** The tier stack big allocations go to. The server does not close it. */
  stack: PageStore;
  /** Where to listen (default: a socket in a new private directory under the temp dir). */
  socketPath?: string;
  /** Resident bytes allowed per program when the program does not ask (TIERSTACK_RUN_BUDGET);
   *  default: no budget (the whole arena may stay resident). */
  defaultBudget?: number;
  /** Pages installed per missing fault (aligned block, 1..64; default 16). */
  faultAround?: number;
  /** Native fault threads (default 2). */
  faultThreads?: number;
  /** Pin the fault threads (sched_setaffinity). */
  cpus?: number[];
  /** Namespace prefix of the arenas' pages (default "run"). */
  namespacePrefix?: string;
  logger?: Logger;
  registry?: MetricsRegistry;
}

export interface SessionInfo {
  id: number;
  pid: number;
  namespace: string;
  /** The arena in the program: base address and size. */
  base: bigint;
  size: number;
  budgetBytes: number;
  /** The session of the parent process when this one is a fork child. */
  parent?: number;
  residentPages: number;
  frees: number;
  forks: number;
  region: RegionStats;
}

export interface SessionEnd {
  id: number;
  pid: number;
  namespace: string;
  /** Pages the session had stored in the stack, all removed now. */
  releasedPages: number;
  cause: string;
  error?: Error;
}

interface ForkSnapshot {
  parent: Session;
  childNs: string;
  bitmap: BigUint64Array;
  timer: NodeJS.Timeout;
}

class Session {
  socket: Socket | undefined;
  adoption: SharedAdoption | undefined;
  ended = false;
  ending: Promise<void> | undefined;
  frees = 0;
  forks = 0;
  queue: Promise<void> = Promise.resolve();
  buffered: Buffer = Buffer.alloc(0);
  /** Inode of the arena's memfd: how /proc/<pid>/maps shows that the arena is still mapped. */
  memfdIno = 0;
  constructor(
    readonly id: number,
    readonly pid: number,
    readonly namespace: string,
    readonly base: bigint,
    readonly size: number,
    readonly budgetBytes: number,
    readonly parent: number | undefined,
  ) {}
}

export class RunServer extends EventEmitter {
  readonly socketPath: string;
  readonly pageSize: number;
  readonly store: RunStore;
  readonly engine: UffdEngine;
  readonly #stack: PageStore;
  readonly #log: Logger;
  readonly #listenFd: number;
  readonly #ownDir: string | undefined;
  readonly #defaultBudget: number;
  readonly #faultAround: number;
  readonly #prefix: string;
  readonly #sessions = new Map<number, Session>();
  readonly #forks = new Map<bigint, ForkSnapshot>();
  readonly #ended: SessionEnd[] = [];
  #nextSession = 1;
  #nextToken = 1n;
  #closed = false;
  #accepting: Promise<void>;
  #idleWaiters: Array<() => void> = [];

  private constructor(options: RunServerOptions, socketPath: string, ownDir: string | undefined) {
    super();
    this.#stack = options.stack;
    this.pageSize = options.stack.pageSize;
    this.#log = options.logger ?? silentLogger;
    this.#defaultBudget = options.defaultBudget ?? 0;
    this.#faultAround = options.faultAround ?? DEFAULT_FAULT_AROUND;
    this.#prefix = options.namespacePrefix ?? 'run';
    this.socketPath = socketPath;
    this.#ownDir = ownDir;
    this.store = new RunStore(options.stack, options.logger ? { logger: options.logger } : {});
    try {
      this.engine = createUffdEngine({
        stack: this.store,
        faultThreads: options.faultThreads ?? 2,
        ...(options.cpus ? { cpus: options.cpus } : {}),
        ...(options.registry ? { registry: options.registry } : {}),
        logger: this.#log,
      });
    } catch (err) {
      void this.store.close();
      throw err;
    }
    try {
      this.#listenFd = interposerAddon().listenUnix(socketPath);
    } catch (err) {
      void this.engine.close();
      void this.store.close();
      throw err;
    }
    this.#accepting = this.#acceptLoop();
  }

  /** Starts a server. Throws TS_ERR_UNSUPPORTED when the kernel cannot serve shared regions. */
  static async start(options: RunServerOptions): Promise<RunServer> {
    if (!options || typeof options.stack !== 'object') throw badArgument('RunServer.start needs { stack }');
    if (options.stack.pageSize !== 4096) throw new TierStackError(ErrorCode.PageSize, 'tierstack run needs a stack of 4096-byte pages');
    const fa = options.faultAround ?? DEFAULT_FAULT_AROUND;
    if (!Number.isInteger(fa) || fa < 1 || fa > 64) throw badArgument('faultAround must be in 1..64');
    if (options.defaultBudget !== undefined && (!Number.isSafeInteger(options.defaultBudget) || options.defaultBudget < 0)) {
      throw badArgument('defaultBudget must be a non-negative number of bytes');
    }
    const support = sharedRegionsSupported();
    if (!support.supported) throw new TierStackError(ErrorCode.Unsupported, `tierstack run cannot work here: ${support.reason ?? 'no shared-memory userfaultfd'}`);
    let ownDir: string | undefined;
    let socketPath = options.socketPath;
    if (socketPath === undefined) {
      ownDir = mkdtempSync(join(tmpdir(), 'tierstack-run-'));
      socketPath = join(ownDir, 'run.sock');
    }
    return new RunServer(options, socketPath, ownDir);
  }

  /** Sessions (programs connected now). */
  sessions(): SessionInfo[] {
    return [...this.#sessions.values()].filter((s) => s.adoption && !s.ended).map((s) => this.#info(s));
  }

  /** Sessions that ended, with what they released. */
  endedSessions(): SessionEnd[] {
    return [...this.#ended];
  }

  /** The copy-on-write store's counters (pages found by native tiers vs the JS path, fork copies). */
  storeStats(): CowStoreStats {
    return this.store.cowStats();
  }

  /** Resolves when no session is open (after at least one ended, or right away if none ever began). */
  idle(): Promise<void> {
    if (this.#sessions.size === 0) return Promise.resolve();
    return new Promise((r) => this.#idleWaiters.push(r));
  }

  /** Ends every session (releasing its pages), stops listening and closes the engine. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    interposerAddon().shutdownFd(this.#listenFd);
    await this.#accepting.catch(() => {});
    interposerAddon().closeFd(this.#listenFd);
    await Promise.allSettled([...this.#sessions.values()].map((s) => this.#endSession(s, 'server closing')));
    for (const f of this.#forks.values()) clearTimeout(f.timer);
    await Promise.allSettled([...this.#forks.keys()].map((t) => this.#dropFork(t)));
    await this.engine.close();
    await this.store.close();
    rmSync(this.socketPath, { force: true });
    if (this.#ownDir) rmSync(this.#ownDir, { recursive: true, force: true });
  }

  #info(s: Session): SessionInfo {
    const a = s.adoption!;
    return {
      id: s.id,
      pid: s.pid,
      namespace: s.namespace,
      base: s.base,
      size: s.size,
      budgetBytes: s.budgetBytes,
      ...(s.parent !== undefined ? { parent: s.parent } : {}),
      residentPages: a.closed ? 0 : a.residentPages(),
      frees: s.frees,
      forks: s.forks,
      region: a.region.stats(),
    };
  }

  async #acceptLoop(): Promise<void> {
    const addon = interposerAddon();
    while (!this.#closed) {
      let got;
      try {
        got = await addon.acceptHello(this.#listenFd, -1, TSR_MSG_SIZE);
      } catch (err) {
        if (this.#closed) return;
        const conn = (err as { conn?: number }).conn;
        if (typeof conn === 'number' && conn >= 0) addon.closeFd(conn);
        this.#log.warn({ err }, 'tierstack run: a client failed to connect');
        continue;
      }
      try {
        await this.#hello(got.conn, got.fds, got.message, got.pid);
      } catch (err) {
        this.#log.warn({ err, pid: got.pid }, 'tierstack run: a client was refused');
      }
    }
  }

  #reply(conn: number | Socket, m: Partial<Msg> & { op: number }): void {
    const buf = encode(m);
    if (typeof conn === 'number') {
      // The HELLO answer goes out before the connection becomes a net.Socket.
      try {
        writeSync(conn, buf);
      } catch {
        /* the client is gone: its session ends on its own */
      }
    } else if (!conn.destroyed) {
      conn.write(buf);
    }
  }

  async #hello(conn: number, fds: number[], message: Buffer, pid: number): Promise<void> {
    const addon = interposerAddon();
    const refuse = (status: number, why: string): void => {
      this.#log.warn({ pid, why }, 'tierstack run: HELLO refused');
      this.#reply(conn, { op: Op.Ready, status });
      for (const fd of fds) addon.closeFd(fd);
      addon.closeFd(conn);
    };
    const m = decode(message);
    if (!m || m.op !== Op.Hello) return refuse(TS_E_BAD_ARGUMENT, 'not a HELLO');
    if (fds.length !== 2) return refuse(TS_E_BAD_ARGUMENT, `HELLO carries ${fds.length} descriptors, not 2`);
    if (this.#closed) return refuse(TS_E_IO, 'server closing');
    const [uffd, memfd] = fds as [number, number];
    const base = m.a;
    const size = Number(m.b);
    const ps = this.pageSize;
    if (base === 0n || base % BigInt(ps) !== 0n || !Number.isSafeInteger(size) || size <= 0 || size % ps !== 0) {
      return refuse(TS_E_BAD_ARGUMENT, 'bad arena geometry');
    }
    const budget = Number(m.c) > 0 ? Number(m.c) : this.#defaultBudget > 0 ? this.#defaultBudget : size;
    const budgetPages = Math.max(64, Math.floor(Math.min(budget, size) / ps));

    // A fork child: its namespace and snapshot were made when the parent asked (FORK).
    let namespace: string;
    let fork: ForkSnapshot | undefined;
    if (m.d !== 0n) {
      fork = this.#forks.get(m.d);
      if (!fork) return refuse(TS_E_NOT_FOUND, 'unknown or expired fork token');
      this.#forks.delete(m.d);
      clearTimeout(fork.timer);
      namespace = fork.childNs;
    } else {
      namespace = this.#newNamespace(pid);
    }
    const id = this.#nextSession++;
    const session = new Session(id, pid, namespace, base, size, budgetPages * ps, fork?.parent.id);
    this.#sessions.set(id, session);
    try {
      session.memfdIno = fstatSync(memfd).ino;
      this.store.registerNamespace(namespace);
      const adoption = this.engine.adoptShared({
        uffd,
        memfd,
        pid,
        region: { base, size, namespace, faultAround: this.#faultAround, name: `${namespace} (pid ${pid})` },
        budgetPages,
      });
      session.adoption = adoption;
      if (fork) adoption.markStored(fork.bitmap);
      adoption.once('exit', () => void this.#endSession(session, 'the program exited'));
    } catch (err) {
      this.#sessions.delete(id);
      this.#reply(conn, { op: Op.Ready, status: (err as TierStackError).code === ErrorCode.Unsupported ? TS_E_UNSUPPORTED : TS_E_IO });
      addon.closeFd(conn);
      if (fork) await this.#discardChildNamespace(fork.childNs, fork.bitmap).catch(() => {});
      this.#notifyIdle();
      throw err;
    }
    this.#reply(conn, { op: Op.Ready, status: 0, a: BigInt(ps) });
    const socket = new Socket({ fd: conn, readable: true, writable: true });
    session.socket = socket;
    socket.on('data', (d: Buffer) => this.#onData(session, d));
    socket.on('error', () => {});
    socket.on('close', () => this.#connectionClosed(session));
    this.#log.info({ pid, namespace, size, budgetBytes: budgetPages * ps, fork: fork !== undefined }, 'tierstack run: session started');
    this.emit('session', this.#info(session));
  }

  /**
   * The connection ends at exit, kill, exec (it is close-on-exec) — or when a program closes every
   * descriptor (daemonizing) and goes on using its arena. The arena is released only when it is
   * really gone: otherwise the session goes on until the process exits (frees can no longer be
   * reported; their pages are released then).
   */
  #connectionClosed(s: Session): void {
    if (s.ended) return;
    if (this.#arenaStillMapped(s)) {
      this.#log.warn({ pid: s.pid, namespace: s.namespace }, 'tierstack run: the program closed its connection but still maps its arena; serving it until it exits');
      return;
    }
    void this.#endSession(s, 'the connection closed');
  }

  #arenaStillMapped(s: Session): boolean {
    let maps: string;
    try {
      maps = readFileSync(`/proc/${s.pid}/maps`, 'utf8');
    } catch {
      return false; // gone
    }
    const start = s.base.toString(16);
    return maps.split('\n').some((l) => l.startsWith(`${start}-`) && l.includes('tierstack-run') && l.split(/\s+/)[4] === String(s.memfdIno));
  }

  #newNamespace(pid: number): string {
    return `${this.#prefix}/${process.pid}-${pid}-${this.#nextSession}-${Date.now().toString(36)}`;
  }

  #onData(s: Session, d: Buffer): void {
    s.buffered = s.buffered.length ? Buffer.concat([s.buffered, d]) : d;
    while (s.buffered.length >= TSR_MSG_SIZE) {
      const raw = s.buffered.subarray(0, TSR_MSG_SIZE);
      s.buffered = s.buffered.subarray(TSR_MSG_SIZE);
      const m = decode(raw);
      // Requests are answered one at a time, in order.
      s.queue = s.queue.then(() => this.#request(s, m)).catch((err) => this.#log.warn({ err, pid: s.pid }, 'tierstack run: request failed'));
    }
  }

  async #request(s: Session, m: Msg | undefined): Promise<void> {
    const a = s.adoption;
    if (!m || !a || s.ended) {
      if (s.socket && !m) s.socket.destroy(); // a client speaking garbage: end it
      return;
    }
    switch (m.op) {
      case Op.Free: {
        let status = 0;
        try {
          await a.forget(Number(m.a), Number(m.b));
          s.frees++;
        } catch (err) {
          status = TS_E_IO;
          this.#log.warn({ err, pid: s.pid }, 'tierstack run: forgetting freed pages failed');
        }
        this.#reply(s.socket!, { op: Op.Ack, status });
        return;
      }
      case Op.Fork: {
        try {
          const token = await this.#fork(s);
          s.forks++;
          this.#reply(s.socket!, { op: Op.Ack, status: 0, a: token });
        } catch (err) {
          this.#log.warn({ err, pid: s.pid }, 'tierstack run: fork snapshot failed');
          this.#reply(s.socket!, { op: Op.Ack, status: TS_E_IO });
        }
        return;
      }
      default:
        this.#reply(s.socket!, { op: Op.Ack, status: TS_E_BAD_ARGUMENT });
    }
  }

  /** FORK: the parent's dirty pages go to the stack, then the child's namespace is layered over the parent's. */
  async #fork(s: Session): Promise<bigint> {
    const a = s.adoption!;
    await a.writeBackDirty();
    const bitmap = await a.storedBitmap();
    const childNs = `${s.namespace}.f${s.forks + 1}-${Date.now().toString(36)}`;
    await this.store.addLayer(childNs, s.namespace, bitmap);
    const token = this.#nextToken++;
    // The child says HELLO right after fork(); a token nobody claims (fork failed, the child died
    // at once) is dropped with whatever was copied aside for it.
    const timer = setTimeout(() => void this.#dropFork(token), FORK_TOKEN_TTL_MS);
    timer.unref();
    this.#forks.set(token, { parent: s, childNs, bitmap, timer });
    return token;
  }

  async #dropFork(token: bigint): Promise<void> {
    const f = this.#forks.get(token);
    if (!f) return;
    this.#forks.delete(token);
    clearTimeout(f.timer);
    await this.#discardChildNamespace(f.childNs, f.bitmap);
  }

  /** A child namespace nobody uses: pages copied aside for it are removed, the layer dropped. */
  async #discardChildNamespace(ns: string, bitmap: BigUint64Array): Promise<void> {
    await this.store.dropLayer(ns);
    const pages: number[] = [];
    for (let w = 0; w < bitmap.length; w++) {
      let bits = bitmap[w]!;
      for (let b = 0; bits !== 0n; b++, bits >>= 1n) if (bits & 1n) pages.push(w * 64 + b);
    }
    for (let i = 0; i < pages.length; i += 1024) await this.store.remove(ns, pages.slice(i, i + 1024));
    await this.#removeNamespace(ns);
  }

  async #removeNamespace(ns: string): Promise<void> {
    const tiers = this.#stack instanceof TierStack ? this.#stack.tiers : [this.#stack];
    await Promise.all(
      tiers.map(async (t) => {
        if (canRemoveNamespace(t)) await t.removeNamespace(ns).catch((err) => this.#log.warn({ err, ns, tier: t.name }, 'tierstack run: removing a namespace failed'));
      }),
    );
  }

  #endSession(s: Session, cause: string): Promise<void> {
    s.ending ??= (async () => {
      s.ended = true;
      await s.queue.catch(() => {});
      s.socket?.destroy();
      let releasedPages = 0;
      let error: Error | undefined;
      const a = s.adoption;
      if (a) {
        try {
          await a.close(); // stops serving it, then removes every page it stored from the stack
          releasedPages = await a.released;
        } catch (err) {
          error = err as Error;
        }
      }
      // Forks of this session that no child claimed yet.
      for (const [token, f] of [...this.#forks]) if (f.parent === s) await this.#dropFork(token).catch(() => {});
      try {
        await this.store.dropLayer(s.namespace);
        await this.#removeNamespace(s.namespace);
      } catch (err) {
        error ??= err as Error;
      }
      this.#sessions.delete(s.id);
      const end: SessionEnd = { id: s.id, pid: s.pid, namespace: s.namespace, releasedPages, cause, ...(error ? { error } : {}) };
      this.#ended.push(end);
      if (this.#ended.length > 1000) this.#ended.shift();
      this.#log.info({ pid: s.pid, namespace: s.namespace, releasedPages, cause, err: error }, 'tierstack run: session ended');
      this.emit('end', end);
      this.#notifyIdle();
    })();
    return s.ending;
  }

  #notifyIdle(): void {
    if (this.#sessions.size !== 0) return;
    const w = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const r of w) r();
  }
}
