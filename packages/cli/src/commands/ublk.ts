/**
 * `tierstack ublk add|del|list|trace`, `tierstack swap on|off` (`tierstack monitor`: monitor.ts).
 *
 * `ublk add` serves the device in the foreground (the device lives as long as this process:
 * run it under systemd, tmux or `&`); it prints one JSON line when the device is up and tears
 * the device down on SIGINT/SIGTERM. `ublk del` (from another shell) signals it and waits.
 */
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { pino } from 'pino';
import {
  serveDevice,
  deleteDevice,
  listStates,
  swapOn,
  swapOff,
  DEFAULT_STATE_DIR,
  bindBlockMetrics,
  streamTrace,
  type DeviceState,
  type Transport,
} from '@tierstack/ublk';
import { bindStackMetrics, summarizeTrace, formatTraceSummary, TierStackError, ErrorCode, type Logger, type TierStack, type TraceRecord } from '@tierstack/core';
import { defaultDataDir, openStack } from '../stack-options.js';
import { addMetricsOptions, startMetrics, type MetricsCliOptions } from '../metrics-options.js';

export const parseSize = (v: string): number => {
  const m = /^(\d+)([KMGT]i?B?|[kmgt])?$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError('expected a size like 1073741824, 512M or 4G');
  const mult = { K: 1 << 10, M: 1 << 20, G: 1 << 30, T: 2 ** 40 }[(m[2] ?? '').charAt(0).toUpperCase()] ?? 1;
  const n = Number(m[1]) * mult;
  if (n <= 0 || n % 4096 !== 0) throw new InvalidArgumentError('the size must be a positive multiple of 4096 bytes');
  return n;
};

const int = (lo: number, hi: number) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < lo || n > hi) throw new InvalidArgumentError(`expected an integer in ${lo}..${hi}`);
  return n;
};

const mib = (b: number): string => (b / (1 << 20)).toFixed(1);

interface UblkAddOptions extends MetricsCliOptions {
  name: string;
  size: number;
  transport?: string;
  queues?: number;
  depth?: number;
  dataDir?: string;
  memoryMib?: number;
  cxl?: string;
  cxlMib: number;
  redis?: string;
  memd?: string;
  memdToken?: string;
  replicas: number;
  swap?: string | boolean;
  stateDir: string;
  recover?: boolean;
  recovery: boolean;
}

/**
 * With CXL, Redis or RDMA pool flags the device is served from the shared stack configuration
 * (serveDevice makes it write-through). Without a remote tier there is a file tier (default
 * <state-dir>/<name>.pages): some tier must outlive the server before a write is acknowledged.
 */
async function remoteStack(o: UblkAddOptions, logger: Logger): Promise<TierStack> {
  const remote = o.redis !== undefined || o.memd !== undefined;
  return openStack(
    {
      dataDir: o.dataDir ?? (remote ? defaultDataDir() : join(o.stateDir, `${o.name}.pages`)),
      memoryMib: o.memoryMib ?? 64,
      fileTier: o.dataDir !== undefined || !remote,
      cxlMib: o.cxlMib,
      replicas: o.replicas,
      ...(o.cxl ? { cxl: o.cxl } : {}),
      ...(o.redis ? { redis: o.redis } : {}),
      ...(o.memd ? { memd: o.memd } : {}),
      ...(o.memdToken ? { memdToken: o.memdToken } : {}),
    },
    { logger },
  );
}

/** The running server of a device named by name or block device path, with a control socket. */
export function findServed(device: string, stateDir: string): DeviceState {
  const st = listStates(stateDir).find((s) => s.name === device || s.path === device);
  if (!st) throw new TierStackError(ErrorCode.NotFound, `no device ${device} is served (state dir ${stateDir})`);
  if (!st.alive) throw new TierStackError(ErrorCode.Unavailable, `the server of ${device} (pid ${st.pid}) is gone`);
  if (!st.control) throw new TierStackError(ErrorCode.Unsupported, `the server of ${device} has no control socket (an older server?)`);
  return st;
}

export function registerUblkCommands(program: Command): void {
  const ublk = program.command('ublk').description('the tier stack as a block device (ublk, or loop over FUSE on kernels without ublk)');

  addMetricsOptions(ublk.command('add'))
    .description('serve a block device in the foreground until SIGINT/SIGTERM (prints a JSON line when it is up)')
    .requiredOption('--name <name>', 'device name (state in --state-dir)')
    .requiredOption('--size <bytes>', 'device size (e.g. 4G)', parseSize)
    .option('--transport <t>', 'ublk | fuse-loop (default: ublk when /dev/ublk-control exists)')
    .option('--queues <n>', 'ublk queues (one thread + io_uring each)', int(1, 64))
    .option('--depth <n>', 'ublk queue depth', int(1, 4096))
    .option('--data-dir <dir>', 'stack: the FileTier directory (default <state-dir>/<name>.pages); writes are acknowledged once in it')
    .option('--memory-mib <n>', 'stack: a write-through DRAM cache above the file tier, MiB (default none)', int(1, 1 << 20))
    .option('--cxl <backing>', 'stack: a CXL cache tier on top (memfd, a file path or /dev/daxX.Y)')
    .option('--cxl-mib <n>', 'stack: size of a memfd or new file CXL region in MiB', int(1, 1 << 20), 256)
    .option('--redis <url>', 'stack: a Redis tier below DRAM')
    .option('--memd <donors>', 'stack: an RDMA pool tier (memd control addresses, comma-separated host:port)')
    .option('--memd-token <token>', 'token the memd donors expect')
    .option('--replicas <n>', 'copies of each RDMA pool slab', int(1, 4), 1)
    .option('--swap [priority]', 'make it a swap area (swapon -p priority, default 100) and remove it on exit')
    .option('--state-dir <dir>', 'where running devices are recorded', DEFAULT_STATE_DIR)
    .option('--recover', 'take over the ublk device a dead server of this --name left (default: whenever there is one)')
    .option('--no-recovery', 'ublk: add the device without user recovery (it dies with this server)')
    .action(async (o: UblkAddOptions) => {
      if (o.transport !== undefined && o.transport !== 'ublk' && o.transport !== 'fuse-loop') throw new InvalidArgumentError('--transport must be ublk or fuse-loop');
      const logger = pino({ level: process.env.LOG_LEVEL ?? 'info' }, pino.destination(2));
      const swapPriority = o.swap === undefined ? undefined : o.swap === true ? 100 : int(-1, 32767)(String(o.swap));
      const server = await serveDevice({
        name: o.name,
        sizeBytes: o.size,
        stateDir: o.stateDir,
        logger,
        ...(o.transport ? { transport: o.transport as Transport } : {}),
        ...(o.queues ? { queues: o.queues } : {}),
        ...(o.depth ? { depth: o.depth } : {}),
        ...(o.dataDir ? { dataDir: o.dataDir } : {}),
        ...(o.memoryMib ? { memoryMiB: o.memoryMib } : {}),
        ...(swapPriority !== undefined ? { swapPriority } : {}),
        ...(o.cxl || o.redis || o.memd ? { stack: await remoteStack(o, logger) } : {}),
        recovery: o.recovery,
        recover: o.recover === true ? true : 'auto',
      });
      const metrics = await startMetrics(o, (registry) => {
        bindStackMetrics(registry, server.stack);
        bindBlockMetrics(registry, server.device);
      }).catch(async (err: unknown) => {
        await server.stop();
        throw err;
      });
      console.log(JSON.stringify({ event: 'ready', ...server.state, ...(metrics ? { metrics: metrics.url } : {}) }));
      await new Promise<void>((resolve) => {
        const stop = (sig: string): void => {
          logger.info({ sig }, 'stopping');
          server.stop().then(resolve, (err: unknown) => {
            logger.error({ err }, 'stop failed');
            process.exitCode = 1;
            resolve();
          });
        };
        process.once('SIGINT', () => stop('SIGINT'));
        process.once('SIGTERM', () => stop('SIGTERM'));
      });
      await metrics?.close();
      console.log(JSON.stringify({ event: 'stopped', name: o.name }));
    });

  ublk
    .command('del')
    .description('stop a served device (signals its server and waits; deletes a ublk device whose server died)')
    .argument('<name>')
    .option('--state-dir <dir>', 'where running devices are recorded', DEFAULT_STATE_DIR)
    .action(async (name: string, o: { stateDir: string }) => {
      await deleteDevice(name, { stateDir: o.stateDir });
      console.log(`deleted ${name}`);
    });

  ublk
    .command('list')
    .description('list served devices')
    .option('--state-dir <dir>', 'where running devices are recorded', DEFAULT_STATE_DIR)
    .option('--json', 'JSON output')
    .action((o: { stateDir: string; json?: boolean }) => {
      const states = listStates(o.stateDir);
      if (o.json) {
        console.log(JSON.stringify(states));
        return;
      }
      const rows = [['name', 'transport', 'device', 'size MiB', 'pid', 'alive', 'swap']];
      for (const s of states) rows.push([s.name, s.transport, s.path, mib(s.sizeBytes), String(s.pid), s.alive ? 'yes' : 'NO', s.swap ? 'yes' : '']);
      const w = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
      console.log(rows.map((r) => r.map((x, c) => x.padEnd(w[c]!)).join('  ')).join('\n'));
    });

  ublk
    .command('trace')
    .description("stream a served device's request trace (op, size, position, latency, serving tier) and print its summary")
    .argument('<device>', 'device name, or its block device path (/dev/loopN, /dev/ublkbN)')
    .option('--seconds <n>', 'trace this long (default: until Ctrl-C)', Number)
    .option('--capacity <n>', 'records the server keeps between reads (its ring)', int(1, 1 << 24))
    .option('--json', 'print the summary (and how many records were lost) as JSON')
    .option('--records', 'with --json: include every record')
    .option('--state-dir <dir>', 'where running devices are recorded', DEFAULT_STATE_DIR)
    .action(async (device: string, o: { seconds?: number; capacity?: number; json?: boolean; records?: boolean; stateDir: string }) => {
      if (o.seconds !== undefined && !(o.seconds > 0)) throw new InvalidArgumentError('--seconds must be positive');
      const st = findServed(device, o.stateDir);
      const records: TraceRecord[] = [];
      let lost = 0;
      let interrupted = false;
      const onSig = (): void => {
        interrupted = true;
      };
      process.once('SIGINT', onSig);
      process.once('SIGTERM', onSig);
      try {
        await streamTrace(st.control!, {
          ...(o.seconds ? { seconds: o.seconds } : {}),
          ...(o.capacity ? { capacity: o.capacity } : {}),
          onStart: () => process.stderr.write(`tracing ${st.name} (${st.path})${o.seconds ? ` for ${o.seconds} s` : '; Ctrl-C ends'}\n`),
          onBatch(batch, l) {
            records.push(...batch);
            lost += l;
            return !interrupted;
          },
        });
      } finally {
        process.off('SIGINT', onSig);
        process.off('SIGTERM', onSig);
      }
      const summary = summarizeTrace(records);
      if (o.json) console.log(JSON.stringify({ device: st.name, path: st.path, lost, summary, ...(o.records ? { records } : {}) }));
      else console.log(`${st.name} (${st.path})${lost ? `, ${lost} records lost (raise --capacity)` : ''}\n${formatTraceSummary(summary)}`);
    });

  const swap = program.command('swap').description('make a block device a swap area, or remove it');
  swap
    .command('on')
    .argument('<device>')
    .option('-p, --priority <n>', 'swap priority', int(-1, 32767), 100)
    .action(async (device: string, o: { priority: number }) => {
      await swapOn(device, { priority: o.priority });
      console.log(`swap on ${device} (priority ${o.priority})`);
    });
  swap
    .command('off')
    .argument('<device>')
    .action(async (device: string) => {
      await swapOff(device);
      console.log(`swap off ${device}`);
    });
}
