/** The `tierstack` command line. Each subcommand lives in commands/ and is added here. */
import { writeFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { runDemo, runRestoreDemo } from './commands/demo.js';
import { registerMemdCommand } from './commands/memd.js';
import { registerSnapshotCommands } from './commands/snapshot.js';
import { registerRestoreCommand } from './commands/restore.js';
import { registerCxlCommands } from './commands/cxl.js';
import { registerUblkCommands } from './commands/ublk.js';
import { registerRunCommand } from './commands/run.js';
import { registerPagemapCommand } from './commands/pagemap.js';
import { registerMonitorCommand } from './commands/monitor.js';

export const positiveInt = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive integer');
  return n;
};

export function buildProgram(): Command {
  const program = new Command('tierstack')
    .description('Tiered memory pages (CXL, RDMA pool, Redis, DRAM, files) behind one page-store interface')
    .showHelpAfterError()
    .enablePositionalOptions(); // `tierstack run -- cmd --its-flags`: options after the command belong to it

  program
    .command('demo')
    .description('restore a function-like memory snapshot from the tier stack three ways (eager, lazy, lazy + working-set prefetch) and compare')
    .option('--snapshot-mib <n>', 'snapshot size in MiB', positiveInt, 256)
    .option('--cache-mib <n>', 'CXL (or DRAM) cache size in MiB', positiveInt, 64)
    .option('--basic', 'the basic demo instead: write and read back pages through a stack, print per-tier stats')
    .option('--pages <n>', '--basic: pages to write and read back', positiveInt, 4096)
    .option('--memory-mib <n>', '--basic: DRAM tier budget in MiB (small, so the file tier is used too)', positiveInt, 4)
    .option('--dir <path>', 'keep the stack and files in this directory instead of a temporary one')
    .action(async (o: { snapshotMib: number; cacheMib: number; basic?: boolean; pages: number; memoryMib: number; dir?: string }) => {
      if (o.basic) {
        const { wrong } = await runDemo({ pages: o.pages, memoryMiB: o.memoryMib, dir: o.dir });
        if (wrong > 0) process.exitCode = 1;
        return;
      }
      const { wrong } = await runRestoreDemo({ snapshotMiB: o.snapshotMib, cacheMiB: o.cacheMib, ...(o.dir ? { dir: o.dir } : {}) });
      if (wrong > 0) process.exitCode = 1;
    });

  registerSnapshotCommands(program);
  registerRestoreCommand(program);

  registerMemdCommand(program);
  registerCxlCommands(program);

  program
    .command('bench')
    .description('run benchmark suites (each case against a baseline measured in the same run)')
    .argument('[suites...]', 'suite names (default: all)')
    .option('--json', 'one JSON object per case and line')
    .option('--round-ms <n>', 'milliseconds per measured round', positiveInt)
    .option('--rounds <n>', 'rounds per side', positiveInt)
    .option('--report <file.html>', 'also write a self-contained HTML report (charts against each case\'s bar, raw figures, machine, command)')
    .action(async (suites: string[], o: { json?: boolean; roundMs?: number; rounds?: number; report?: string }) => {
      const { runBenchmarks, renderReport, loadSuite } = await import('@tierstack/bench');
      const measure = { ...(o.roundMs ? { roundMs: o.roundMs } : {}), ...(o.rounds ? { rounds: o.rounds } : {}) };
      const startedAt = new Date();
      const results = await runBenchmarks({ suites, json: o.json === true, measure });
      if (o.report) {
        const names = [...new Set(results.map((r) => r.suite))];
        const descriptions = Object.fromEntries(await Promise.all(names.map(async (n) => [n, (await loadSuite(n)).description])));
        const command = ['tierstack', ...process.argv.slice(process.argv.indexOf('bench'))].join(' ');
        writeFileSync(o.report, renderReport(results, { command, startedAt, finishedAt: new Date() }, descriptions));
        process.stderr.write(`report: ${o.report}\n`);
      }
    });

  registerUblkCommands(program);
  registerRunCommand(program);
  registerPagemapCommand(program);
  registerMonitorCommand(program);

  return program;
}
