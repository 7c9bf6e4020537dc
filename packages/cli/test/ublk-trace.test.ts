/**
 * `tierstack ublk trace` against a real `tierstack ublk add` fuse-loop server: the trace streamed
 * over the server's control socket summarises exactly the requests the device served meanwhile.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TraceSummary } from '@tierstack/core';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'ts-cli-trace-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function start(args: string[]) {
  const proc = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((r) => proc.on('exit', (c) => r(c)));
  const waitFor = async (re: RegExp, which: 'out' | 'err'): Promise<string> => {
    for (let i = 0; i < 600; i++) {
      const m = re.exec(which === 'out' ? out : err);
      if (m) return m[0];
      if (proc.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no ${re}: ${out}\n${err.slice(-2000)}`);
  };
  return { proc, exit, out: () => out, waitFor };
}

describe.skipIf(!existsSync('/dev/fuse') || process.getuid?.() !== 0)('tierstack ublk trace', () => {
  it('streams the running server\'s requests and prints their summary (text and --json)', async () => {
    const stateDir = join(dir, 'state');
    const server = start(['ublk', 'add', '--name', 'tr', '--size', '64M', '--transport', 'fuse-loop', '--state-dir', stateDir]);
    try {
      const ready = JSON.parse(await server.waitFor(/^\{"event":"ready".*$/m, 'out')) as { path: string; control: string };
      expect(ready.control).toBe(join(stateDir, 'tr.ctl'));
      const stats = () => JSON.parse(execFileSync('cat', [join(stateDir, 'tr.stats.json')], { encoding: 'utf8' })) as { device: { write: { requests: number } } };

      // --json, ended by Ctrl-C: 2 MiB written in 64 KiB requests, then read back.
      const t = start(['ublk', 'trace', 'tr', '--json', '--state-dir', stateDir]);
      await t.waitFor(/^tracing tr .*$/m, 'err');
      execFileSync('dd', ['if=/dev/urandom', `of=${ready.path}`, 'bs=64k', 'count=32', 'oflag=direct', 'status=none']);
      execFileSync('dd', [`if=${ready.path}`, 'of=/dev/null', 'bs=64k', 'count=32', 'iflag=direct', 'status=none']);
      t.proc.kill('SIGINT');
      expect(await t.exit).toBe(0);
      const j = JSON.parse(t.out()) as { device: string; path: string; lost: number; summary: TraceSummary };
      expect(j).toMatchObject({ device: 'tr', path: ready.path, lost: 0 });
      expect(j.summary.ops.write).toMatchObject({ bytes: 2 << 20 });
      expect(j.summary.ops.read!.bytes).toBeGreaterThanOrEqual(2 << 20);
      expect(j.summary.tiers['file']).toBeGreaterThan(0); // the reads came from the file tier
      expect(j.summary.sizes.find((b) => b.upToBytes === 65536)!.count).toBeGreaterThanOrEqual(j.summary.ops.write!.count);

      // Text, by name of the block device path, for a fixed time: a summary even with no I/O.
      const text = execFileSync(process.execPath, [bin, 'ublk', 'trace', ready.path, '--seconds', '0.3', '--state-dir', stateDir], { encoding: 'utf8' });
      expect(text).toMatch(new RegExp(`^tr \\(${ready.path}\\)\\n\\d+ requests over`));
      expect(stats().device.write.requests).toBeGreaterThanOrEqual(j.summary.ops.write!.count);
      expect(() => execFileSync(process.execPath, [bin, 'ublk', 'trace', 'nope', '--state-dir', stateDir], { stdio: 'pipe' })).toThrow(/TS_ERR_NOT_FOUND|no device nope/);
    } finally {
      server.proc.kill('SIGTERM');
      expect(await server.exit).toBe(0);
    }
  }, 60_000);
});
