/**
 * The real-device test: boots the QEMU guest once (tools/guestvm) with an emulated persistent
 * CXL type-3 device brought up as /dev/dax0.0 by the guest kernel's CXL + device-DAX drivers,
 * and runs guest/devdax-in-guest.test.ts there: the conformance suite and the multi-process
 * test (with a SIGKILL) on the devdax mapping. Skipped (with a warning) only when the harness
 * cannot be set up on this machine.
 */
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { guestCapability, runInGuest } from '@tierstack/guestvm';

const repo = fileURLToPath(new URL('../../..', import.meta.url));
const cap = await guestCapability();
if (!cap.ok) console.warn(`[cxl] devdax guest test SKIPPED: ${cap.reason}`);

describe.skipIf(!cap.ok)('CxlTier on /dev/dax0.0 in a QEMU guest', () => {
  it('passes the conformance suite and the multi-process test on a CXL devdax device', async () => {
    const vitest = join(repo, 'node_modules', 'vitest', 'vitest.mjs');
    const r = await runInGuest({
      command: `node ${vitest} run --project cxl packages/cxl/test/guest/devdax-in-guest.test.ts`,
      cwd: repo,
      setup: ['cxl-devdax'],
      cxl: { sizeMiB: 256 },
      memoryMiB: 2048,
      timeoutMs: 420_000,
    });
    const out = r.stdout + r.stderr;
    expect(r.exitCode, out.slice(-4000)).toBe(0);
    // Every test of the guest file ran there (none skipped): conformance + format + multi-process.
    expect(out).toMatch(/Tests\s+15 passed \(15\)/);
    expect(out).toContain('devdax multi-process');
  }, 480_000);
});
