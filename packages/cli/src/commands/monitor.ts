/**
 * `tierstack monitor <cgroup> [--device <name>]`: a cgroup's RAM and swap next to a served
 * device's requests and per-tier hits. On a terminal, a live view of sparklines redrawn in place;
 * otherwise (a pipe, a log) one line per sample. Only reads: /sys/fs/cgroup and the stats file
 * the device's server publishes.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { DEFAULT_STATE_DIR } from '@tierstack/ublk';
import { takeSample, type Sample } from '../monitor/sample.js';
import { formatLine, renderView } from '../monitor/draw.js';

const int = (lo: number, hi: number) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < lo || n > hi) throw new InvalidArgumentError(`expected an integer in ${lo}..${hi}`);
  return n;
};

interface MonitorOptions {
  device?: string;
  interval: number;
  count?: number;
  stateDir: string;
  plain?: boolean;
}

export function registerMonitorCommand(program: Command): void {
  program
    .command('monitor')
    .description("a cgroup's RAM and swap use, live, next to a served device's request and tier stats (a redrawn view on a terminal, a line per sample otherwise)")
    .argument('<cgroup>', 'a memory cgroup: a path, or a name under /sys/fs/cgroup/memory (v1) or the v2 root')
    .option('--device <name>', 'a device served by `tierstack ublk add`')
    .option('--interval <ms>', 'refresh period', int(100, 3_600_000), 1000)
    .option('--count <n>', 'stop after n samples', int(1, 1 << 30))
    .option('--plain', 'one line per sample even on a terminal')
    .option('--state-dir <dir>', 'where running devices are recorded', DEFAULT_STATE_DIR)
    .action(async (cgroup: string, o: MonitorOptions) => {
      const out = process.stdout;
      const live = out.isTTY === true && o.plain !== true;
      const history: Sample[] = [];
      let drawn = 0; // lines of the previous frame
      let stop = false;
      const onSig = (): void => {
        stop = true;
      };
      process.once('SIGINT', onSig);
      process.once('SIGTERM', onSig);
      if (live) out.write('\x1b[?25l'); // hide the cursor while redrawing
      try {
        for (let i = 0; (o.count === undefined || i < o.count) && !stop; i++) {
          if (i > 0) await new Promise((r) => setTimeout(r, o.interval));
          if (stop) break;
          const s = await takeSample(cgroup, o.device, o.stateDir);
          if (!live) {
            out.write(`${formatLine(s)}\n`);
            continue;
          }
          history.push(s);
          const width = Math.max(10, Math.min(60, (out.columns ?? 100) - 60));
          if (history.length > width) history.shift();
          const lines = renderView(history, { cgroup, ...(o.device ? { device: o.device } : {}), intervalMs: o.interval, width });
          // Back to the top of the previous frame, each line cleared before it is rewritten.
          out.write(`${drawn ? `\x1b[${drawn}F` : ''}${lines.map((l) => `\x1b[2K${l}`).join('\n')}\n\x1b[J`);
          drawn = lines.length;
        }
      } finally {
        if (live) out.write('\x1b[?25h');
        process.off('SIGINT', onSig);
        process.off('SIGTERM', onSig);
      }
    });
}
