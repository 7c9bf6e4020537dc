/**
 * `tierstack monitor` both ways, next to a real `tierstack ublk add` fuse-loop server and a
 * process holding 8 MiB in a cgroup v1 memory cgroup: through a pseudo-terminal (`script`) it
 * draws a view redrawn in place, sparklines one glyph per sample; through a pipe it prints one
 * plain line per sample. Both show the figures the cgroup and the device's stats hold.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const CG_ROOT = '/sys/fs/cgroup/memory';
const canRun = existsSync(`${CG_ROOT}/memory.limit_in_bytes`) && existsSync('/dev/fuse') && process.getuid?.() === 0 && existsSync('/usr/bin/script');

async function waitFor<T>(get: () => T | undefined): Promise<T> {
  for (let i = 0; i < 300; i++) {
    const v = get();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('timed out waiting');
}

const stripAnsi = (s: string): string => s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');

describe.skipIf(!canRun)('tierstack monitor', () => {
  let dir: string;
  let cg: string;
  let stateDir: string;
  let server: ChildProcess;
  let serverExit: Promise<number | null>;
  let hold: ChildProcess;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ts-cli-monitor-'));
    stateDir = join(dir, 'state');
    cg = join(CG_ROOT, `tierstack-monitor-${process.pid}`);
    mkdirSync(cg);
    writeFileSync(join(cg, 'memory.limit_in_bytes'), String(32 << 20));
    execFileSync('cc', ['-O2', '-o', join(dir, 'hold'), fileURLToPath(new URL('./fixtures/swap-hold.c', import.meta.url))]);
    let holdOut = '';
    hold = spawn('sh', ['-c', `echo $$ > ${cg}/cgroup.procs && exec ${join(dir, 'hold')} 8`], { stdio: ['pipe', 'pipe', 'inherit'] });
    hold.stdout!.on('data', (d) => (holdOut += d));
    await waitFor(() => (holdOut.includes('"base"') ? true : undefined));
    server = spawn(process.execPath, [bin, 'ublk', 'add', '--name', 'mon', '--size', '64M', '--transport', 'fuse-loop', '--state-dir', stateDir], { stdio: ['ignore', 'pipe', 'ignore'] });
    serverExit = new Promise((r) => server.on('exit', (c) => r(c)));
    let out = '';
    server.stdout!.on('data', (d) => (out += d));
    const ready = JSON.parse(await waitFor(() => /^\{"event":"ready".*$/m.exec(out)?.[0])) as { path: string };
    execFileSync('dd', ['if=/dev/urandom', `of=${ready.path}`, 'bs=64k', 'count=64', 'oflag=direct', 'status=none']);
    // The server publishes its stats about once a second: wait until they show the 4 MiB.
    await waitFor(() => {
      const s = JSON.parse(readFileSync(join(stateDir, 'mon.stats.json'), 'utf8')) as { device: { write: { bytes: number } } };
      return s.device.write.bytes >= 4 << 20 ? true : undefined;
    });
  }, 60_000);

  afterAll(async () => {
    hold?.kill('SIGKILL');
    server?.kill('SIGTERM');
    await serverExit;
    await new Promise((r) => setTimeout(r, 100));
    if (cg && existsSync(cg)) rmdirSync(cg);
    rmSync(dir, { recursive: true, force: true });
  });

  const args = (n: number): string[] => [bin, 'monitor', cg, '--device', 'mon', '--count', String(n), '--interval', '100', '--state-dir', stateDir];

  it('on a terminal: a view redrawn in place, a sparkline per series with one glyph per sample', () => {
    const cmd = [process.execPath, ...args(4)].map((a) => `'${a}'`).join(' ');
    const out = execFileSync('script', ['-qfec', cmd, '/dev/null'], { encoding: 'utf8', env: { ...process.env, COLUMNS: '160', TERM: 'xterm' } });
    const frames = out.split(/\x1b\[\d+F/);
    expect(frames).toHaveLength(4); // drawn once, then moved back up and redrawn three times
    const redraws = [...out.matchAll(/\x1b\[(\d+)F/g)].map((m) => Number(m[1]));
    const last = stripAnsi(frames[3]!).split(/\r?\n/).filter(Boolean);
    expect(redraws).toEqual([last.length, last.length, last.length]); // back exactly one frame each time
    const row = (label: string): string => last.find((l) => l.startsWith(label))!;
    expect(last.map((l) => l.split(/\s{2,}/)[0])).toEqual(['tierstack monitor', 'cgroup ram', 'swap', 'dev reads', 'dev writes', 'file hits']);
    // Four samples: four glyphs in every sparkline.
    for (const label of ['cgroup ram', 'swap', 'dev reads', 'dev writes', 'file hits']) expect(row(label)).toMatch(/\s[▁▂▃▄▅▆▇█]{4}\s/);
    const ram = /cgroup ram\s+\S+\s+([\d.]+) MiB \/ 32\.0 MiB \[[#.]{10}\]/.exec(row('cgroup ram'));
    expect(Number(ram![1])).toBeGreaterThanOrEqual(8);
    expect(row('dev writes')).toMatch(/0\.0 MiB\/s \(total 4\.0 MiB, \d+ req/);
  });

  it('through a pipe: one plain line per sample, the same figures', () => {
    const out = execFileSync(process.execPath, args(3), { encoding: 'utf8' });
    expect(out).not.toContain('\x1b');
    const lines = out.trim().split('\n');
    expect(lines).toHaveLength(3);
    for (const l of lines) {
      const m = /^\d\d:\d\d:\d\d \| cgroup ram ([\d.]+) MiB \/ 32\.0 \| swap [\d.]+ MiB \| dev r \d+ .* \| w \d+ \(4\.0 MiB, p99 \d+ us\) \| discard \d+ \| file: get \d+ hit \d+ put 1024$/.exec(l);
      expect(m, l).not.toBeNull();
      expect(Number(m![1])).toBeGreaterThanOrEqual(8);
    }
  });
});
