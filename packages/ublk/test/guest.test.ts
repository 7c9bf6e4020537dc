/**
 * ublk for real, inside a QEMU guest whose kernel has ublk_drv (tools/guestvm). One boot runs
 * every check of test/guest/ublk-guest.sh against a device served by this package's dist over
 * [MemoryTier 16 MiB, FileTier on a virtio disk]: dd round trip, unaligned writes, ext4, fio
 * verify, swap under a cgroup2 memory.max, delete with no leftovers, kill -9 mid-I/O.
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
if (!cap.ok) console.warn(`[ublk] guest tests SKIPPED: ${cap.reason}`);

describe.skipIf(!cap.ok)('ublk in a QEMU guest', () => {
  beforeAll(async () => {
    // The guest runs the built JS (it sees the host's root read-only) and a C memory hog.
    await sh(`cd ${repo} && pnpm exec tsc -b packages/ublk`, { timeout: 120_000 });
    await sh(`mkdir -p ${join(pkg, '.cache')} && cc -O2 -o ${join(pkg, '.cache', 'hog')} ${join(here, 'fixtures', 'hog.c')}`);
  }, 150_000);

  it('serves dd, ext4, fio, swap under a cgroup limit, and survives its server being killed', async () => {
    const r = await runInGuest({
      command: `bash ${join(here, 'guest', 'ublk-guest.sh')} ${repo} ${join(pkg, '.cache', 'hog')}`,
      setup: ['ublk'],
      disk: { sizeMiB: 512 },
      memoryMiB: 1024,
      timeoutMs: 540_000,
    });
    if (r.exitCode !== 0) console.error(r.stdout, r.stderr);
    for (const check of ['dd 16 MiB round trip', 'unaligned 512-byte writes', 'ext4 file round trip', 'fio randwrite verify', 'swap:', 'del: no leftovers', 'kill -9 mid-I/O'])
      expect(r.stdout).toContain(`OK ${check}`);
    expect(r.stdout).toContain('ALL-OK');
    expect(r.exitCode).toBe(0);
  }, 600_000);
});
