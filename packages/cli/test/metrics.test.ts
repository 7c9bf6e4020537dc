/**
 * --metrics-port on every long-running command, scraped from the real processes: `ublk add` (a
 * fuse-loop device written and read with O_DIRECT), `restore` under its keeper (a
 * Firecracker-faithful client faulting pages in) and `run` (a program whose big allocation leaves
 * under a budget and comes back). Each test checks that named series move when pages move.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sample, scrape, scrapeUntil, freePort } from './helpers/prom.js';
import { prepareFirecrackerClient } from './helpers/firecracker.js';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const cli = (args: string[]): string => execFileSync(process.execPath, [bin, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const root = process.getuid?.() === 0;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ts-cli-metrics-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A child with its output collected, and a wait for a stdout (or stderr) line matching a pattern. */
function run(args: string[], opts: { stdin?: boolean } = {}) {
  const proc = spawn(process.execPath, [bin, ...args], { stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((r) => proc.on('exit', (c) => r(c)));
  return {
    proc,
    exit,
    out: () => out,
    async waitFor(re: RegExp, stream: 'out' | 'err' = 'out'): Promise<RegExpExecArray> {
      for (let i = 0; i < 600; i++) {
        const m = re.exec(stream === 'out' ? out : err);
        if (m) return m;
        if (proc.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`no ${re} in ${stream}:\n${out}\n${err.slice(-3000)}`);
    },
  };
}

async function stop(p: { proc: ChildProcess; exit: Promise<number | null> }): Promise<number | null> {
  if (p.proc.exitCode === null) p.proc.kill('SIGTERM');
  return p.exit;
}

describe.skipIf(!root || !existsSync('/dev/fuse'))('tierstack ublk add --metrics-port', () => {
  it('serves the stack, block request and latency series; writes and reads move them', async () => {
    const stateDir = join(dir, 'ublk-state');
    const s = run(['ublk', 'add', '--name', 'metrics-test', '--size', '64M', '--transport', 'fuse-loop', '--state-dir', stateDir, '--metrics-port', '0']);
    try {
      const ready = JSON.parse((await s.waitFor(/^\{"event":"ready".*$/m))[0]) as { path: string; metrics: string };
      expect(ready.metrics).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      const before = await scrape(ready.metrics);
      const writes0 = sample(before, 'tierstack_ublk_requests_total', { device: 'metrics-test', op: 'write' });
      const puts0 = sample(before, 'tierstack_pages_total', { store: 'file', op: 'put' });
      // 4 MiB written past the page cache: every page goes through the server into the file tier.
      execFileSync('dd', ['if=/dev/urandom', `of=${ready.path}`, 'bs=64k', 'count=64', 'oflag=direct', 'status=none']);
      const afterWrite = await scrape(ready.metrics);
      expect(sample(afterWrite, 'tierstack_ublk_requests_total', { device: 'metrics-test', op: 'write' })).toBeGreaterThan(writes0);
      expect(sample(afterWrite, 'tierstack_ublk_bytes_total', { device: 'metrics-test', op: 'write' })).toBeGreaterThanOrEqual(4 << 20);
      expect(sample(afterWrite, 'tierstack_pages_total', { store: 'file', op: 'put' }) - puts0).toBeGreaterThanOrEqual(1024);
      expect(sample(afterWrite, 'tierstack_ublk_request_duration_seconds_count', { device: 'metrics-test', op: 'write' })).toBe(
        sample(afterWrite, 'tierstack_ublk_requests_total', { device: 'metrics-test', op: 'write' }),
      );
      execFileSync('dd', [`if=${ready.path}`, 'of=/dev/null', 'bs=64k', 'count=64', 'iflag=direct', 'status=none']);
      const afterRead = await scrape(ready.metrics);
      expect(sample(afterRead, 'tierstack_ublk_bytes_total', { device: 'metrics-test', op: 'read' }) - sample(afterWrite, 'tierstack_ublk_bytes_total', { device: 'metrics-test', op: 'read' })).toBeGreaterThanOrEqual(4 << 20);
      // (Reads are served natively from the file tier's handle, past the stack's JS stats: the
      // block server's own series are the ones that count them.)
      expect(sample(afterRead, 'tierstack_ublk_request_duration_seconds_count', { device: 'metrics-test', op: 'read' })).toBeGreaterThan(
        sample(afterWrite, 'tierstack_ublk_request_duration_seconds_count', { device: 'metrics-test', op: 'read' }),
      );
    } finally {
      expect(await stop(s)).toBe(0);
    }
  }, 60_000);
});

describe.skipIf(!existsSync('/dev/userfaultfd'))('tierstack restore --metrics-port', () => {
  const PAGES = 1024;
  let client: string;
  let dd: string[];
  beforeAll(() => {
    dd = ['--data-dir', join(dir, 'restore-data')];
    const img = Buffer.alloc(PAGES * 4096);
    for (let p = 0; p < PAGES; p++) img.writeUInt32LE(p + 1, p * 4096);
    writeFileSync(join(dir, 'mem'), img);
    cli(['snapshot', 'import', ...dd, 'fn', join(dir, 'mem')]);
    client = prepareFirecrackerClient(dir);
  }, 120_000);

  it('the worker serves fault and stack series; a VM faulting pages in moves them', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/metrics`;
    const sock = join(dir, 'fc.sock');
    const r = run(['restore', ...dd, '--prefetch', 'none', '--metrics-port', String(port), '--firecracker', sock, 'fn']);
    try {
      await r.waitFor(/listening on/);
      const before = await scrapeUntil(url, (t) => t.includes('tierstack_restore_faults_total'));
      expect(sample(before, 'tierstack_restore_pages_installed_total')).toBe(0);
      const vm = JSON.parse(execFileSync(client, [sock, join(dir, 'mem'), '--touch', '0:512'], { encoding: 'utf8' }).trim()) as { mismatches: number };
      expect(vm.mismatches).toBe(0);
      // The worker reports to the keeper about once a second; the scrape reads that report.
      const after = await scrapeUntil(url, (t) => sample(t, 'tierstack_restore_pages_installed_total', { snapshot: 'fn' }) >= 512);
      expect(sample(after, 'tierstack_restore_pages_installed_total', { snapshot: 'fn' })).toBeGreaterThanOrEqual(512);
      expect(sample(after, 'tierstack_restore_faults_total', { snapshot: 'fn' })).toBeGreaterThan(0);
      expect(sample(after, 'tierstack_restore_restores_total', { snapshot: 'fn' })).toBe(1);
      expect(sample(after, 'tierstack_restore_pages_by_level_total', { snapshot: 'fn' })).toBeGreaterThanOrEqual(512);
      // The stack the worker serves from: its page reads moved (the snapshot's pages were read).
      expect(sample(after, 'tierstack_pages_total', { op: 'get' })).toBeGreaterThan(sample(before, 'tierstack_pages_total', { op: 'get' }));
    } finally {
      r.proc.kill('SIGINT');
      expect(await r.exit).toBe(0);
    }
  }, 90_000);

  it('--no-keeper: the same series, from the handler in the CLI process', async () => {
    const sock = join(dir, 'nk.sock');
    const r = run(['restore', '--data-dir', join(dir, 'restore-data'), '--no-keeper', '--prefetch', 'none', '--metrics-port', '0', '--firecracker', sock, 'fn']);
    try {
      const url = (await r.waitFor(/^metrics on (\S+)$/m))[1]!;
      await r.waitFor(/listening on/);
      expect(sample(await scrape(url), 'tierstack_restore_faults_total', { snapshot: 'fn' })).toBe(0);
      execFileSync(client, [sock, join(dir, 'mem'), '--touch', '0:256'], { encoding: 'utf8' });
      const after = await scrape(url);
      expect(sample(after, 'tierstack_restore_pages_installed_total', { snapshot: 'fn' })).toBeGreaterThanOrEqual(256);
      expect(sample(after, 'tierstack_restore_restores_total', { snapshot: 'fn' })).toBe(1);
      expect(sample(after, 'tierstack_pages_total', { op: 'get' })).toBeGreaterThan(0);
    } finally {
      r.proc.kill('SIGINT');
      expect(await r.exit).toBe(0);
    }
  }, 60_000);
});

const PROGRAM = `
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
/* Fills a big allocation, waits for a line, reads it all back, waits for end of input. */
int main(int argc, char **argv) {
  size_t n = (size_t)atoi(argv[1]) << 20;
  uint64_t *a = malloc(n), h = 1;
  char line[16];
  if (!a) return 2;
  for (size_t i = 0; i < n / 8; i++) a[i] = i * 0x9e3779b97f4a7c15ull;
  printf("filled\\n"); fflush(stdout);
  if (!fgets(line, sizeof line, stdin)) return 3;
  for (size_t i = 0; i < n / 8; i++) h = (h ^ a[i]) * 0x100000001b3ull;
  printf("read %016llx\\n", (unsigned long long)h); fflush(stdout);
  while (fgets(line, sizeof line, stdin)) {}
  free(a);
  return 0;
}
`;

describe.skipIf(!root || !existsSync('/dev/userfaultfd'))('tierstack run --metrics-port', () => {
  it('serves the fault engine and stack series; pages leaving and coming back move them', async () => {
    const exe = join(dir, 'fillwait');
    writeFileSync(`${exe}.c`, PROGRAM);
    execFileSync('gcc', ['-O2', '-o', exe, `${exe}.c`]);
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/metrics`;
    const r = run(
      ['run', '--data-dir', join(dir, 'run-data'), '--memory-mib', '8', '--min-size', '1M', '--budget', '2M', '--arena', '1G', '--metrics-port', String(port), '--', exe, '16'],
      { stdin: true },
    );
    try {
      await r.waitFor(/^filled$/m);
      const filled = await scrapeUntil(url, (t) => sample(t, 'tierstack_uffd_evictions_total') > 2048 && sample(t, 'tierstack_pages_total', { op: 'put' }) > 0);
      // 16 MiB written under a 2 MiB budget: most pages were evicted into the stack.
      expect(sample(filled, 'tierstack_uffd_evictions_total')).toBeGreaterThan(2048);
      expect(sample(filled, 'tierstack_pages_total', { op: 'put' })).toBeGreaterThan(0);
      r.proc.stdin!.write('go\n');
      await r.waitFor(/^read [0-9a-f]{16}$/m);
      const read = await scrapeUntil(url, (t) => sample(t, 'tierstack_uffd_pages_by_level_total') > sample(filled, 'tierstack_uffd_pages_by_level_total'));
      expect(sample(read, 'tierstack_uffd_faults_total')).toBeGreaterThan(sample(filled, 'tierstack_uffd_faults_total'));
      // Evicted pages came back from the stack (served natively or through the JS path: by level).
      expect(sample(read, 'tierstack_uffd_pages_by_level_total')).toBeGreaterThan(sample(filled, 'tierstack_uffd_pages_by_level_total'));
      expect(sample(read, 'tierstack_uffd_pages_installed_total')).toBeGreaterThan(sample(filled, 'tierstack_uffd_pages_installed_total'));
    } finally {
      r.proc.stdin!.end();
    }
    expect(await r.exit).toBe(0);
  }, 60_000);
});
