import { describe, it, expect, afterAll, beforeAll } from 'vitest';
import { mkdtempSync, rmSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, MemoryTier, FileTier, type TierStack } from '@tierstack/core';
import { createBlockDevice, type BlockDevice } from '../src/index.js';
import { sh } from './helpers.js';

describe('fuse-loop transport', () => {
  let dir: string;
  let stack: TierStack;
  let dev: BlockDevice;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tierstack-ublk-test-'));
    // A small DRAM tier so that most of the data goes down to the file tier and comes back up.
    stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 4 << 20 }), await FileTier.open({ dir: join(dir, 'file-tier') })] });
    dev = await createBlockDevice({ stack, sizeBytes: 64 << 20, transport: 'fuse-loop', name: 'fuse-test' });
  });

  afterAll(async () => {
    await dev?.close();
    await stack?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('round-trips random data written with dd (direct I/O)', async () => {
    expect(dev.path).toMatch(/^\/dev\/loop\d+$/);
    expect(dev.directIo).toBe(true);
    const src = join(dir, 'random');
    await sh(`dd if=/dev/urandom of=${src} bs=1M count=24 status=none`);
    await sh(`dd if=${src} of=${dev.path} bs=1M oflag=direct status=none`);
    // Back through the device, bypassing the page cache.
    await sh(`dd if=${dev.path} of=${join(dir, 'back')} bs=1M count=24 iflag=direct status=none`);
    expect(await sh(`cmp ${src} ${join(dir, 'back')} && echo same`)).toContain('same');
    const st = dev.stats();
    expect(st.write.bytes).toBeGreaterThanOrEqual(24 << 20);
    expect(st.read.bytes).toBeGreaterThanOrEqual(24 << 20);
    expect(st.write.errors + st.read.errors).toBe(0);
    // Pages the device never wrote read back as zeros.
    expect(await sh(`dd if=${dev.path} bs=4096 skip=${(40 << 20) / 4096} count=4 iflag=direct status=none | od -An -tx1 | sort -u`)).toMatch(/^\s*00( 00)*\s*\n?\*?\s*$/m);
  });

  it('handles unaligned writes (read-modify-write of partial pages) and discards', async () => {
    const a = join(dir, 'a');
    await sh(`dd if=/dev/urandom of=${a} bs=1000 count=13 status=none`);
    // 13000 bytes at byte offset 512*9 (sector 9): partial first and last pages, via a 512-byte block size.
    const before = join(dir, 'before');
    await sh(`dd if=${dev.path} of=${before} bs=4096 count=8 iflag=direct status=none`);
    await sh(`dd if=${a} of=${dev.path} bs=512 seek=9 conv=notrunc oflag=direct status=none || dd if=${a} of=${dev.path} bs=4096 seek=1 conv=notrunc status=none`);
    await sh('sync');
    const got = Buffer.from(await sh(`dd if=${dev.path} bs=4096 count=8 iflag=direct status=none | base64 -w0`), 'base64');
    const old = readFileSync(before);
    const data = readFileSync(a);
    // The loop device has 4 KiB logical blocks, so the kernel does the sub-block part; either way
    // the bytes around the write must be the old ones and the write itself must be there.
    const at = got.indexOf(data.subarray(0, 64));
    expect(at).toBeGreaterThanOrEqual(0);
    expect(got.subarray(at, at + data.length).equals(data)).toBe(true);
    expect(got.subarray(0, at).equals(old.subarray(0, at))).toBe(true);
    expect(got.subarray(at + data.length).equals(old.subarray(at + data.length))).toBe(true);
    // Discard the first 1 MiB: it reads back as zeros.
    await sh(`blkdiscard -o 0 -l ${1 << 20} ${dev.path}`);
    const z = await sh(`dd if=${dev.path} bs=1M count=1 iflag=direct status=none | od -An -tx1 | sort -u`);
    expect(z.replace(/[\s*]/g, '').replace(/0/g, '')).toBe('');
    expect(dev.stats().discard.requests).toBeGreaterThan(0);
  });

  it('fsync on the device becomes a stack flush: dirty pages reach the file tier', async () => {
    const before = { flushes: dev.stats().flush.requests, filePuts: stack.stats().tiers[1]!.ops.put.pages };
    await sh(`for i in 1 2 3 4; do dd if=/dev/urandom of=${dev.path} bs=4k count=4 seek=$((i * 100)) oflag=direct conv=fsync status=none & done; wait`);
    expect(dev.stats().flush.requests).toBeGreaterThan(before.flushes);
    expect(dev.stats().flush.errors).toBe(0);
    expect(stack.stats().tiers[1]!.ops.put.pages).toBeGreaterThanOrEqual(before.filePuts + 16);
  });

  it('tears down cleanly: no loop device, no mount', async () => {
    const path = dev.path;
    await dev.close();
    expect(await sh(`losetup -l -n -O NAME | grep -x ${path} || true`)).toBe('');
    expect(await sh(`grep -c tierstack /proc/mounts || true`)).toMatch(/^0/);
    expect(existsSync(path) ? (await sh(`losetup ${path} 2>&1 || true`)) : '').not.toContain('tierstack');
  });
});
