/**
 * The Firecracker UFFD handler against a C client that does exactly what Firecracker does on a
 * snapshot load with a Uffd backend (native-test/fc_client.c, compiled here with gcc).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync, existsSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TierStack } from '@tierstack/core';
import { SnapshotCatalog, importFirecracker, createRestoreHook, serveFirecracker, type FirecrackerHandler } from '../src/index.js';
import { PS, tmp, cleanup, imageBytes, makeStack } from './fixtures.js';

let dir: string;
let stack: TierStack;
let catalog: SnapshotCatalog;
let client: string;
const R0 = 256; // pages of guest region 0
const R1 = 128;
const img = imageBytes(R0 + R1, 31);
const regionArgs = ['--region', `${R0 * PS}:0`, '--region', `${R1 * PS}:${R0 * PS}`];

interface ClientResult {
  pages?: number;
  mismatches?: number;
  first_bad?: number;
  dontneed_nonzero?: number;
  sigbus?: boolean;
  closed_by_handler?: boolean;
  error?: string;
}

function run(args: string[], opts: { waitSignal?: boolean } = {}): { child: ChildProcess; result: Promise<ClientResult> } {
  const child = spawn(client, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  const result = new Promise<ClientResult>((resolve) => child.on('close', () => resolve(JSON.parse(out.trim().split('\n').pop() || '{}'))));
  void opts;
  return { child, result };
}

const until = async (cond: () => boolean, what: string): Promise<void> => {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
};

beforeAll(async () => {
  dir = tmp();
  client = join(dir, 'fc_client');
  execFileSync('gcc', ['-O2', '-o', client, fileURLToPath(new URL('../native-test/fc_client.c', import.meta.url))]);
  stack = await makeStack(dir, 128);
  catalog = new SnapshotCatalog(stack);
  writeFileSync(join(dir, 'mem'), img);
  await importFirecracker(catalog, 'vm', join(dir, 'mem'), { regions: [{ size: R0 * PS }, { size: R1 * PS, guest_phys_addr: 0x100000000 }] });
});
afterAll(async () => {
  await stack.close();
  cleanup(dir);
});

describe('Firecracker UFFD handler', () => {
  it('serves a VM (two regions, REMOVE → zeros), rejects garbage clients while it keeps working', async () => {
    const hook = createRestoreHook(stack, { catalog, faultAround: 8 });
    const sock = join(dir, 'fc.sock');
    const handler: FirecrackerHandler = await hook.serveFirecracker({ socketPath: sock, snapshotId: 'vm' });
    try {
      // VM 1 connects and waits (SIGUSR1 = "resume the VM") so the bad clients arrive meanwhile.
      const vm = run([sock, join(dir, 'mem'), ...regionArgs, '--touch', '0:300', '--touch', '350:30', '--dontneed', '20:10', '--wait-signal']);
      await until(() => handler.health().instances === 1, 'the VM to be adopted');

      // Garbage bytes, no descriptor.
      const g = connect(sock);
      g.on('error', () => undefined);
      g.end('this is not JSON');
      // Valid JSON but no descriptor.
      const nofd = run([sock, join(dir, 'mem'), ...regionArgs, '--no-fd']);
      expect((await nofd.result).closed_by_handler).toBe(true);
      // A region that does not fit the snapshot.
      const big = run([sock, join(dir, 'mem'), '--region', `${(R0 + R1 + 16) * PS}:0`, '--handshake-only']);
      expect((await big.result).closed_by_handler).toBe(true);
      // Not JSON, with a descriptor.
      const junk = run([sock, join(dir, 'mem'), ...regionArgs, '--json', '{"oops":', '--handshake-only']);
      expect((await junk.result).closed_by_handler).toBe(true);
      await until(() => handler.health().rejected >= 4, 'four rejections');
      expect(handler.health().lastError).toBeTruthy();

      // VM 1 still works: every touched page is right, the dropped range reads zeros.
      vm.child.kill('SIGUSR1');
      const r = await vm.result;
      expect(r.error).toBeUndefined();
      expect(r.pages).toBe(330);
      expect(r.mismatches).toBe(0);
      expect(r.dontneed_nonzero).toBe(0);
      await until(() => handler.health().instances === 0, 'the VM exit to end its restore');
      const h = handler.health();
      expect(h.restores).toBe(1);
      expect(h.faultsServed).toBeGreaterThan(0);
      expect(h.poisoned).toBe(0);
      // Its first-touch order became the snapshot's working set.
      expect((await catalog.get('vm')).workingSets.length).toBe(1);

      // A second VM prefetches that working set and is served correctly too.
      const vm2 = run([sock, join(dir, 'mem'), ...regionArgs, '--touch', '0:300', '--touch', '350:30']);
      const r2 = await vm2.result;
      expect(r2.mismatches).toBe(0);
      await until(() => handler.health().instances === 0, 'VM 2 to finish');
      expect(handler.health().restores).toBe(2);
    } finally {
      await handler.close();
    }
  });

  it('strict restore poisons a page whose checksum is bad: the toucher gets SIGBUS', async () => {
    const m = await catalog.get('vm');
    const bad = m.storedPageList()[40]!;
    const good = m.storedPageList()[41]!;
    // Damage the page where it is stored and drop cached copies.
    const bottom = stack.tiers[stack.tiers.length - 1]!;
    await bottom.put(m.namespace, [bad], Buffer.alloc(PS, 0x5a));
    await stack.tiers[0]!.remove(m.namespace, [bad]);
    const hook = createRestoreHook(stack, { catalog, faultAround: 1, prefetch: 'none', recordWorkingSet: false });
    const sock = join(dir, 'fc2.sock');
    const handler = await serveFirecracker(hook, { socketPath: sock, snapshotId: 'vm' });
    try {
      const r = await run([sock, join(dir, 'mem'), ...regionArgs, '--touch', `${good}:1`, '--expect-sigbus', String(bad)]).result;
      expect(r.mismatches).toBe(0);
      expect(r.sigbus).toBe(true);
      await until(() => handler.health().instances === 0, 'the toucher to exit');
      expect(handler.health().poisoned).toBeGreaterThan(0);
    } finally {
      await handler.close();
      await bottom.put(m.namespace, [bad], img.subarray(bad * PS, (bad + 1) * PS));
    }
  });

  it('an unknown snapshot id fails before binding', async () => {
    const hook = createRestoreHook(stack, { catalog });
    await expect(serveFirecracker(hook, { socketPath: join(dir, 'x.sock'), snapshotId: 'nope' })).rejects.toMatchObject({ code: 'TS_ERR_NOT_FOUND' });
  });
});

describe('restore target: a uffd arriving over a Unix socket', () => {
  it('restore(id, { kind: "socket" }) accepts one sender, serves it, and cleans up on close', async () => {
    const hook = createRestoreHook(stack, { catalog, faultAround: 4, prefetch: 'none', recordWorkingSet: false });
    const sock = join(dir, 'one.sock');
    const pending = hook.restore('vm', { kind: 'socket', socketPath: sock, timeoutMs: 20_000 });
    await until(() => existsSync(sock), 'the socket');
    const vm = run([sock, join(dir, 'mem'), ...regionArgs, '--touch', '100:200', '--wait-signal']);
    const h = await pending;
    vm.child.kill('SIGUSR1');
    const r = await vm.result;
    expect(r.mismatches).toBe(0);
    expect(r.pages).toBe(200);
    await h.adopted!.exited;
    const s = await h.close();
    expect(s.faults).toBeGreaterThan(0);
  });

  it('a sender without a descriptor is TS_ERR_PROTOCOL', async () => {
    const hook = createRestoreHook(stack, { catalog });
    const sock = join(dir, 'two.sock');
    const pending = hook.restore('vm', { kind: 'socket', socketPath: sock, timeoutMs: 20_000 });
    pending.catch(() => undefined);
    await until(() => existsSync(sock), 'the socket');
    const bad = run([sock, join(dir, 'mem'), ...regionArgs, '--no-fd']);
    await expect(pending).rejects.toMatchObject({ code: 'TS_ERR_PROTOCOL' });
    expect((await bad.result).closed_by_handler).toBe(true);
  });
});
