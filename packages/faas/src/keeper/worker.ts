/**
 * The page-serving worker of a restore keeper (`tierstack-keeper`, native/keeper/): a process the
 * keeper starts, hands descriptors to and replaces when it dies. See README.md, "Restarts".
 *
 *   await runRestoreWorker({ snapshotId: 'fn', mode: 'firecracker', openStack: async (memfds) => stackOver(memfds) });
 *
 * Once promoted (START) it opens the stack over the keeper's memfds — the DRAM cache a dead
 * worker filled is still there, its set locks taken over by the CXL tier's crash recovery — reads
 * the manifest, and serves:
 * - Firecracker: every VM the keeper holds (UFFD): the handshake is checked as the handler checks
 *   it (a real, API-initialised userfaultfd; mappings that fit the snapshot), then the uffd is
 *   adopted by a restore of the hook. A VM whose previous worker died (`resumed`) is served
 *   without a prefetch or recording (pages already installed answer EEXIST; the recorded set of a
 *   restore cut in pieces would be partial). The keeper wakes the VM's blocked threads after
 *   ADOPTED, so faults the dead worker read and never answered are faulted again into this one.
 * - CRIU: every connection the keeper relays (CRIU): served by a page server that does not listen
 *   itself; after each fully written answer a checkpoint tells the keeper which requests it may
 *   forget.
 * When the keeper dies the worker keeps serving what it has (the VMs lose nothing) and exits once
 * every VM has ended; nobody restarts it then. SIGTERM (the keeper stopping): the final stats go to
 * the keeper (FINAL), restores are closed, the process exits.
 */
import { Socket } from 'node:net';
import { TierStackError, ErrorCode, silentLogger, type Logger, type PageStore } from '@tierstack/core';
import { closeFd } from '@tierstack/uffd';
import { SnapshotCatalog } from '../catalog.js';
import { createRestoreHook, type RestoreHandle, type RestoreHook, type RestoreHookOptions, type RestoreOptions, type RestoreStats } from '../restore-hook.js';
import { parseFirecrackerHandshake, type GuestMapping } from '../firecracker-handshake.js';
import { verifyUserfaultfd } from '../handshake.js';
import { serveCriuPages, type CriuPageServer, type CriuPageServerOptions } from '../criu-page-server.js';
import { KeeperChannel, keeperChannelFd } from './channel.js';

/** A memfd the keeper holds (the DRAM cache region): open `path` as a file-backed CxlTier region. */
export interface KeeperMemfd {
  index: number;
  name: string;
  size: number;
  /** The received descriptor (closed once openStack returns). */
  fd: number;
  /** `/proc/self/fd/<fd>`: opening it opens the same memfd. */
  path: string;
}

export interface RestoreWorkerOptions {
  snapshotId: string;
  mode: 'firecracker' | 'criu';
  /** The keeper channel (default: $TIERSTACK_KEEPER_CTL_FD). */
  ctlFd?: number;
  /** Opens the stack once this worker is promoted. The worker closes it when it exits. */
  openStack: (memfds: KeeperMemfd[]) => Promise<PageStore>;
  hook?: Omit<RestoreHookOptions, 'catalog' | 'logger'>;
  /** Options of every new restore (resumed ones never prefetch, record or copy eagerly). */
  restore?: RestoreOptions;
  /** Called with each VM's final stats when it ends (e.g. to report its fault trace). */
  onRestoreEnd?: (stats: RestoreStats, pid: number) => void;
  criu?: Omit<CriuPageServerOptions, 'snapshotId' | 'port' | 'host' | 'logger' | 'listen'>;
  /** The human-readable line the keeper prints after its first JSON line. */
  describe?: string;
  logger?: Logger;
  /** How often changed stats go to the keeper's status (default 1000 ms). */
  statsIntervalMs?: number;
  /** Called instead of process.exit when the worker is done (tests). Default: process.exit. */
  exit?: (code: number) => void;
}

/** What the worker reports (STATS, FINAL): the Firecracker handler's health plus stack levels. */
export interface RestoreWorkerStats {
  pid: number;
  snapshotId: string;
  mode: 'firecracker' | 'criu';
  instances: number;
  restores: number;
  resumedRestores: number;
  rejected: number;
  faultsServed: number;
  pagesInstalled: number;
  poisoned: number;
  /** Pages served per stack level, summed over this worker's restores (level 0: the DRAM cache). */
  pagesByLevel: number[];
  jsPathPages: number;
  criu?: ReturnType<CriuPageServer['stats']>;
  lastError: string | undefined;
  lastErrorCode: string | undefined;
}

/** Runs the worker until it is told to stop or the keeper and every VM are gone; resolves with the exit code. */
export async function runRestoreWorker(o: RestoreWorkerOptions): Promise<number> {
  const log = o.logger ?? silentLogger;
  const fd = o.ctlFd ?? keeperChannelFd();
  if (fd === undefined) throw new TierStackError(ErrorCode.BadArgument, 'not started by a keeper: no $TIERSTACK_KEEPER_CTL_FD');
  const ch = new KeeperChannel(fd);
  const exit = o.exit ?? ((code: number) => process.exit(code));
  const memfds: KeeperMemfd[] = [];
  let stack: PageStore | undefined;
  let hook: RestoreHook | undefined;
  let criu: CriuPageServer | undefined;
  const live = new Map<number, RestoreHandle>();
  const totals = { restores: 0, resumed: 0, rejected: 0, faults: 0, pages: 0, poisoned: 0, js: 0, levels: [] as number[] };
  let lastError: string | undefined;
  let lastErrorCode: string | undefined;
  let stopping = false;
  let idle: (() => void) | undefined;

  const stats = (): RestoreWorkerStats => {
    let { faults, pages, poisoned, js } = totals;
    const levels = [...totals.levels];
    for (const h of live.values()) {
      try {
        const s = h.stats();
        faults += s.faults;
        pages += s.pagesInstalled;
        poisoned += s.poisoned;
        js += s.jsPathPages;
        s.pagesByLevel.forEach((n, i) => (levels[i] = (levels[i] ?? 0) + n));
      } catch {
        // closing right now
      }
    }
    return {
      pid: process.pid,
      snapshotId: o.snapshotId,
      mode: o.mode,
      instances: live.size,
      restores: totals.restores,
      resumedRestores: totals.resumed,
      rejected: totals.rejected,
      faultsServed: faults,
      pagesInstalled: pages,
      poisoned,
      pagesByLevel: levels,
      jsPathPages: js,
      ...(criu ? { criu: criu.stats() } : {}),
      lastError,
      lastErrorCode,
    };
  };
  const noteError = (err: unknown): void => {
    lastError = (err as Error).message;
    lastErrorCode = (err as { code?: string }).code;
  };

  // The native receive does not hold the event loop open: this does, for as long as we run.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  let lastStats = '';
  const statsTimer = setInterval(() => {
    if (!stack) return;
    const s = JSON.stringify(stats());
    if (s !== lastStats) {
      lastStats = s;
      ch.send('STATS', s);
    }
  }, o.statsIntervalMs ?? 1000);
  statsTimer.unref();

  const shutdown = async (code: number): Promise<void> => {
    if (stopping) return;
    stopping = true;
    clearInterval(statsTimer);
    clearInterval(keepAlive);
    if (stack) ch.send('FINAL', stats());
    for (const h of [...live.values()]) await h.close().catch(() => undefined);
    live.clear();
    await criu?.close().catch(() => undefined);
    await stack?.close().catch(() => undefined);
    exit(code);
  };
  const onSigterm = (): void => void shutdown(0);
  process.on('SIGTERM', onSigterm);
  process.on('SIGINT', () => undefined); // the keeper decides when to stop (it sends SIGTERM)

  const start = async (): Promise<void> => {
    try {
      stack = await o.openStack(memfds);
    } finally {
      for (const m of memfds) closeFd(m.fd);
    }
    const catalog = new SnapshotCatalog(stack, { logger: log });
    await catalog.get(o.snapshotId); // fails early: unknown id, corrupt manifest
    hook = createRestoreHook(stack, { ...o.hook, catalog, logger: log });
    if (o.mode === 'criu') {
      criu = await serveCriuPages(catalog, { ...o.criu, snapshotId: o.snapshotId, port: 0, listen: false, logger: log });
    }
  };

  const serveVm = async (body: Record<string, unknown>, uffd: number): Promise<void> => {
    const id = Number(body['id']);
    const pid = Number(body['pid']);
    const resumed = Number(body['resumed'] ?? 0) > 0;
    let mappings: GuestMapping[];
    try {
      if (!hook) throw new TierStackError(ErrorCode.Closed, 'the worker is not serving yet');
      const m = await hook.catalog.get(o.snapshotId);
      verifyUserfaultfd(uffd);
      mappings = parseFirecrackerHandshake(Buffer.from(String(body['msg'] ?? ''), 'base64'), m);
    } catch (err) {
      closeFd(uffd);
      totals.rejected++;
      noteError(err);
      log.warn({ vm: id, peerPid: pid, code: (err as { code?: string }).code, reason: (err as Error).message }, 'restore worker: handshake rejected');
      ch.send('REJECT', `${id} ${(err as { code?: string }).code ?? 'TS_ERR_PROTOCOL'}: ${(err as Error).message}`);
      return;
    }
    const ro: RestoreOptions = resumed ? { ...o.restore, eager: false, prefetch: 'none', recordWorkingSet: false } : { ...o.restore };
    let handle: RestoreHandle;
    try {
      // Removed ranges go to the keeper as they are read; those an earlier worker reported come back.
      const removed = removedRanges(body['removed']);
      handle = await hook.restore(o.snapshotId, { kind: 'adopt', fd: uffd, pid, mappings, removed, removeSink: { fd: ch.fd, tag: id } }, ro);
    } catch (err) {
      closeFd(uffd);
      totals.rejected++;
      noteError(err);
      log.warn({ vm: id, peerPid: pid, err }, 'restore worker: cannot serve a VM');
      ch.send('REJECT', `${id} ${(err as { code?: string }).code ?? 'TS_ERR_IO'}: ${(err as Error).message}`);
      return;
    }
    totals.restores++;
    if (resumed) totals.resumed++;
    live.set(id, handle);
    ch.send('ADOPTED', `${id} ${mappings.map((g) => `${g.base}:${g.size}`).join(',')}`);
    log.info({ vm: id, peerPid: pid, regions: mappings.length, resumed }, resumed ? 'restore worker: resuming a VM whose worker died' : 'restore worker: serving a VM');
    void handle.adopted?.exited.then(async () => {
      if (!live.has(id)) return;
      const s = await handle.close().catch((err: unknown) => {
        noteError(err);
        return undefined;
      });
      if (s) {
        totals.faults += s.faults;
        totals.pages += s.pagesInstalled;
        totals.poisoned += s.poisoned;
        totals.js += s.jsPathPages;
        s.pagesByLevel.forEach((n, i) => (totals.levels[i] = (totals.levels[i] ?? 0) + n));
        try {
          o.onRestoreEnd?.(s, pid);
        } catch (err) {
          noteError(err);
        }
      }
      live.delete(id);
      ch.send('END', id);
      if (live.size === 0) idle?.();
    });
  };

  const serveConnection = (body: Record<string, unknown>, sockFd: number): void => {
    const id = Number(body['id']);
    if (!criu) {
      closeFd(sockFd);
      ch.send('CLOSED', id);
      return;
    }
    const layout = body['layout'] === 'v42' || body['layout'] === 'legacy' ? (body['layout'] as 'v42' | 'legacy') : undefined;
    const sock = new Socket({ fd: sockFd, readable: true, writable: true });
    // Ended on purpose: its write side finished (CLOSE answered) or it was destroyed (bad input,
    // idle). The keeper then closes the client after the last bytes (and its end of the pair).
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      ch.send('CLOSED', id);
    };
    sock.once('finish', end);
    sock.once('close', () => {
      end();
      if (criu && criu.stats().openConnections === 0) idle?.();
    });
    criu.adoptConnection(sock, {
      ...(layout ? { layout } : {}),
      onCheckpoint: (inBytes, outBytes, l) => ch.send('CKPT', `${id} ${inBytes} ${outBytes} ${l}`),
    });
  };

  ch.send('HELLO', process.pid);
  for (;;) {
    const m = await ch.receive();
    if (!m) break;
    switch (m.kind) {
      case 'MEMFD':
        memfds.push({ index: Number(m.body['index']), name: String(m.body['name']), size: Number(m.body['size']), fd: m.fd, path: `/proc/self/fd/${m.fd}` });
        ch.send('ACK');
        break;
      case 'START':
        closeFd(m.fd);
        ch.send('ACK');
        try {
          await start();
        } catch (err) {
          noteError(err);
          log.error({ err, code: (err as { code?: string }).code }, 'restore worker: cannot start serving');
          ch.send('ERROR', `cannot start serving: ${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
          await shutdown(1);
          return 1;
        }
        ch.send('READY', o.describe ?? `serving ${o.snapshotId}`);
        break;
      case 'UFFD':
        ch.send('ACK', Number(m.body['id']));
        void serveVm(m.body, m.fd).catch((err: unknown) => {
          noteError(err);
          log.error({ err }, 'restore worker: unexpected error');
        });
        break;
      case 'CRIU':
        ch.send('ACK', `C${Number(m.body['id'])}`);
        try {
          serveConnection(m.body, m.fd);
        } catch (err) {
          noteError(err);
          log.error({ err }, 'restore worker: cannot serve a CRIU connection');
        }
        break;
      default:
        if (m.fd >= 0) closeFd(m.fd);
        ch.send('ACK');
    }
  }
  // The keeper is gone. What this worker serves goes on (the VMs lose nothing), but nobody
  // restarts it any more, and no new VM can arrive (the listening socket died with the keeper).
  if (stopping) return 0;
  log.warn({ reason: ch.closedBecause }, 'restore worker: the keeper channel closed');
  const busy = (): boolean => live.size > 0 || (criu?.stats().openConnections ?? 0) > 0;
  if (stack && busy()) {
    log.error({ vms: live.size }, 'restore worker: the keeper is gone; serving what I have until it ends (no restarts from now on)');
    await new Promise<void>((resolve) => {
      idle = () => {
        if (!busy()) resolve();
      };
    });
  }
  process.off('SIGTERM', onSigterm);
  // The channel failing for another reason than the keeper hanging up (an addon that does not
  // load, say) is this worker's failure: say so in the exit code.
  const code = ch.closedBecause?.startsWith('TS_ERR_PROTOCOL') ? 0 : 1;
  await shutdown(code);
  return code;
}

/** The keeper's record of a VM's removed ranges: [[address, length], ...] (anything else: none). */
function removedRanges(v: unknown): Array<[number, number]> {
  if (!Array.isArray(v)) return [];
  const out: Array<[number, number]> = [];
  for (const r of v) {
    if (Array.isArray(r) && r.length === 2 && Number.isSafeInteger(r[0]) && Number.isSafeInteger(r[1]) && r[0] >= 0 && r[1] > 0) out.push([r[0], r[1]]);
  }
  return out;
}
