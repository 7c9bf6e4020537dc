/**
 * A fuse-loop server process that dies (SIGKILL, mid-write) or is stopped (SIGTERM) leaves
 * nothing behind: no loop device, no FUSE mount, no hung writer.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sh } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..', '..');

function startServer(name: string, dir: string): Promise<{ child: ChildProcess; path: string }> {
  const child = spawn(process.execPath, [join(here, 'guest', 'serve.mjs'), 'add', name, String(64 << 20), join(dir, name), join(dir, 'state'), 'fuse-loop'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /"path":"([^"]+)"/.exec(out);
      if (m) resolve({ child, path: m[1]! });
    });
    child.once('exit', (code) => reject(new Error(`server exited early (${code})`)));
  });
}

const exited = (c: ChildProcess): Promise<number | null> => new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r(c.exitCode) : c.once('exit', (code) => r(code))));

async function noLeftovers(path: string): Promise<void> {
  expect(await sh(`losetup -l -n -O NAME | grep -x ${path} || true`)).toBe('');
  expect(await sh('grep -c "fuse.tierstack" /proc/mounts || true')).toMatch(/^0/);
}

describe.skipIf(!existsSync('/dev/fuse') || process.getuid?.() !== 0)('fuse-loop server process exit', () => {
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tierstack-exit-test-'));
    await sh(`cd ${repo} && pnpm exec tsc -b packages/ublk`, { timeout: 120_000 });
  }, 150_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('SIGTERM: the server tears the device down and exits 0', async () => {
    const { child, path } = await startServer('term', dir);
    await sh(`dd if=/dev/urandom of=${path} bs=1M count=4 oflag=direct status=none`);
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
    await noLeftovers(path);
    expect(existsSync(join(dir, 'state', 'term.json'))).toBe(false);
  });

  it('SIGKILL mid-write: the writer fails instead of hanging, the loop device clears itself, no mount stays', async () => {
    const { child, path } = await startServer('kill', dir);
    const writer = spawn('dd', ['if=/dev/zero', `of=${path}`, 'bs=64k', 'count=100000', 'oflag=direct', 'status=none'], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
    child.kill('SIGKILL');
    await exited(child);
    const code = await exited(writer); // hangs here (test timeout) if the kernel waits for the dead server
    expect(code).not.toBe(0);
    for (let i = 0; i < 50 && (await sh(`losetup -l -n -O NAME | grep -x ${path} || true`)) !== ''; i++) await new Promise((r) => setTimeout(r, 100));
    await noLeftovers(path);
  });
});
