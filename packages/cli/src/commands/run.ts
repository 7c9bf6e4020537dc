/**
 * `tierstack run [--min-size N] [--budget N] [stack flags] -- <cmd> [args...]`: runs a command with
 * libtierstack_run.so preloaded; its allocations of at least --min-size bytes live in the tier stack
 * under a residency budget of --budget bytes (pages beyond it leave the process into the stack and
 * come back on touch). The command's exit status is passed through.
 *
 * `tierstack run --serve <socket> [--budget N] [stack flags]`: the server alone, for programs that
 * preload the library themselves:
 *   LD_PRELOAD=$(tierstack run --print-library) TIERSTACK_RUN_SOCKET=<socket> TIERSTACK_RUN_BUDGET=1G <cmd>
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import pino from 'pino';
import { Registry } from 'prom-client';
import { bindStackMetrics, serveMetrics } from '@tierstack/core';
import { addStackOptions, openStack, type StackCliOptions } from '../stack-options.js';
import { addMetricsOptions, type MetricsCliOptions } from '../metrics-options.js';

/** "1073741824", "64k", "512M", "4G", "1GiB" (powers of 1024), as the library reads them. */
export const parseBytes = (v: string): number => {
  const m = /^(\d+)\s*([kmgt])?(i?b)?$/i.exec(v.trim());
  if (!m) throw new InvalidArgumentError('expected a size like 16777216, 512M or 4G');
  const mult = { k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[(m[2] ?? '').toLowerCase() as 'k'] ?? 1;
  const n = Number(m[1]) * mult;
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive size');
  return n;
};

interface RunCliOptions extends StackCliOptions, MetricsCliOptions {
  minSize?: number;
  budget?: number;
  arena?: number;
  faultAround: number;
  faultThreads: number;
  cpus?: number[];
  debug?: boolean;
  stats?: boolean;
  serve?: string;
  printLibrary?: boolean;
}

const int = (lo: number, hi: number) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < lo || n > hi) throw new InvalidArgumentError(`expected an integer in ${lo}..${hi}`);
  return n;
};

const untilSignal = (): Promise<void> =>
  new Promise((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });

export function registerRunCommand(program: Command, out: (l: string) => void = (l) => console.log(l)): void {
  addStackOptions(
    addMetricsOptions(program.command('run'))
      .description('run a command whose big allocations live in the tier stack under a residency budget (LD_PRELOAD)')
      .argument('[command...]', 'the command and its arguments (after --)')
      .addOption(new Option('--min-size <bytes>', 'allocations of at least this size go to the stack (default 16M)').env('TIERSTACK_RUN_MIN_SIZE').argParser(parseBytes))
      .addOption(new Option('--budget <bytes>', 'resident bytes of big allocations per process; beyond it pages leave into the stack (default: no limit)').env('TIERSTACK_RUN_BUDGET').argParser(parseBytes))
      .addOption(new Option('--arena <bytes>', 'virtual size of each process\'s arena for big allocations (default 32G)').env('TIERSTACK_RUN_ARENA').argParser(parseBytes))
      .addOption(new Option('--fault-around <pages>', 'pages installed per fault (aligned block)').default(16).argParser(int(1, 64)))
      .addOption(new Option('--fault-threads <n>', 'native threads serving faults').default(2).argParser(int(1, 64)))
      .addOption(
        new Option('--cpus <list>', 'pin the fault threads to these CPUs (e.g. 1 or 2,3); a fault then costs no cross-CPU wake-up when the program runs there too').argParser(
          (v: string) => v.split(',').map((c) => int(0, 4095)(c.trim())),
        ),
      )
      .option('--debug', 'the library logs its decisions on stderr (TIERSTACK_RUN_DEBUG=1)')
      .option('--stats', 'print the sessions and page counts as JSON on stderr at the end')
      .option('--serve <socket>', 'serve programs that preload the library themselves, on this socket, until interrupted')
      .option('--print-library', 'print the path of libtierstack_run.so and exit')
      .passThroughOptions(),
  ).action(async (command: string[], o: RunCliOptions) => {
    const { runWithTierStack, RunServer, preloadLibraryPath } = await import('@tierstack/interposer');
    if (o.printLibrary) {
      out(preloadLibraryPath());
      return;
    }
    if (o.serve === undefined && command.length === 0) throw new InvalidArgumentError('give the command to run after --, or --serve <socket>');
    const logger = pino({ level: process.env['TIERSTACK_LOG'] ?? 'warn' }, pino.destination(2));
    const stack = await openStack(o, { logger });
    // The engine registers its fault metrics in the registry it is given (uffd's bindUffdMetrics).
    const registry = o.metricsPort !== undefined ? new Registry() : undefined;
    const metrics = registry
      ? await serveMetrics(registry, { port: o.metricsPort!, host: o.metricsHost }).catch(async (err: unknown) => {
          await stack.close();
          throw err;
        })
      : undefined;
    if (registry) bindStackMetrics(registry, stack);
    if (metrics) process.stderr.write(`metrics on ${metrics.url}\n`);
    try {
      if (o.serve !== undefined) {
        const server = await RunServer.start({
          stack,
          socketPath: o.serve,
          ...(o.budget !== undefined ? { defaultBudget: o.budget } : {}),
          faultAround: o.faultAround,
          faultThreads: o.faultThreads,
          ...(o.cpus ? { cpus: o.cpus } : {}),
          ...(registry ? { registry } : {}),
          logger,
        });
        out(`tierstack run server on ${server.socketPath}; preload ${preloadLibraryPath()} with TIERSTACK_RUN_SOCKET=${server.socketPath}; Ctrl-C stops`);
        await untilSignal();
        await server.close();
        return;
      }
      const [cmd, ...args] = command;
      const result = await runWithTierStack({
        stack,
        command: cmd!,
        args,
        ...(o.minSize !== undefined ? { minSize: o.minSize } : {}),
        ...(o.budget !== undefined ? { budget: o.budget } : {}),
        ...(o.arena !== undefined ? { arena: o.arena } : {}),
        faultAround: o.faultAround,
        faultThreads: o.faultThreads,
        ...(o.cpus ? { cpus: o.cpus } : {}),
        debug: o.debug === true,
        ...(registry ? { registry } : {}),
        logger,
      });
      if (o.stats) {
        process.stderr.write(`${JSON.stringify({ status: result.status, sessions: result.sessions.map(({ error, ...s }) => ({ ...s, ...(error ? { error: error.message } : {}) })), store: result.store })}\n`);
      }
      process.exitCode = result.status;
    } finally {
      await metrics?.close();
      await stack.close();
    }
  });
}
