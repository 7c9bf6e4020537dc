// The native kit: the C ABI conformance suite against its own reference store, the drivers, and
// createJsPath's duck typing of layered stores.
import { describe, expect, it } from 'vitest';
import { MemoryTier, TsStatus, createJsPath, createTierStack, isLayeredStore, NativeStatus, ErrorCode, type PageStore } from '../src/index.js';
import {
  NativeReferenceTier,
  driveStore,
  driveStoreSync,
  makePages,
  runNativeStoreConformance,
  runPageStoreConformance,
  runStoreOps,
  stressStore,
} from '../src/testing/index.js';
import { loadTestAddon } from './helpers/test-addon.js';

loadTestAddon();

runPageStoreConformance('NativeReferenceTier', () => new NativeReferenceTier());
runNativeStoreConformance('reference store', () => new NativeReferenceTier(), { promotion: true });
runNativeStoreConformance('reference store (dirty puts)', () => new NativeReferenceTier(), { putFlags: 1, threads: 2 });

describe('native kit drivers', () => {
  it('drives a handle: put then get walk the same sequence, timed; a miss and a failing page are reported', async () => {
    const t = new NativeReferenceTier();
    const h = t.nativeHandle;
    const pages = Float64Array.from({ length: 64 }, (_, i) => i * 7);
    const put = await driveStore(h, 'd', 'put', pages, 8, 8, { latencies: true, fill: 0x33 });
    expect(put).toMatchObject({ status: TsStatus.Ok, calls: 8, misses: 0 });
    expect(put.latencies).toHaveLength(8);
    const got = driveStoreSync(h, 'd', 'get', pages, 16, 4, { start: 8 });
    expect(got).toMatchObject({ status: TsStatus.Ok, calls: 4, misses: 0 });
    expect((await t.get('d', [7])).data.every((b) => b === 0x33)).toBe(true);
    expect(driveStoreSync(h, 'd', 'get', [1, 2], 2, 1).misses).toBe(2);
    t.failPages('d', [7], TsStatus.Checksum);
    expect(driveStoreSync(h, 'd', 'get', [7], 1, 1).misses).toBe(1);
    expect((await t.get('d', [7])).hits).toBe(0); // a miss from JS; native callers see the status
    await t.close();
    expect(driveStoreSync(h, 'd', 'get', pages, 1, 1).status).toBe(TsStatus.Closed);
  });

  it('checks every page read by many threads, and stresses shared pages', async () => {
    const t = new NativeReferenceTier();
    const pages = Array.from({ length: 1000 }, (_, i) => i);
    expect(await runStoreOps(t.nativeHandle, 'o', 'put', pages, { threads: 4, batch: 13, version: 5 })).toMatchObject({ errors: 0 });
    const r = await runStoreOps(t.nativeHandle, 'o', 'get', pages, { threads: 3, batch: 17, split: 'deal', versions: [5] });
    expect(r).toMatchObject({ found: 1000, misses: 0, mismatches: 0, errors: 0 });
    expect((await runStoreOps(t.nativeHandle, 'o', 'get', pages, { threads: 2, versions: [4] })).mismatches).toBe(2000 / 2);
    const s = await stressStore(t.nativeHandle, 's', { threads: 4, ops: 500, span: 64, removeEvery: 5 });
    expect(s).toMatchObject({ mismatches: 0, errors: 0, noSpace: 0 });
    expect(s.hits).toBeGreaterThan(0);
    await t.close();
  });
});

describe('native statuses and createJsPath', () => {
  it('names every TS_E_* status once and maps it to its ErrorCode', () => {
    expect(NativeStatus[TsStatus.NoSpace]).toBe(ErrorCode.NoSpace);
    expect(NativeStatus[TsStatus.Timeout]).toBe(ErrorCode.Timeout);
    expect(Object.keys(NativeStatus)).toHaveLength(12);
  });

  it('recognises a layered store by its capabilities, not its class', async () => {
    const top = new NativeReferenceTier();
    const stack = createTierStack({ tiers: [top, new MemoryTier({ maxSize: 1 << 20 })] });
    // A wrapper that is no TierStack instance but stacks tiers the same way.
    const wrapper: PageStore = Object.create(stack, { name: { value: 'wrapper' } });
    expect(wrapper instanceof Object).toBe(true);
    expect(isLayeredStore(wrapper)).toBe(true);
    expect(isLayeredStore(top)).toBe(false);
    const a = createJsPath(stack);
    const b = createJsPath({ ...({} as PageStore), pageSize: stack.pageSize, tiers: stack.tiers, writePolicy: stack.writePolicy, nativeChain: () => stack.nativeChain() } as unknown as PageStore);
    expect({ chain: b.chain, hasJsTiers: b.hasJsTiers, jsWrites: b.jsWrites, writeNative: b.writeNative }).toEqual({
      chain: a.chain,
      hasJsTiers: a.hasJsTiers,
      jsWrites: a.jsWrites,
      writeNative: a.writeNative,
    });
    expect(b.chain).toEqual([top.nativeHandle]);
    await stack.put('x', [1], makePages('x', [1], 4096));
    await stack.close();
  });
});
