/**
 * Swap to the tier stack on the host kernel: a fuse-loop device as the only swap area, a memory
 * hog in a cgroup v1 memory limit far below its working set, every byte verified. The server
 * (this process) stays outside the limited cgroup.
 */
import { describe, it, expect, afterAll, beforeAll } from 'vitest';
import { mkdtempSync, rmSync, existsSync, mkdirSync, writeFileSync, readFileSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTierStack, MemoryTier, FileTier, type TierStack } from '@tierstack/core';
import { createBlockDevice, type BlockDevice } from '../src/index.js';
import { swapOn, swapOff, activeSwaps } from '../src/swap.js';
import { sh } from './helpers.js';

const CG_ROOT = '/sys/fs/cgroup/memory';
const canRun = existsSync(`${CG_ROOT}/memory.limit_in_bytes`) && existsSync('/dev/fuse') && process.getuid?.() === 0;

describe.skipIf(!canRun)('swap over fuse-loop with a cgroup v1 memory limit', () => {
  let dir: string;
  let stack: TierStack;
  let dev: BlockDevice;
  let cg: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tierstack-swap-test-'));
    stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 16 << 20 }), await FileTier.open({ dir: join(dir, 'file-tier') })] });
    dev = await createBlockDevice({ stack, sizeBytes: 256 << 20, transport: 'fuse-loop', name: 'swap-test' });
    cg = join(CG_ROOT, `tierstack-test-${process.pid}`);
    mkdirSync(cg);
    writeFileSync(join(cg, 'memory.limit_in_bytes'), String(32 << 20));
    writeFileSync(join(cg, 'memory.swappiness'), '100');
    const here = dirname(fileURLToPath(import.meta.url));
    await sh(`cc -O2 -o ${join(dir, 'hog')} ${join(here, 'fixtures', 'hog.c')}`);
  });

  afterAll(async () => {
    if (dev && (await activeSwaps()).includes(dev.path)) await swapOff(dev.path).catch(() => undefined);
    if (cg && existsSync(cg)) rmdirSync(cg);
    await dev?.close();
    await stack?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('pushes a 96 MiB working set through the device under a 32 MiB limit and gets every byte back', async () => {
    await swapOn(dev.path, { priority: 32000 });
    expect(await activeSwaps()).toContain(dev.path);
    const out = await sh(`sh -c 'echo $$ > ${cg}/cgroup.procs && exec ${join(dir, 'hog')} 96 7'`, { timeout: 110_000 });
    const res = JSON.parse(out.trim()) as { badWords: number; mib: number };
    expect(res).toMatchObject({ mib: 96, badWords: 0 });
    const st = dev.stats();
    // At least the part above the limit went out through the device, and came back in.
    expect(st.write.bytes).toBeGreaterThan(48 << 20);
    expect(st.read.bytes).toBeGreaterThan(16 << 20);
    expect(st.read.errors + st.write.errors).toBe(0);
    expect(Number(readFileSync(join(cg, 'memory.max_usage_in_bytes'), 'utf8'))).toBeLessThanOrEqual(33 << 20);
    await swapOff(dev.path);
    expect(await activeSwaps()).not.toContain(dev.path);
  });
});
