/**
 * The harness itself, against a real guest (QEMU TCG, Debian 6.12 kernel). Checks are batched
 * so the whole file boots five guests. If the harness cannot be set up here (no Debian archive
 * reachable, say), the guest tests are skipped and the reason is printed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { guestCapability, runInGuest, type GuestVmError } from '../src/index.js';

const cap = await guestCapability();
if (cap.ok) {
  console.log(`[guestvm] guest tests RUN in QEMU: kernel ${cap.kernelRelease}, cache ${cap.cacheDir}`);
} else {
  console.warn(`[guestvm] guest tests SKIPPED: ${cap.reason}`);
}

const scratch = mkdtempSync(join(tmpdir(), 'guestvm-test-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

async function expectGuestError(p: Promise<unknown>): Promise<GuestVmError> {
  try {
    await p;
  } catch (err) {
    return err as GuestVmError;
  }
  throw new Error('expected the guest run to fail');
}

describe.skipIf(!cap.ok)('guestvm: commands in a QEMU guest', () => {
  it('runs a command: node matches the host, exit status exact, stdout/stderr separate, ublk, ext4 on the disk, cgroup2, results share', async () => {
    const results = join(scratch, 'results');
    const streamed: Buffer[] = [];
    const r = await runInGuest({
      onStdout: (chunk) => streamed.push(chunk),
      command: [
        'node -v',
        'uname -r',
        'test -c /dev/ublk-control && echo ublk-control-present',
        'test -b /dev/vda && echo vda-sectors=$(cat /sys/block/vda/size)',
        // ext4 is a module: mount loads it on demand through the harness's modprobe.
        'mkfs.ext4 -q /dev/vda && mount /dev/vda /mnt && echo on-disk > /mnt/f && umount /mnt && mount /dev/vda /mnt && cat /mnt/f',
        'grep -q "^cgroup2 /sys/fs/cgroup cgroup2" /proc/mounts && echo cgroup2-mounted',
        'echo "$GREETING" > "$TIERSTACK_GUEST_RESULTS/greeting.txt"',
        'echo this-goes-to-stderr >&2',
        'exit 3',
      ].join('\n'),
      setup: ['ublk'],
      disk: { sizeMiB: 16 },
      env: { GREETING: "hello 'guest' $HOME" },
      resultsDir: results,
      timeoutMs: 90_000,
    });
    console.log(`[guestvm] round trip with ublk setup: ${r.durationMs} ms`);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toBe(process.version);
    expect(lines[1]).toBe(r.kernelRelease);
    expect(lines.slice(2)).toEqual(['ublk-control-present', `vda-sectors=${(16 * 1024 * 1024) / 512}`, 'on-disk', 'cgroup2-mounted']);
    expect(r.stderr).toBe('this-goes-to-stderr\n');
    expect(r.exitCode).toBe(3);
    expect(Buffer.concat(streamed).toString()).toBe(r.stdout);
    expect(r.setupLog).toContain('modprobe ublk_drv');
    expect(readFileSync(join(results, 'greeting.txt'), 'utf8')).toBe("hello 'guest' $HOME\n");
  });

  it('cxl-devdax: /dev/dax0.0 is 2 MiB aligned, a C program maps it and its pattern lands in the host-side backing file', async () => {
    const program = join(scratch, 'dax-pattern');
    execFileSync('gcc', ['-O2', '-Wall', '-o', program, join(import.meta.dirname, 'fixtures', 'dax-pattern.c')]);
    const backingFile = join(scratch, 'cxl-mem0.raw');
    const marker = `tierstack-dax-${process.pid}-${Date.now()}`;
    const mib = 4;
    const r = await runInGuest({
      command: `cat /sys/bus/dax/devices/dax0.0/align && exec ${program} /dev/dax0.0 ${marker} ${mib}`,
      setup: ['cxl-devdax'],
      cxl: { sizeMiB: 256, backingFile },
      timeoutMs: 120_000,
    });
    console.log(`[guestvm] round trip with CXL devdax setup: ${r.durationMs} ms`);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`2097152\nok ${mib << 20}\n`);
    expect(r.exitCode).toBe(0);
    // The devdax namespace starts somewhere inside the device (after its info block); find it.
    const data = readFileSync(backingFile);
    const at = data.indexOf(Buffer.from(marker));
    expect(at).toBeGreaterThanOrEqual(0);
    expect(data.indexOf(Buffer.from(marker), at + 1)).toBe(-1);
    const region = data.subarray(at, at + (mib << 20));
    let mismatches = 0;
    for (let i = marker.length; i < region.length; i++) {
      if (region[i] !== ((i * 131 + (i >> 12)) & 0xff)) mismatches++;
    }
    expect(mismatches).toBe(0);
  });

  it('a guest that outlives timeoutMs is killed: TS_ERR_TIMEOUT', async () => {
    // Short on purpose: it may fire while the guest still boots; either way QEMU must be killed.
    const err = await expectGuestError(runInGuest({ command: 'sleep 600', timeoutMs: 4_000 }));
    expect(err.code).toBe('TS_ERR_TIMEOUT');
    expect(err.message).toContain('within 4000 ms');
  });

  it('a failing setup step is TS_ERR_GUEST_SETUP with its log, and the command does not run', async () => {
    const results = join(scratch, 'setup-results');
    const err = await expectGuestError(
      runInGuest({
        command: 'touch "$TIERSTACK_GUEST_RESULTS/ran"',
        setup: ['ublk'],
        kernelArgs: ['module_blacklist=ublk_drv'], // the guest kernel refuses to load it
        resultsDir: results,
        timeoutMs: 90_000,
      }),
    );
    expect(err.code).toBe('TS_ERR_GUEST_SETUP');
    expect(err.setupLog).toContain("could not insert 'ublk_drv'");
    expect(existsSync(join(results, 'ran'))).toBe(false);
  });

  it('a guest kernel crash is TS_ERR_GUEST_CRASH with the console tail', async () => {
    const err = await expectGuestError(runInGuest({ command: 'echo partial; echo c > /proc/sysrq-trigger; sleep 60', timeoutMs: 60_000 }));
    expect(err.code).toBe('TS_ERR_GUEST_CRASH');
    expect(err.consoleTail).toContain('sysrq triggered crash');
    expect(err.stdout).toBe('partial\n');
  });

  it('a panic before the job starts is booted again (twice), then TS_ERR_GUEST_CRASH; the command never ran', async () => {
    // No init in the initramfs: the kernel panics while booting, before the job script runs.
    const results = join(scratch, 'boot-panic-results');
    const said: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array, ...rest: unknown[]) => {
      said.push(String(chunk));
      return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
    });
    try {
      const err = await expectGuestError(
        runInGuest({ command: 'touch "$TIERSTACK_GUEST_RESULTS/ran"', kernelArgs: ['rdinit=/no-such-init', 'root=/dev/no-such-disk'], resultsDir: results, timeoutMs: 60_000 }),
      );
      expect(err.code).toBe('TS_ERR_GUEST_CRASH');
      expect(err.consoleTail).toMatch(/Kernel panic/);
    } finally {
      spy.mockRestore();
    }
    const retries = said.filter((l) => l.includes('panicked while booting'));
    expect(retries.map((l) => /\((\d)\/2\)/.exec(l)?.[1])).toEqual(['1', '2']);
    expect(existsSync(join(results, 'ran'))).toBe(false);
  });
});

describe('guestvm: option validation (no guest needed)', () => {
  it.each([
    [{ command: '' }],
    [{ command: 'true', setup: ['cxl-devdax'] }],
    [{ command: 'true', setup: ['nope'] }],
    [{ command: 'true', cxl: { sizeMiB: 100 } }],
    [{ command: 'true', memoryMiB: 4096 }],
    [{ command: 'true', env: { 'BAD NAME': 'x' } }],
  ])('rejects %j with TS_ERR_BAD_ARGUMENT', async (opts) => {
    const err = await expectGuestError(runInGuest(opts as never));
    expect(err.code).toBe('TS_ERR_BAD_ARGUMENT');
  });
});
