import { describe, expect, it } from 'vitest';
import { namespaceId } from '@tierstack/core';
import { stressStore } from '@tierstack/core/testing';
import { CxlTier } from '../src/index.js';

describe('CxlTier C ABI from many native threads', () => {
  it('serves only whole, right pages to concurrent native threads (puts, dirty puts, gets, evictions)', async () => {
    const tier = await CxlTier.open({ backing: { kind: 'memfd', size: 2 << 20 } }); // ~400 slots for 1024 keys
    const ns = tier.registerNamespace('threads');
    const r = await stressStore(tier.nativeHandle!, ns, { threads: 4, ops: 20_000, span: 1024, maxBatch: 8, dirtyEvery: 4 });
    expect(r.hits).toBeGreaterThan(1000);
    expect(r.mismatches).toBe(0);
    expect(r.errors).toBe(0);
    expect(r.checksum).toBe(0);
    const info = tier.info();
    expect(info.counters.evictions).toBeGreaterThan(0);
    expect(info.lockedSets).toBe(0);
    // Dirty pages stored through the C ABI were never evicted (no write-back path there).
    expect(info.counters.dirtyEvictions).toBe(0);
    expect(info.dirtyPages).toBeGreaterThan(0);
    expect(info.counters.validPages).toBe(info.validPages);
    expect(info.counters.dirtyPages).toBe(info.dirtyPages);
    await tier.close();
  });

  it('refuses to call a flush complete while dirty pages of an unnamed namespace stay behind', async () => {
    const tier = await CxlTier.open({ backing: { kind: 'memfd', size: 2 << 20 } });
    // A front-end writes dirty pages through the C ABI with only the namespace id.
    await stressStore(tier.nativeHandle!, namespaceId('abi-only'), { threads: 1, ops: 2_000, span: 64, maxBatch: 8, dirtyEvery: 4 });
    const dirty = tier.dirtyCount();
    expect(dirty).toBeGreaterThan(0);
    const written: number[] = [];
    const sink = async (b: { ns: string; pages: number[] }): Promise<void> => void written.push(...b.pages);
    await expect(tier.flushDirty(sink)).rejects.toMatchObject({ code: 'TS_ERR_NOT_FOUND' });
    expect(written).toEqual([]);
    // Once the namespace is named, the flush writes them all.
    tier.registerNamespace('abi-only');
    expect(await tier.flushDirty(sink)).toBe(dirty);
    expect(written).toHaveLength(dirty);
    expect(tier.dirtyCount()).toBe(0);
    await tier.close();
  });
});
