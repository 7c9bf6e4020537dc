/**
 * A Firecracker UFFD handler backed by the tier stack.
 *
 * Listens on a Unix socket; every connecting Firecracker (one per VM restore) sends one message —
 * the JSON array of guest memory mappings — with its userfaultfd attached (SCM_RIGHTS). The
 * mappings are checked against the snapshot's manifest, then the uffd is adopted by a restore of
 * the hook: faults are served from the stack (memory-file offset = addr - base + offset), REMOVE
 * events (balloon) make later faults in the range zero pages, and the recorded working set is
 * prefetched as for any restore. A bad handshake (garbage, no descriptor, mappings that do not
 * fit) is rejected on that connection with a logged reason; other VMs are unaffected.
 * A handler must not die on bad input (a VM hangs at its next fault if it does): every failure
 * here is caught per connection, and health() says what happened.
 */
import { silentLogger, type Logger, isTierStackError } from '@tierstack/core';
import { listenForUffd, closeFd, type UffdListener, type ReceivedUffd } from '@tierstack/uffd';
import type { RestoreHook, RestoreHandle, RestoreOptions, RestoreStats } from './restore-hook.js';
import { parseFirecrackerHandshake } from './firecracker-handshake.js';

export interface FirecrackerHandlerOptions {
  socketPath: string;
  snapshotId: string;
  /** Per-restore options (eager, prefetch mode, recording). */
  restore?: RestoreOptions;
  /** Called when a VM's restore starts being served (after an eager copy, if eager). */
  onRestore?: (handle: RestoreHandle, pid: number) => void;
  /** Called with a VM's final restore stats when it exits. */
  onRestoreEnd?: (stats: RestoreStats, pid: number) => void;
  logger?: Logger;
}

export interface FirecrackerHealth {
  socketPath: string;
  snapshotId: string;
  listening: boolean;
  /** VMs being served now / served in total. */
  instances: number;
  restores: number;
  rejected: number;
  faultsServed: number;
  pagesInstalled: number;
  poisoned: number;
  lastError: string | undefined;
}

export interface FirecrackerHandler {
  readonly socketPath: string;
  health(): FirecrackerHealth;
  /** The restores being served now (stats per VM). */
  instances(): RestoreHandle[];
  /** Stops accepting; closes every served VM's restore. */
  close(): Promise<void>;
}

export async function serveFirecracker(hook: RestoreHook, opts: FirecrackerHandlerOptions): Promise<FirecrackerHandler> {
  const log = opts.logger ?? silentLogger;
  // Fail early (unknown id, corrupt manifest) before binding the socket.
  const manifest = await hook.catalog.get(opts.snapshotId);
  const listener: UffdListener = listenForUffd(opts.socketPath);
  const live = new Set<RestoreHandle>();
  /** Restores whose VM exited and that are being closed (their stats still count as live). */
  const ending = new Set<RestoreHandle>();
  const totals = { restores: 0, rejected: 0, faults: 0, pages: 0, poisoned: 0 };
  let lastError: string | undefined;
  let closing = false;

  const reject = (got: ReceivedUffd, why: string): void => {
    totals.rejected++;
    lastError = why;
    log.warn({ snapshot: opts.snapshotId, peerPid: got.pid, reason: why }, 'firecracker handler: rejected a connection');
    if (got.fd >= 0) closeFd(got.fd);
    got.closeConnection();
  };

  const serve = async (got: ReceivedUffd): Promise<void> => {
    if (!(got.fd >= 0)) return reject(got, 'the handshake carried no userfaultfd (SCM_RIGHTS)');
    let mappings;
    try {
      mappings = parseFirecrackerHandshake(got.message, manifest);
    } catch (err) {
      return reject(got, (err as Error).message);
    }
    let handle: RestoreHandle;
    try {
      handle = await hook.restore(opts.snapshotId, { kind: 'adopt', fd: got.fd, pid: got.pid, mappings }, opts.restore ?? {});
    } catch (err) {
      return reject(got, `cannot serve: ${(err as Error).message}`);
    }
    totals.restores++;
    live.add(handle);
    log.info({ snapshot: opts.snapshotId, peerPid: got.pid, regions: mappings.length }, 'firecracker handler: serving a VM');
    opts.onRestore?.(handle, got.pid);
    // The VM's end (its process exits) ends the restore and saves its working set.
    void handle.adopted!.exited.then(async () => {
      if (!live.has(handle) || ending.has(handle)) return;
      ending.add(handle);
      const s = await handle.close().catch((err) => {
        lastError = (err as Error).message;
        return undefined;
      });
      if (s) {
        totals.faults += s.faults;
        totals.pages += s.pagesInstalled;
        totals.poisoned += s.poisoned;
        opts.onRestoreEnd?.(s, got.pid);
      }
      live.delete(handle);
      ending.delete(handle);
      got.closeConnection();
    });
  };

  const loop = (async () => {
    while (!closing) {
      let got: ReceivedUffd;
      try {
        got = await listener.accept({ timeoutMs: 250 });
      } catch (err) {
        if (closing) break;
        if (isTierStackError(err) && err.code === 'TS_ERR_TIMEOUT') continue;
        // A connection that failed before its message arrived (garbage, hang-up, no fd).
        totals.rejected++;
        lastError = (err as Error).message;
        log.warn({ err, snapshot: opts.snapshotId }, 'firecracker handler: a connection failed during the handshake');
        continue;
      }
      await serve(got).catch((err) => {
        lastError = (err as Error).message;
        log.error({ err }, 'firecracker handler: unexpected error');
      });
    }
  })();

  const health = (): FirecrackerHealth => {
    let faults = totals.faults;
    let pages = totals.pages;
    let poisoned = totals.poisoned;
    for (const h of live) {
      try {
        const s = h.stats();
        faults += s.faults;
        pages += s.pagesInstalled;
        poisoned += s.poisoned;
      } catch {
        // closing right now
      }
    }
    return {
      socketPath: opts.socketPath,
      snapshotId: opts.snapshotId,
      listening: !closing,
      instances: live.size,
      restores: totals.restores,
      rejected: totals.rejected,
      faultsServed: faults,
      pagesInstalled: pages,
      poisoned,
      lastError,
    };
  };

  return {
    socketPath: opts.socketPath,
    health,
    instances: () => [...live],
    async close() {
      closing = true;
      await loop;
      listener.close();
      for (const h of [...live]) {
        if (ending.has(h)) continue;
        ending.add(h);
        await h.close().catch(() => undefined);
        live.delete(h);
      }
    },
  };
}
