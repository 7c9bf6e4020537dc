/**
 * `tierstack restore --firecracker <socket> | --criu-port <port> <id>`: serves a snapshot from
 * the stack until interrupted — as a Firecracker UFFD handler or as a CRIU lazy-pages page server.
 *
 * By default the serving runs under a keeper (`tierstack-keeper`, @tierstack/faas): the keeper
 * binds the socket or port, holds every VM's uffd and handshake, every CRIU connection and the
 * DRAM cache's memfd, and runs the page-serving worker (`tierstack restore-worker`, the same
 * flags) — a worker that dies is replaced and resumes where it was, the VMs see a pause. The first
 * stdout line is JSON naming `keeperPid` and `workerPid` (another line each time a worker is
 * replaced), then the human-readable line; the status socket (`--status-socket`, default
 * `<socket>.status`) answers one JSON line. `--no-keeper` serves in this process as before (a
 * crash then leaves its VMs hanging).
 */
import type { Command } from 'commander';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { appendFileSync } from 'node:fs';
import { bindStackMetrics, createTierStack, formatTraceSummary, summarizeTrace, type Logger, type PageStore } from '@tierstack/core';
import {
  SnapshotCatalog,
  serveCriuPages,
  createRestoreHook,
  serveFirecracker,
  runRestoreWorker,
  spawnKeeper,
  CRIU_SERVER_DEFAULTS,
  type CriuHeaderLayout,
  type KeeperMemfd,
  type KeeperOptions,
  type RestoreStats,
  queryKeeperStatus,
} from '@tierstack/faas';
import { addStackOptions, openStack, type StackCliOptions } from '../stack-options.js';
import { addMetricsOptions, startMetrics, type MetricsCliOptions } from '../metrics-options.js';
import { bindRestoreMetrics, type RestoreFigures } from '../restore-metrics.js';

interface RestoreCliOptions extends StackCliOptions, MetricsCliOptions {
  firecracker?: string;
  criuPort?: number;
  host: string;
  criuLayout: CriuHeaderLayout;
  criuMaxConnections: number;
  criuIdleTimeoutMs: number;
  criuConnBufferMib: number;
  criuTotalBufferMib: number;
  prefetch: 'latest' | 'union' | 'none';
  eager?: boolean;
  record: boolean;
  /** --trace [file]: true without a file. */
  trace?: string | true;
  keeper: boolean;
  standby: boolean;
  statusSocket?: string;
  stateDir?: string;
}

/** Resolves on SIGINT/SIGTERM. */
const untilSignal = (): Promise<void> =>
  new Promise((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });

function restoreOptions(cmd: Command): Command {
  return addStackOptions(
    addMetricsOptions(cmd)
      .argument('<id>', 'snapshot id')
      .option('--firecracker <socket>', 'listen on this Unix socket as a Firecracker UFFD handler')
      .option('--criu-port <port>', 'serve CRIU lazy-pages GETs on this TCP port', Number)
      .option('--host <addr>', 'CRIU: address to bind', '127.0.0.1')
      .option('--criu-layout <layout>', 'CRIU header layout: v42 (CRIU >= 4.2), legacy (3.x-4.1) or auto', 'auto')
      .option('--criu-max-connections <n>', 'CRIU: connections served at once; more are closed on arrival', Number, CRIU_SERVER_DEFAULTS.maxConnections)
      .option('--criu-idle-timeout-ms <ms>', 'CRIU: close a connection silent (or not reading its replies) this long; 0: never', Number, CRIU_SERVER_DEFAULTS.idleTimeoutMs)
      .option('--criu-conn-buffer-mib <n>', 'CRIU: reply bytes one connection may hold in memory, MiB', Number, CRIU_SERVER_DEFAULTS.maxConnectionBytes / 2 ** 20)
      .option('--criu-total-buffer-mib <n>', 'CRIU: reply bytes all connections together may hold in memory, MiB', Number, CRIU_SERVER_DEFAULTS.maxTotalBytes / 2 ** 20)
      .option('--prefetch <mode>', 'Firecracker: prefetch the latest recorded working set, the union of the kept ones, or none', 'latest')
      .option('--eager', 'Firecracker: install every page before the VM runs')
      .option('--no-record', 'Firecracker: do not record working sets')
      .option('--trace [file]', 'Firecracker: trace every fault (latency, tier) of each VM; a summary is printed when the VM ends, the records appended to <file> as JSON lines')
      .option('--no-keeper', 'serve in this process, without the keeper (if it dies, its VMs hang)')
      .option('--no-standby', 'keeper: no warm spare worker (a replacement starts cold)')
      .option('--status-socket <path>', 'keeper: Unix socket answering one JSON status line (default <socket>.status)')
      .option('--state-dir <dir>', 'keeper (Firecracker): where VMs are recorded so that a new keeper takes them back if this one dies (default <socket>.state)'),
  );
}

function criuServerOptions(o: RestoreCliOptions) {
  return {
    headerLayout: o.criuLayout,
    maxConnections: o.criuMaxConnections,
    idleTimeoutMs: o.criuIdleTimeoutMs,
    maxConnectionBytes: Math.round(o.criuConnBufferMib * 2 ** 20),
    maxTotalBytes: Math.round(o.criuTotalBufferMib * 2 ** 20),
  };
}

/** --trace: the summary of one VM's faults (the blktrace-style view), and its records as JSON lines. */
function reportTrace(s: RestoreStats, pid: number, file: string | true | undefined, out: (l: string) => void): void {
  if (!s.trace) return;
  out(`fault trace of VM ${pid} (${s.trace.records.length} records${s.trace.lost ? `, ${s.trace.lost} lost` : ''}):`);
  out(formatTraceSummary(summarizeTrace(s.trace.records)));
  if (typeof file === 'string') appendFileSync(file, s.trace.records.map((r) => JSON.stringify({ vm: pid, ...r })).join('\n') + '\n');
}

function checkFlags(o: RestoreCliOptions): void {
  if ((o.firecracker === undefined) === (o.criuPort === undefined)) throw new Error('give exactly one of --firecracker <socket> or --criu-port <port>');
  if (!['latest', 'union', 'none'].includes(o.prefetch)) throw new Error('--prefetch must be latest, union or none');
}

/** The memfds a keeper creates for the worker's caches: the native DRAM cache, a memfd CXL tier. */
function keeperMemfds(o: RestoreCliOptions): KeeperOptions['memfds'] {
  const out: NonNullable<KeeperOptions['memfds']> = [];
  if (o.memoryMib > 0 && o.dram !== 'js') out.push({ name: 'dram', bytes: o.memoryMib * 2 ** 20 });
  if (o.cxl === 'memfd') out.push({ name: 'cxl', bytes: (o.cxlMib ?? 256) * 2 ** 20 });
  return out;
}

/**
 * The worker's stack: what the flags describe, with the caches that would be private memfds
 * opened over the keeper's memfds instead (so a replacement worker finds them filled).
 */
async function openWorkerStack(o: RestoreCliOptions, memfds: KeeperMemfd[], logger: Logger): Promise<PageStore> {
  const dram = memfds.find((m) => m.name === 'dram');
  const cxlMemfd = memfds.find((m) => m.name === 'cxl');
  if (!dram && !cxlMemfd) return openStack(o, { logger });
  const { CxlTier } = await import('@tierstack/cxl');
  const only = (x: Partial<RestoreCliOptions>): RestoreCliOptions => ({ ...o, cxl: undefined, memoryMib: 0, fileTier: false, redis: undefined, memd: undefined, ...x });
  const tiers: PageStore[] = [];
  try {
    // CXL on top: over the keeper's memfd, or the file / device the flag names (shared anyway).
    if (cxlMemfd) tiers.push(await CxlTier.open({ backing: { kind: 'file', path: cxlMemfd.path } }));
    else if (o.cxl) tiers.push(...(await openStack(only({ cxl: o.cxl }), { logger })).tiers);
    // The DRAM cache: over the keeper's memfd (a --dram js MemoryTier has none: it starts empty).
    if (dram) tiers.push(await CxlTier.open({ backing: { kind: 'file', path: dram.path }, name: 'dram' }));
    else if (o.memoryMib > 0) tiers.push(...(await openStack(only({ memoryMib: o.memoryMib }), { logger })).tiers);
    // Below the caches, as the flags describe (the stack wrapper returned holds nothing of its own).
    if (o.fileTier !== false || o.redis || o.memd) tiers.push(...(await openStack({ ...o, cxl: undefined, memoryMib: 0 }, { logger })).tiers);
    return createTierStack({ tiers, logger });
  } catch (err) {
    await Promise.allSettled(tiers.map((t) => t.close()));
    throw err;
  }
}

export function registerRestoreCommand(program: Command, out: (l: string) => void = (l) => console.log(l)): void {
  restoreOptions(program.command('restore').description('serve a snapshot to a restoring VM or process: Firecracker UFFD handler or CRIU page server')).action(
    async (id: string, o: RestoreCliOptions) => {
      checkFlags(o);
      const logger = pino({ level: process.env['TIERSTACK_LOG'] ?? 'info' }, pino.destination(2));
      if (o.keeper) return runUnderKeeper(id, o, logger);
      const stack = await openStack(o, { logger });
      const catalog = new SnapshotCatalog(stack, { logger });
      // What the metrics read: the server this process runs (set below, once it is up).
      let figures: () => Partial<RestoreFigures> | undefined = () => undefined;
      const metrics = await startMetrics(o, (registry) => {
        bindStackMetrics(registry, stack);
        bindRestoreMetrics(registry, id, () => figures());
      }).catch(async (err: unknown) => {
        await stack.close();
        throw err;
      });
      if (metrics) out(`metrics on ${metrics.url}`);
      try {
        if (o.criuPort !== undefined) {
          const server = await serveCriuPages(catalog, { snapshotId: id, port: o.criuPort, host: o.host, ...criuServerOptions(o), logger });
          figures = () => {
            const s = server.stats();
            return { restores: s.connections, instances: s.openConnections, rejected: s.rejectedConnections, pagesInstalled: s.pagesServed, faultsServed: s.gets };
          };
          out(`serving CRIU pages of ${id} on ${server.host}:${server.port} (layout ${o.criuLayout}); Ctrl-C stops`);
          await untilSignal();
          out(JSON.stringify(server.stats()));
          await server.close();
        } else {
          const hook = createRestoreHook(stack, { catalog, logger, prefetch: o.prefetch, recordWorkingSet: o.record, trace: o.trace !== undefined });
          const handler = await serveFirecracker(hook, {
            socketPath: o.firecracker!,
            snapshotId: id,
            logger,
            restore: { eager: o.eager === true },
            ...(o.trace !== undefined ? { onRestoreEnd: (s: RestoreStats, pid: number) => reportTrace(s, pid, o.trace, out) } : {}),
          });
          figures = () => {
            const levels: number[] = [];
            let jsPathPages = 0;
            for (const r of handler.instances()) {
              const s = r.stats();
              s.pagesByLevel.forEach((n, i) => (levels[i] = (levels[i] ?? 0) + n));
              jsPathPages += s.jsPathPages;
            }
            return { ...handler.health(), pagesByLevel: levels, jsPathPages };
          };
          out(`Firecracker UFFD handler for ${id} listening on ${o.firecracker}; Ctrl-C stops`);
          await untilSignal();
          out(JSON.stringify(handler.health()));
          await handler.close();
        }
      } finally {
        await metrics?.close();
        await stack.close();
      }
    },
  );

  // The keeper's worker: the same flags; the descriptors come from the keeper.
  restoreOptions(program.command('restore-worker', { hidden: true }).description('(internal) the page-serving worker a restore keeper runs')).action(
    async (id: string, o: RestoreCliOptions) => {
      checkFlags(o);
      const logger = pino({ level: process.env['TIERSTACK_LOG'] ?? 'info', base: { pid: process.pid, role: 'restore-worker' } }, pino.destination(2));
      const criu = o.criuPort !== undefined;
      await runRestoreWorker({
        snapshotId: id,
        mode: criu ? 'criu' : 'firecracker',
        openStack: async (memfds) => {
          const stack = await openWorkerStack(o, memfds, logger);
          // Served by the promoted worker (a standby never gets here); its replacement takes the
          // port over once this one is gone. The restore figures are the worker's own last report
          // to the keeper, read from the keeper's status socket.
          const status = o.statusSocket;
          await startMetrics(
            o,
            (registry) => {
              bindStackMetrics(registry, stack);
              bindRestoreMetrics(registry, id, async () =>
                status === undefined ? undefined : ((await queryKeeperStatus(status, 2000)).worker?.stats as Partial<RestoreFigures> | undefined),
              );
            },
            { retryMs: 10_000 },
          ).then(
            (m) => m && logger.info({ url: m.url }, 'restore worker: serving metrics'),
            (err: unknown) => logger.error({ err }, 'restore worker: cannot serve metrics'),
          );
          return stack;
        },
        hook: { prefetch: o.prefetch, recordWorkingSet: o.record, trace: o.trace !== undefined },
        restore: { eager: o.eager === true },
        // The worker's stdout belongs to the keeper's protocol: its trace summaries go to stderr.
        ...(o.trace !== undefined ? { onRestoreEnd: (s: RestoreStats, pid: number) => reportTrace(s, pid, o.trace, (l) => process.stderr.write(`${l}\n`)) } : {}),
        criu: criuServerOptions(o),
        describe: criu
          ? `serving CRIU pages of ${id} on ${o.host}:%PORT% (layout ${o.criuLayout}); Ctrl-C stops`
          : `Firecracker UFFD handler for ${id} listening on ${o.firecracker}; Ctrl-C stops`,
        logger,
      });
    },
  );
}

/** Checks the flags and the snapshot here, then runs the keeper in the foreground. */
async function runUnderKeeper(id: string, o: RestoreCliOptions, logger: Logger): Promise<void> {
  // Refuse what the worker would refuse before starting anything (a worker that cannot start
  // would otherwise be restarted for ever): the snapshot, the limits, the stack itself.
  const stack = await openStack(o, { logger });
  try {
    const catalog = new SnapshotCatalog(stack, { logger });
    await catalog.get(id);
    if (o.criuPort !== undefined) await (await serveCriuPages(catalog, { snapshotId: id, port: 0, listen: false, ...criuServerOptions(o) })).close();
  } finally {
    await stack.close();
  }
  const i = process.argv.indexOf('restore');
  const args = process.argv.slice(i + 1);
  const status = o.statusSocket ?? (o.firecracker !== undefined ? `${o.firecracker}.status` : join(tmpdir(), `tierstack-criu-${id}-${process.pid}.status`));
  const keeper = spawnKeeper(
    {
      ...(o.firecracker !== undefined ? { firecracker: o.firecracker } : { criuPort: o.criuPort!, criuHost: o.host }),
      status,
      ...(o.firecracker !== undefined ? { stateDir: o.stateDir ?? `${o.firecracker}.state` } : {}),
      memfds: keeperMemfds(o),
      standby: o.standby,
      giveUpAfter: 5,
      label: `restore ${id}`,
      // The worker reads its figures back from the status socket for --metrics-port: name it.
      worker: [process.execPath, process.argv[1]!, 'restore-worker', ...args, ...(o.statusSocket === undefined ? ['--status-socket', status] : [])],
    },
    { stdio: ['ignore', 'inherit', 'inherit'] },
  );
  // A terminal's Ctrl-C reaches the keeper too; a signal sent to this process alone is passed on.
  const forward = (sig: NodeJS.Signals) => () => {
    if (keeper.exitCode === null && keeper.signalCode === null) keeper.kill(sig);
  };
  process.on('SIGINT', forward('SIGINT'));
  process.on('SIGTERM', forward('SIGTERM'));
  const code = await new Promise<number>((resolve) => keeper.on('exit', (c, sig) => resolve(c ?? (sig ? 1 : 0))));
  process.exitCode = code;
}
