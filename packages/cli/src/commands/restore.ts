/**
 * `tierstack restore --firecracker <socket> | --criu-port <port> <id>`: serves a snapshot from
 * the stack until interrupted — as a Firecracker UFFD handler or as a CRIU lazy-pages page server.
 */
import type { Command } from 'commander';
import pino from 'pino';
import { SnapshotCatalog, serveCriuPages, createRestoreHook, serveFirecracker, CRIU_SERVER_DEFAULTS, type CriuHeaderLayout } from '@tierstack/faas';
import { addStackOptions, openStack, type StackCliOptions } from '../stack-options.js';

interface RestoreCliOptions extends StackCliOptions {
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
}

/** Resolves on SIGINT/SIGTERM. */
const untilSignal = (): Promise<void> =>
  new Promise((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });

export function registerRestoreCommand(program: Command, out: (l: string) => void = (l) => console.log(l)): void {
  addStackOptions(
    program
      .command('restore')
      .description('serve a snapshot to a restoring VM or process: Firecracker UFFD handler or CRIU page server')
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
      .option('--no-record', 'Firecracker: do not record working sets'),
  ).action(async (id: string, o: RestoreCliOptions) => {
    if ((o.firecracker === undefined) === (o.criuPort === undefined)) throw new Error('give exactly one of --firecracker <socket> or --criu-port <port>');
    const logger = pino({ level: process.env['TIERSTACK_LOG'] ?? 'info' }, pino.destination(2));
    const stack = await openStack(o, { logger });
    const catalog = new SnapshotCatalog(stack, { logger });
    try {
      if (o.criuPort !== undefined) {
        const server = await serveCriuPages(catalog, {
          snapshotId: id,
          port: o.criuPort,
          host: o.host,
          headerLayout: o.criuLayout,
          maxConnections: o.criuMaxConnections,
          idleTimeoutMs: o.criuIdleTimeoutMs,
          maxConnectionBytes: Math.round(o.criuConnBufferMib * 2 ** 20),
          maxTotalBytes: Math.round(o.criuTotalBufferMib * 2 ** 20),
          logger,
        });
        out(`serving CRIU pages of ${id} on ${server.host}:${server.port} (layout ${o.criuLayout}); Ctrl-C stops`);
        await untilSignal();
        out(JSON.stringify(server.stats()));
        await server.close();
      } else {
        if (!['latest', 'union', 'none'].includes(o.prefetch)) throw new Error('--prefetch must be latest, union or none');
        const hook = createRestoreHook(stack, { catalog, logger, prefetch: o.prefetch, recordWorkingSet: o.record });
        const handler = await serveFirecracker(hook, { socketPath: o.firecracker!, snapshotId: id, logger, restore: { eager: o.eager === true } });
        out(`Firecracker UFFD handler for ${id} listening on ${o.firecracker}; Ctrl-C stops`);
        await untilSignal();
        out(JSON.stringify(handler.health()));
        await handler.close();
      }
    } finally {
      await stack.close();
    }
  });
}
