/** The host-side pieces that need no guest: the cpio writer and shell quoting. */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildCpio } from '../src/cpio.js';
import { guestCacheDir, shQuote } from '../src/index.js';
import { hostLoopsPerJiffy } from '../src/qemu-args.js';
import { setupScript } from '../src/setup-steps.js';

describe('shQuote', () => {
  it.each([[''], ['plain'], ["it's"], ['$HOME `id` "x" \\ \n tab\t'], ["''"]])('round-trips %j through /bin/sh', (s) => {
    expect(execFileSync('/bin/sh', ['-c', `printf %s ${shQuote(s)}`], { encoding: 'utf8' })).toBe(s);
  });
});

describe('buildCpio (newc)', () => {
  const archive = buildCpio([
    { kind: 'dir', path: 'bin' },
    { kind: 'file', path: 'bin/hello', data: Buffer.from('hi\n'), mode: 0o755 },
    { kind: 'file', path: 'odd', data: Buffer.from('12345') },
    { kind: 'symlink', path: 'bin/sh', target: 'hello' },
    { kind: 'chardev', path: 'console', major: 5, minor: 1 },
  ]);

  it('aligns every header to 4 bytes and ends with the trailer', () => {
    expect(archive.length % 4).toBe(0);
    expect(archive.subarray(0, 6).toString()).toBe('070701');
    expect(archive.includes(Buffer.from('TRAILER!!!\0'))).toBe(true);
  });

  // The cache holds Debian's cpio once the harness has been set up (the guest tests do that).
  const cpio = join(guestCacheDir(), 'tools', 'bin', 'cpio');
  it.skipIf(!existsSync(cpio))('lists as written with GNU cpio', () => {
    const listing = execFileSync(cpio, ['-itv', '--quiet'], { input: archive, encoding: 'utf8' });
    const lines = listing.trim().split('\n');
    expect(lines.map((l) => l.split(/\s+/)[0])).toEqual(['drwxr-xr-x', '-rwxr-xr-x', '-rw-r--r--', 'lrwxrwxrwx', 'crw-------']);
    expect(listing).toContain('bin/sh -> hello');
    expect(listing).toMatch(/5,\s+1 .*console/);
    const extracted = execFileSync(cpio, ['-i', '--quiet', '--to-stdout', 'odd'], { input: archive });
    expect(extracted.toString()).toBe('12345');
  });
});

describe('hostLoopsPerJiffy', () => {
  it('is the TSC rate over the kernel HZ, or undefined when either is unknown', () => {
    expect(hostLoopsPerJiffy('processor\t: 0\ncpu MHz\t\t: 2096.039\n', 'CONFIG_X=y\nCONFIG_HZ=250\n')).toBe(8384156);
    expect(hostLoopsPerJiffy('processor\t: 0\n', 'CONFIG_HZ=250\n')).toBeUndefined();
    expect(hostLoopsPerJiffy('cpu MHz\t\t: 2096.039\n', '')).toBeUndefined();
  });
});

describe("setup step 'rxe'", () => {
  const script = setupScript(['rxe']);
  it('is valid sh that brings soft-RoCE up on a dummy netdev (not lo) and waits for the device', () => {
    execFileSync('/bin/sh', ['-n', '-c', script]);
    const lines = script.split('\n');
    const at = (re: RegExp): number => lines.findIndex((l) => re.test(l));
    const order = [
      /^modprobe -a rdma_rxe ib_uverbs rdma_ucm dummy$/,
      /^ip link add dummy0 type dummy$/,
      /^ip addr add 10\.77\.0\.1\/24 dev dummy0$/,
      /^ip link set dummy0 up$/,
      /^rdma link add rxe0 type rxe netdev dummy0$/,
      /^ibv_devices \| grep -qw rxe0$/,
    ].map(at);
    expect(order.every((i) => i >= 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(script).not.toMatch(/netdev lo\b/);
  });
});
