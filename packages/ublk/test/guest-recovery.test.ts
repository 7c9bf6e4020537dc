/**
 * ublk user recovery for real, inside a QEMU guest whose kernel has ublk_drv (tools/guestvm): a
 * device served by this package's dist (recoverable by default) over [MemoryTier 16 MiB,
 * FileTier on a virtio disk], write-through. One boot runs test/guest/ublk-recovery.sh: kill -9
 * of the server and a takeover by the next one with the data intact; a writer in flight across a
 * kill completes; a 64 MiB hog swapping through the device under a cgroup2 memory.max of 16 MiB
 * while the server is killed -9 twice — every byte right, no process left in D state; delete.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { guestCapability, runInGuest } from '@tierstack/guestvm';
import { sh } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, '..');
const repo = join(pkg, '..', '..');
const cap = await guestCapability();
if (!cap.ok) console.warn(`[ublk] guest recovery tests SKIPPED: ${cap.reason}`);

describe.skipIf(!cap.ok)('ublk user recovery in a QEMU guest', () => {
  beforeAll(async () => {
    await sh(`cd ${repo} && pnpm exec tsc -b packages/ublk`, { timeout: 120_000 });
    await sh(`mkdir -p ${join(pkg, '.cache')} && cc -O2 -o ${join(pkg, '.cache', 'hog')} ${join(here, 'fixtures', 'hog.c')}`);
  }, 150_000);

  it('a killed server is replaced: data, an in-flight writer and a swapping process carry on, every byte right', async () => {
    const r = await runInGuest({
      command: `bash ${join(here, 'guest', 'ublk-recovery.sh')} ${repo} ${join(pkg, '.cache', 'hog')}`,
      setup: ['ublk'],
      disk: { sizeMiB: 512 },
      memoryMiB: 1024,
      timeoutMs: 540_000,
    });
    if (r.exitCode !== 0) console.error(r.stdout, r.stderr);
    for (const check of [
      'takeover after kill -9',
      'a writer in flight at kill -9 waits, then completes',
      'swap: server killed -9 mid-swap (1), replaced',
      'swap: server killed -9 mid-swap (2), replaced',
      'swap: 64 MiB hog under a 16 MiB memory.max, server killed -9 twice, every byte right, nothing stuck',
      'del after 4 takeovers',
    ])
      expect(r.stdout).toContain(`OK ${check}`);
    expect(r.stdout).toContain('"badWords":0');
    expect(r.stdout).toContain('ALL-OK');
    expect(r.exitCode).toBe(0);
  }, 600_000);
});
