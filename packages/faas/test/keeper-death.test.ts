/**
 * What happens when the keeper itself dies (README.md, "When the keeper dies"), with real
 * processes and the real kernel userfaultfd:
 * - the keeper alone killed -9: its worker keeps every descriptor it was given and serves on;
 *   the VM finishes byte-correct, then the orphaned worker exits;
 * - keeper and workers killed -9, the client keeping its own uffd copy (Firecracker does): its
 *   next fault blocks in the kernel for good — nothing is left that could answer or fail it. The
 *   test shows the client asleep in the userfaultfd fault path, then kills it (that bound is the
 *   test's, not the system's);
 * - the same with a client that closed its copy after the handshake: the uffd dies with the last
 *   handler copy, the kernel unregisters the ranges and the untouched pages read as zeros.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createTierStack, FileTier } from '@tierstack/core';
import { SnapshotCatalog, importRawFile } from '../src/index.js';
import { tmp, cleanup, imageBytes } from './fixtures.js';
import { buildAll, startKeeper, startClient, sleep, alive, blockedInUserfault, type RunningKeeper } from './keeper-helpers.js';

const PAGES = 4096;
const img = imageBytes(PAGES, 23, () => false); // no zero pages: a zero page read back is always wrong

let dir: string;
let client: string;
const keepers: RunningKeeper[] = [];
const extraPids: number[] = [];

beforeAll(async () => {
  dir = tmp('faas-keeper-death-');
  ({ client } = buildAll(dir));
  writeFileSync(join(dir, 'mem.raw'), img);
  const stack = createTierStack({ tiers: [await FileTier.open({ dir: join(dir, 'data', 'pages') })] });
  await importRawFile(new SnapshotCatalog(stack), 'fn', join(dir, 'mem.raw'));
  await stack.close();
}, 120_000);
afterEach(async () => {
  for (const k of keepers.splice(0)) await k.stop();
  for (const p of extraPids.splice(0)) if (alive(p)) process.kill(p, 'SIGKILL');
});
afterAll(() => cleanup(dir));

async function keeperWithVm(name: string, clientArgs: string[]) {
  const k = startKeeper({
    firecracker: join(dir, `${name}.sock`),
    statusPath: join(dir, `${name}.status`),
    memfds: [{ name: 'dram', bytes: 32 << 20 }],
    standby: true,
    dataDir: join(dir, 'data'),
    snapshotId: 'fn',
  });
  keepers.push(k);
  const line = await k.workerLine(0);
  const c = startClient(client, join(dir, `${name}.sock`), join(dir, 'mem.raw'), clientArgs);
  const s = await k.waitStatus((x) => x.vms.length === 1 && x.vms[0]!.state === 'served' && x.standby?.state === 'standby', 'the VM served and a standby ready');
  extraPids.push(line.workerPid, s.standby!.pid);
  return { k, c, worker: line.workerPid, standby: s.standby!.pid };
}

describe('when the keeper dies', () => {
  it('keeper killed -9 alone: the worker serves on, the VM finishes byte-correct, then the worker exits', async () => {
    const { k, c, worker, standby } = await keeperWithVm('alone', ['--touch-delay-us', '600', '--dontneed', '100:32']);
    await sleep(400);
    expect(c.running()).toBe(true);
    process.kill(k.pid, 'SIGKILL');
    await k.exited;
    const r = await c.result;
    expect(r.code).toBe(0);
    expect(r.out).toMatchObject({ pages: PAGES, mismatches: 0, dontneed_nonzero: 0 });
    // The standby had nothing and left at once; the worker leaves once its last VM has ended.
    for (let i = 0; i < 100 && (alive(worker) || alive(standby)); i++) await sleep(100);
    expect(alive(standby)).toBe(false);
    expect(alive(worker)).toBe(false);
  }, 60_000);

  it('keeper and workers killed -9, the client keeping its uffd (as Firecracker does): its next fault blocks for good', async () => {
    const { k, c, worker, standby } = await keeperWithVm('all', ['--touch-delay-us', '600']);
    await sleep(400);
    expect(c.running()).toBe(true);
    for (const pid of [k.pid, worker, standby]) process.kill(pid, 'SIGKILL');
    await k.exited;
    // Nothing holds the uffd but the client itself: no reader, no one to UFFDIO_POISON, and the
    // kernel has no "handler gone" path while a reference lives. The toucher sleeps in the fault.
    let blocked = false;
    for (let i = 0; i < 100 && !blocked; i++) {
      await sleep(100);
      blocked = blockedInUserfault(c.proc.pid!);
    }
    expect(blocked).toBe(true);
    expect(c.running()).toBe(true);
    // A fault sleeping in handle_userfault is killable; the test's own bound ends it.
    c.proc.kill('SIGKILL');
    const r = await c.result;
    expect(r.signal).toBe('SIGKILL');
    expect(r.out).toEqual({}); // it never got to report
  }, 60_000);

  it('keeper and workers killed -9, the client having closed its uffd copy: untouched pages read as zeros', async () => {
    const { k, c, worker, standby } = await keeperWithVm('closed', ['--close-uffd', '--touch-delay-us', '600']);
    await sleep(400);
    expect(c.running()).toBe(true);
    for (const pid of [k.pid, worker, standby]) process.kill(pid, 'SIGKILL');
    await k.exited;
    // The last reference went with the handlers: the kernel unregistered the ranges and woke the
    // faults, which then fault as ordinary anonymous memory. The client runs on — on zeros.
    const r = await c.result;
    expect(r.code).toBe(1);
    expect(r.out.pages).toBe(PAGES);
    expect(r.out.mismatches).toBeGreaterThan(0);
    expect(r.out.zero_mismatches).toBe(r.out.mismatches); // every wrong page is a zero page
  }, 60_000);
});
