/**
 * The restore server's own figures as Prometheus series: faults served, pages installed, pages
 * per stack level, poisoned pages, restores. Read at scrape time from whatever holds them — the
 * in-process Firecracker handler, or (under the keeper) the worker's last report in the keeper's
 * status — because each restore's uffd engine is private to the restore hook.
 */
import type { Registry } from 'prom-client';
import { registerCollected } from '@tierstack/core';

export interface RestoreFigures {
  restores: number;
  instances: number;
  rejected: number;
  faultsServed: number;
  pagesInstalled: number;
  poisoned: number;
  jsPathPages: number;
  pagesByLevel: number[];
}

type Source = () => Promise<Partial<RestoreFigures> | undefined> | Partial<RestoreFigures> | undefined;

export function bindRestoreMetrics(registry: Registry, snapshotId: string, source: Source, prefix = 'tierstack_restore_'): void {
  // One read per scrape shared by every series (a keeper status query is a socket round trip).
  let pending: Promise<Partial<RestoreFigures> | undefined> | undefined;
  const figures = (): Promise<Partial<RestoreFigures> | undefined> => {
    pending ??= Promise.resolve()
      .then(source)
      .catch(() => undefined)
      .finally(() => setImmediate(() => (pending = undefined)));
    return pending;
  };
  const series = (kind: 'counter' | 'gauge', name: string, help: string, pick: (f: Partial<RestoreFigures>) => number | undefined): void => {
    registerCollected(registry, kind, {
      name: prefix + name,
      help,
      labelNames: ['snapshot'],
      collect: async () => {
        const f = await figures();
        const v = f ? pick(f) : undefined;
        return v === undefined ? [] : [[{ snapshot: snapshotId }, v]];
      },
    });
  };
  series('counter', 'faults_total', 'Missing-page faults served', (f) => f.faultsServed);
  series('counter', 'pages_installed_total', 'Pages installed (faults, fault-around, prefetch)', (f) => f.pagesInstalled);
  series('counter', 'poisoned_total', 'Pages that could not be produced (the toucher got SIGBUS)', (f) => f.poisoned);
  series('counter', 'js_path_pages_total', 'Pages served through the JS path', (f) => f.jsPathPages);
  series('counter', 'restores_total', 'Restores started', (f) => f.restores);
  series('counter', 'rejected_total', 'Handshakes rejected', (f) => f.rejected);
  series('gauge', 'instances', 'VMs or processes being served now', (f) => f.instances);
  registerCollected(registry, 'counter', {
    name: prefix + 'pages_by_level_total',
    help: 'Pages served per stack level (0: the top tier)',
    labelNames: ['snapshot', 'level'],
    collect: async () => ((await figures())?.pagesByLevel ?? []).map((n, level) => [{ snapshot: snapshotId, level: String(level) }, n]),
  });
}
