import { describe, it, expect } from 'vitest';
import { existsSync } from 'node:fs';
import { createTierStack, MemoryTier } from '@tierstack/core';
import { createBlockDevice, assertUblkAvailable, defaultTransport } from '../src/index.js';

// The host kernel has no ublk: asking for it must give a typed error, never a hang or a crash.
describe.skipIf(existsSync('/dev/ublk-control'))('ublk on a kernel without ublk_drv', () => {
  it('reports TS_ERR_UNSUPPORTED and falls back to fuse-loop by default', async () => {
    expect(() => assertUblkAvailable()).toThrow(expect.objectContaining({ code: 'TS_ERR_UNSUPPORTED' }));
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 })] });
    await expect(createBlockDevice({ stack, sizeBytes: 1 << 20, transport: 'ublk' })).rejects.toMatchObject({ code: 'TS_ERR_UNSUPPORTED' });
    expect(defaultTransport()).toBe('fuse-loop');
    await stack.close();
  });

  it('rejects bad geometry with TS_ERR_BAD_ARGUMENT', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 })] });
    await expect(createBlockDevice({ stack, sizeBytes: 1000, transport: 'fuse-loop' })).rejects.toMatchObject({ code: 'TS_ERR_BAD_ARGUMENT' });
    await stack.close();
  });
});
