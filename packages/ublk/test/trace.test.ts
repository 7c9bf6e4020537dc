/**
 * The block request trace on the host's fuse-loop device: records match the device's own stats,
 * name the tier that served each read (the file tier, or 'zero' for pages never written), are
 * absent while tracing is off, and a ring that overflows counts what it lost.
 */
import { describe, it, expect, afterAll, beforeAll } from 'vitest';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, FileTier, summarizeTrace, type TierStack, type TraceRecord } from '@tierstack/core';
import { createBlockDevice, type BlockDevice } from '../src/index.js';
import { sh } from './helpers.js';

const MiB = 1 << 20;
const canRun = existsSync('/dev/fuse') && process.getuid?.() === 0;

describe.skipIf(!canRun)('block request trace (fuse-loop)', () => {
  let dir: string;
  let stack: TierStack;
  let dev: BlockDevice;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tierstack-trace-test-'));
    stack = createTierStack({ tiers: [await FileTier.open({ dir: join(dir, 'file-tier'), name: 'file' })], policy: { write: 'write-through' } });
    dev = await createBlockDevice({ stack, sizeBytes: 64 * MiB, transport: 'fuse-loop', name: 'trace-test' });
  });
  afterAll(async () => {
    await dev?.close();
    await stack?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const inRange = (r: TraceRecord, from: number, to: number): boolean => r.offset >= from && r.offset + r.length <= to;

  it('records every request with its op, position, size and serving tier', async () => {
    dev.trace.take(); // nothing before start
    const before = dev.stats();
    dev.trace.start(1 << 16);
    await sh(`dd if=/dev/urandom of=${dev.path} bs=64k count=64 oflag=direct status=none`);
    await sh(`dd if=${dev.path} of=/dev/null bs=64k count=64 iflag=direct status=none`);
    await sh(`dd if=${dev.path} of=/dev/null bs=64k count=16 skip=512 iflag=direct status=none`); // 32 MiB on: never written
    const after = dev.stats();
    const { records, lost } = dev.trace.take();
    dev.trace.stop();
    expect(lost).toBe(0);
    const count = (op: string): number => records.filter((r) => r.op === op).length;
    // Every request the device completed in the window is in the trace, and nothing else.
    expect(count('write')).toBe(after.write.requests - before.write.requests);
    expect(count('read')).toBe(after.read.requests - before.read.requests);
    const writes = records.filter((r) => r.op === 'write');
    expect(writes.reduce((a, r) => a + r.length, 0)).toBe(after.write.bytes - before.write.bytes);
    expect(writes.every((r) => r.tier === 'stack' && inRange(r, 0, 4 * MiB))).toBe(true);
    const written = records.filter((r) => r.op === 'read' && inRange(r, 0, 4 * MiB));
    expect(written.reduce((a, r) => a + r.length, 0)).toBe(4 * MiB);
    expect(written.every((r) => r.tier === 'file')).toBe(true);
    const blank = records.filter((r) => r.op === 'read' && inRange(r, 32 * MiB, 33 * MiB));
    expect(blank.reduce((a, r) => a + r.length, 0)).toBe(MiB);
    expect(blank.every((r) => r.tier === 'zero')).toBe(true);
    expect(records.every((r) => r.latencyUs > 0 && r.atUs > 0)).toBe(true);
    // dd wrote one sequential run: every write after the first starts where the previous ended.
    const s = summarizeTrace(writes);
    expect(s.random).toBe(0);
    expect(s.sequential).toBe(writes.length - 1);
    expect(s.ops.write!.bytes).toBe(4 * MiB);
  });

  it('records nothing while off; an overflowing ring keeps the newest and counts the rest as lost', async () => {
    await sh(`dd if=/dev/zero of=${dev.path} bs=4k count=64 seek=2048 oflag=direct status=none`);
    expect(dev.trace.take().records).toEqual([]);
    // The ring's size is fixed when it is first enabled: a fresh device for the smallest one.
    const small = await createBlockDevice({ stack, sizeBytes: 64 * MiB, transport: 'fuse-loop', name: 'trace-small' });
    const before = small.stats();
    let records: TraceRecord[];
    let lost: number;
    let delta: number;
    try {
      expect(small.trace.start(1)).toBe(1024); // the smallest ring
      await sh(`dd if=/dev/zero of=${small.path} bs=4k count=3000 seek=4096 oflag=direct status=none`);
      delta = small.stats().write.requests - before.write.requests;
      ({ records, lost } = small.trace.take());
      small.trace.stop();
    } finally {
      await small.close();
    }
    expect(delta).toBeGreaterThanOrEqual(3000);
    expect(records).toHaveLength(1024);
    expect(records.length + lost).toBe(delta);
    // The newest survive: the last 4 KiB write is the last record.
    expect(records.at(-1)).toMatchObject({ op: 'write', offset: (4096 + 2999) * 4096, length: 4096 });
  });
});
