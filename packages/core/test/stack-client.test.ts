// StackClient (include/tierstack/stack_client.hpp) driven from real native threads, over stacks
// mixing a native C ABI tier (the testing kit's reference store) and JS tiers.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BasePageStore, FileTier, MemoryTier, TsStatus, createJsPath, createTierStack, type NativePageStoreHandle, type PageStore, type PutOptions } from '../src/index.js';
import { NativeReferenceTier, coreTestingAddon, makePages, pageMatches } from '../src/testing/index.js';
import { loadTestAddon, type TestAddon } from './helpers/test-addon.js';

let addon: TestAddon;

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'ts-sc-'));
  dirs.push(d);
  return d;
}

beforeAll(() => {
  addon = loadTestAddon();
}, 120_000);
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function verifyJs(store: PageStore, ns: string, pages: number[], version: number): Promise<number> {
  const { data, found } = await store.get(ns, pages);
  let bad = 0;
  for (let i = 0; i < pages.length; i++) {
    if (!found[i] || !pageMatches(data.subarray(i * 4096, (i + 1) * 4096), ns, pages[i]!, version)) bad++;
  }
  return bad;
}

describe('StackClient', () => {
  it('serves a JS-only stack through batched hand-offs from many native threads', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 256 * 4096 }), new FileTier({ dir: tempDir() })] });
    const path = createJsPath(stack);
    const ns = 'js-only';
    const id = path.register(ns);
    const client = addon.createClient(path);
    expect(path.chain).toHaveLength(0);

    const put = await addon.runWorkers(client, 'put', id, 4, 512, 16, 1);
    expect(put.errors).toBe(0);
    // Written by native threads, read back by JS: byte-correct.
    const all = Array.from({ length: 2048 }, (_, i) => i);
    expect(await verifyJs(stack, ns, all, 1)).toBe(0);

    const got = await addon.runWorkers(client, 'get', id, 4, 512, 8, 1);
    expect(got).toMatchObject({ mismatches: 0, misses: 0, errors: 0, found: 2048 });
    expect(got.byLevel[0]).toBe(2048); // level 0 = the JS path when there is no native tier
    // Requests of several threads were coalesced: fewer hand-offs than requests.
    const st = path.stats();
    expect(st.batches).toBeLessThan(st.requests);
    expect(st.errors).toBe(0);
    addon.closeClient(client);
    await stack.close();
  });

  it('serves native hits on native threads and misses through JS, with promotion and write-back', async () => {
    const top = new NativeReferenceTier({ name: 'map' });
    const bottom = new FileTier({ dir: tempDir(), native: false }); // a JS tier below the native one
    const stack = createTierStack({ tiers: [top, bottom] });
    const path = createJsPath(stack);
    expect(path.chain).toHaveLength(1);
    expect(path.hasJsTiers).toBe(true);
    expect(path.writeNative).toBe(true);
    const ns = 'mixed';
    const id = path.register(ns);

    // Pages 512..1023 only in the bottom (JS) tier; 0..511 written natively into the top.
    const low = Array.from({ length: 512 }, (_, i) => 512 + i);
    await bottom.put(ns, low, makePages(ns, low, 4096, 2));
    const client = addon.createClient(path, 64);
    const put = await addon.runWorkers(client, 'put', id, 2, 256, 32, 2); // pages 0..511
    expect(put.errors).toBe(0);
    const before = path.stats().batches;
    // Native puts into the top tier cost no JS hand-off.
    expect(before).toBe(0);

    const got = await addon.runWorkers(client, 'get', id, 2, 512, 32, 2);
    expect(got).toMatchObject({ mismatches: 0, misses: 0, errors: 0, found: 1024 });
    expect(got.byLevel[0]).toBe(512); // served by the native tier
    expect(got.byLevel[1]).toBe(512); // fetched through JS (pages 512..1023, thread 1's range)
    // After the JS path promoted them, a second read is all native.
    const again = await addon.runWorkers(client, 'get', id, 2, 512, 32, 2);
    expect(again.byLevel[0]).toBe(1024);

    // flush() from a native thread runs the stack's flush.
    const fl = await addon.runWorkers(client, 'flush', id, 1, 1, 1, 2);
    expect(fl.errors).toBe(0);
    // remove through the JS stack clears both tiers.
    const rm = await addon.runWorkers(client, 'remove', id, 2, 512, 64, 2);
    expect(rm.errors).toBe(0);
    const gone = await addon.runWorkers(client, 'get', id, 2, 512, 64, 2);
    expect(gone).toMatchObject({ found: 0, misses: 1024, errors: 0 });
    addon.closeClient(client);
    await stack.close();
  });

  it('serves a stack whose tiers are all native with no JavaScript: [native map tier, FileTier]', async () => {
    const top = new NativeReferenceTier({ name: 'map' });
    const bottom = await FileTier.open({ dir: tempDir() });
    const stack = createTierStack({ tiers: [top, bottom] });
    const path = createJsPath(stack);
    expect(path.chain).toHaveLength(2);
    expect(path.hasJsTiers).toBe(false);
    expect(path.jsWrites).toBe(true); // several tiers: removes, flushes and spills go through the stack
    expect(path.writeNative).toBe(true);
    const ns = 'all-native';
    // Pages only in the file tier, written there by JavaScript (like an imported snapshot).
    const pages = Array.from({ length: 1024 }, (_, i) => i);
    await bottom.put(ns, pages, makePages(ns, pages, 4096, 4));
    const id = path.register(ns);
    const client = addon.createClient(path, 64);
    const first = await addon.runWorkers(client, 'get', id, 2, 512, 16, 4);
    expect(first).toMatchObject({ mismatches: 0, misses: 0, errors: 0, found: 1024 });
    expect(first.byLevel[1]).toBe(1024); // read and verified from the file tier on native threads
    const second = await addon.runWorkers(client, 'get', id, 2, 512, 16, 4);
    expect(second).toMatchObject({ mismatches: 0, found: 1024 });
    expect(second.byLevel[0]).toBe(1024); // promoted natively into the tier above
    // Pages the stack does not hold are answered natively as well.
    const miss = await addon.runWorkers(client, 'get', path.register('nothing-here'), 1, 64, 16, 0);
    expect(miss).toMatchObject({ found: 0, misses: 64, errors: 0 });
    expect(path.stats().batches).toBe(0); // no JavaScript hand-off at all
    addon.closeClient(client);
    await stack.close();
  });

  it('refuses a blocking JS-path call made on the JS thread (TS_E_DEADLOCK) instead of hanging', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 })] });
    const path = createJsPath(stack);
    const id = path.register('dl');
    await stack.put('dl', [7], makePages('dl', [7], 4096));
    const client = addon.createClient(path);
    expect(addon.getOnJsThread(client, id, 7).rc).toBe(TsStatus.Deadlock);
    addon.closeClient(client);
    await stack.close();
  });

  it('reports typed per-request failures and fails waiters after close', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 })] });
    const path = createJsPath(stack);
    const client = addon.createClient(path);
    // An unregistered namespace id: the request fails with TS_E_BAD_ARGUMENT, nothing hangs.
    const unknown = await addon.runWorkers(client, 'get', 12345n, 1, 4, 4, 0);
    expect(unknown.errors).toBe(1);
    expect(unknown.lastError).toBe(TsStatus.BadArgument);
    const id = path.register('closing');
    addon.closeClient(client);
    const after = await addon.runWorkers(client, 'get', id, 2, 8, 4, 0);
    expect(after.errors).toBe(4);
    expect(after.lastError).toBe(TsStatus.Closed);
    await stack.close();
  });

  it('is re-entrant: a native tier that reads through another StackClient on the same thread', async () => {
    // A copy-on-write layer over a parent's stack is such a tier: the outer client's get is in
    // the middle of its walk of the native tiers when the inner client's get runs on its thread.
    const ns = 'nested';
    const N = 256;
    const all = Array.from({ length: N }, (_, i) => i);
    const even = all.filter((p) => p % 2 === 0);
    const odd = all.filter((p) => p % 2 === 1);
    const inner = createTierStack({ tiers: [new NativeReferenceTier({ name: 'inner' })] });
    await inner.put(ns, odd, makePages(ns, odd, 4096, 1));
    const innerPath = createJsPath(inner);
    innerPath.register(ns);
    const innerClient = addon.createClient(innerPath);

    const top = new NativeReferenceTier({ name: 'top' });
    await top.put(ns, even, makePages(ns, even, 4096, 1));
    const outer = createTierStack({ tiers: [top, new ThroughClientTier(coreTestingAddon().createClientStore(innerClient), inner)], promotion: 'none' });
    const outerPath = createJsPath(outer);
    const id = outerPath.register(ns);
    expect(outerPath.chain).toHaveLength(2);
    const client = addon.createClient(outerPath);

    // Batches of 64 mixing both levels, from two native threads: every page found, right bytes,
    // each from the level that holds it.
    const got = await addon.runWorkers(client, 'get', id, 2, N / 2, 64, 1);
    expect(got).toMatchObject({ found: N, misses: 0, mismatches: 0, errors: 0 });
    expect(got.byLevel.slice(0, 2)).toEqual([N / 2, N / 2]);
    addon.closeClient(client);
    addon.closeClient(innerClient);
    await outer.close();
    await inner.close();
  });
});

/** A native tier whose handle reads and writes through another stack's StackClient. */
class ThroughClientTier extends BasePageStore {
  constructor(
    private readonly handle: NativePageStoreHandle,
    private readonly below: PageStore,
  ) {
    super('through-client', below.pageSize);
  }
  override get nativeHandle(): NativePageStoreHandle {
    return this.handle;
  }
  protected async doGet(ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const r = await this.below.get(ns, pages);
    let hits = 0;
    for (let i = 0; i < pages.length; i++) {
      if (!r.found[i]) continue;
      r.data.copy(out, i * this.pageSize, i * this.pageSize, (i + 1) * this.pageSize);
      found[i] = 1;
      hits++;
    }
    return hits;
  }
  protected async doPut(ns: string, pages: number[], data: Buffer, options: PutOptions): Promise<void> {
    await this.below.put(ns, pages, data, options);
  }
  protected async doRemove(ns: string, pages: number[]): Promise<void> {
    await this.below.remove(ns, pages);
  }
}
