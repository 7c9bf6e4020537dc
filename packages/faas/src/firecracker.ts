/**
 * A Firecracker UFFD handler backed by the tier stack.
 *
 * Listens on a Unix socket; every connecting Firecracker (one per VM restore) sends one message —
 * the JSON array of guest memory mappings — with its userfaultfd attached (SCM_RIGHTS). Handshakes
 * are received concurrently (handshake.ts: a silent or slow peer holds only its own connection,
 * for at most `handshakeTimeoutMs`, and is logged when it times out); the descriptor must be a
 * userfaultfd that went through UFFDIO_API (a pipe, an eventfd or a file is refused, never
 * adopted) and the mappings are checked against the snapshot's manifest. Then the uffd is adopted
 * by a restore of the hook: faults are served from the stack (memory-file offset = addr - base +
 * offset), REMOVE events (balloon) make later faults in the range zero pages, and the recorded
 * working set is prefetched as for any restore. A bad handshake is rejected on that connection
 * with a logged reason; other VMs are unaffected.
 * A handler must not die on bad input (a VM hangs at its next fault if it does): every failure
 * here is caught per connection, and health() says what happened.
 *
 * This module needs only the shape of a restore hook (FirecrackerRestorer, which RestoreHook
 * has): it does not import restore-hook.ts, which offers `hook.serveFirecracker()` on top of it.
 */
import { silentLogger, type Logger } from '@tierstack/core';
import { closeFd } from '@tierstack/uffd';
import type { GuestMapping } from './firecracker-handshake.js';
import type { SnapshotManifest } from './manifest.js';
import { listenForHandshakes, adoptHandshake, type Handshake } from './handshake.js';

/** The counters of a restore the handler sums up (RestoreStats has them). */
export interface FirecrackerRestoreStats {
  faults: number;
  pagesInstalled: number;
  poisoned: number;
}

/** A restore serving one VM (RestoreHandle is one). */
export interface FirecrackerRestore<S extends FirecrackerRestoreStats = FirecrackerRestoreStats> {
  /** The adopted uffd: `exited` resolves when the VM's process is gone. */
  readonly adopted: { readonly exited: Promise<unknown> } | undefined;
  stats(): S;
  close(): Promise<S>;
}

/** What the handler needs of a restore hook (RestoreHook is one). */
export interface FirecrackerRestorer<O, H extends FirecrackerRestore> {
  readonly catalog: { get(id: string): Promise<SnapshotManifest> };
  restore(snapshotId: string, target: { kind: 'adopt'; fd: number; pid?: number; mappings: GuestMapping[] }, options: O): Promise<H>;
}

type StatsOf<H extends FirecrackerRestore> = ReturnType<H['stats']>;

export interface FirecrackerHandlerOptions<O = object, H extends FirecrackerRestore = FirecrackerRestore> {
  socketPath: string;
  snapshotId: string;
  /** Per-restore options (eager, prefetch mode, recording). */
  restore?: NoInfer<O>;
  /** Called when a VM's restore starts being served (after an eager copy, if eager). */
  onRestore?: (handle: NoInfer<H>, pid: number) => void;
  /** Called with a VM's final restore stats when it exits. */
  onRestoreEnd?: (stats: StatsOf<NoInfer<H>>, pid: number) => void;
  /** How long a connected peer has to send its handshake (default 5000 ms). */
  handshakeTimeoutMs?: number;
  /** Handshakes waiting at once (default 64); more connections are refused on arrival. */
  maxPendingHandshakes?: number;
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
  /** Connections whose handshake is being received now. */
  pendingHandshakes: number;
  faultsServed: number;
  pagesInstalled: number;
  poisoned: number;
  lastError: string | undefined;
  lastErrorCode: string | undefined;
}

export interface FirecrackerHandler<H extends FirecrackerRestore = FirecrackerRestore> {
  readonly socketPath: string;
  health(): FirecrackerHealth;
  /** The restores being served now (stats per VM). */
  instances(): H[];
  /** Stops accepting; closes every served VM's restore. */
  close(): Promise<void>;
}

export async function serveFirecracker<O, H extends FirecrackerRestore>(hook: FirecrackerRestorer<O, H>, opts: FirecrackerHandlerOptions<O, H>): Promise<FirecrackerHandler<H>> {
  const log = opts.logger ?? silentLogger;
  // Fail early (unknown id, corrupt manifest) before binding the socket.
  const manifest = await hook.catalog.get(opts.snapshotId);
  const live = new Set<H>();
  /** Restores whose VM exited and that are being closed (their stats still count as live). */
  const ending = new Set<H>();
  const totals = { restores: 0, rejected: 0, faults: 0, pages: 0, poisoned: 0 };
  let lastError: string | undefined;
  let lastErrorCode: string | undefined;
  let closing = false;

  const serve = async (h: Handshake): Promise<void> => {
    if (closing) {
      h.closeConnection();
      closeFd(h.fd);
      return;
    }
    let handle: H;
    try {
      handle = await adoptHandshake(h, (target) => hook.restore(opts.snapshotId, target, (opts.restore ?? {}) as O));
    } catch (err) {
      totals.rejected++;
      lastError = `cannot serve: ${(err as Error).message}`;
      lastErrorCode = (err as { code?: string }).code;
      log.warn({ snapshot: opts.snapshotId, peerPid: h.pid, code: lastErrorCode, reason: lastError }, 'firecracker handler: rejected a connection');
      return;
    }
    totals.restores++;
    live.add(handle);
    log.info({ snapshot: opts.snapshotId, peerPid: h.pid, regions: h.mappings.length }, 'firecracker handler: serving a VM');
    opts.onRestore?.(handle, h.pid);
    // The VM's end (its process exits) ends the restore and saves its working set.
    void handle.adopted?.exited.then(async () => {
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
        opts.onRestoreEnd?.(s as StatsOf<H>, h.pid);
      }
      live.delete(handle);
      ending.delete(handle);
      h.closeConnection();
    });
  };

  const listener = await listenForHandshakes({
    socketPath: opts.socketPath,
    manifest,
    ...(opts.handshakeTimeoutMs !== undefined ? { timeoutMs: opts.handshakeTimeoutMs } : {}),
    ...(opts.maxPendingHandshakes !== undefined ? { maxPending: opts.maxPendingHandshakes } : {}),
    logger: log,
    onHandshake: (h) => {
      void serve(h).catch((err) => {
        lastError = (err as Error).message;
        log.error({ err }, 'firecracker handler: unexpected error');
      });
    },
    onReject: (err) => {
      // Already logged by the listener (with the peer and the reason).
      totals.rejected++;
      lastError = err.message;
      lastErrorCode = err.code;
    },
  });

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
      pendingHandshakes: listener.pending(),
      faultsServed: faults,
      pagesInstalled: pages,
      poisoned,
      lastError,
      lastErrorCode,
    };
  };

  return {
    socketPath: opts.socketPath,
    health,
    instances: () => [...live],
    async close() {
      closing = true;
      await listener.close();
      for (const h of [...live]) {
        if (ending.has(h)) continue;
        ending.add(h);
        await h.close().catch(() => undefined);
        live.delete(h);
      }
    },
  };
}
