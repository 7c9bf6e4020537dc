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
 *   handler copy, the kernel unregisters the ranges and the untouched pages read as zeros;
 * - the hang is not the end when the keeper kept a --state-dir: a new keeper on it takes the VM's
 *   uffd back from the VM itself (pidfd_getfd) and the VM finishes byte-correct.
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

function keeperOn(name: string, extra: { stateDir?: string; statusName?: string } = {}): RunningKeeper {
  const k = startKeeper({
    firecracker: join(dir, `${name}.sock`),
    statusPath: join(dir, `${extra.statusName ?? name}.status`),
    memfds: [{ name: 'dram', bytes: 32 << 20 }],
    standby: true,
    dataDir: join(dir, 'data'),
    snapshotId: 'fn',
    ...(extra.stateDir ? { stateDir: extra.stateDir } : {}),
  });
  keepers.push(k);
  return k;
}

async function keeperWithVm(name: string, clientArgs: string[], stateDir?: string) {
  const k = keeperOn(name, stateDir ? { stateDir } : {});
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

  it('keeper and workers killed -9: a new keeper on the same --state-dir takes the hanging VM back and it finishes byte-correct', async () => {
    const stateDir = join(dir, 'state');
    const { k, c, worker, standby } = await keeperWithVm('again', ['--touch-delay-us', '600', '--dontneed', '3000:16'], stateDir);
    await sleep(400);
    expect(c.running()).toBe(true);
    for (const pid of [k.pid, worker, standby]) process.kill(pid, 'SIGKILL');
    await k.exited;
    let blocked = false;
    for (let i = 0; i < 100 && !blocked; i++) {
      await sleep(100);
      blocked = blockedInUserfault(c.proc.pid!);
    }
    expect(blocked).toBe(true); // hanging, as without a state dir
    // A new keeper (a new socket: the VM does not reconnect) on the old state dir.
    const k2 = keeperOn('again2', { stateDir });
    const s = await k2.waitStatus((x) => x.recovered === 1 && x.vms.length === 1 && x.vms[0]!.state === 'served', 'the VM taken back and served');
    expect(s.vms[0]!.pid).toBe(c.proc.pid);
    const r = await c.result;
    expect(r.code).toBe(0);
    expect(r.out).toMatchObject({ pages: PAGES, mismatches: 0, dontneed_nonzero: 0 });
    expect(k2.stderr()).toMatch(/took back VM \d+ from a dead keeper \(pidfd_getfd\)/);
  }, 60_000);

  it('keeper killed alone, its orphaned worker serving: a new keeper on the state dir stops that worker and takes over', async () => {
    const stateDir = join(dir, 'state-orphan');
    const { k, c, worker } = await keeperWithVm('orphan', ['--touch-delay-us', '600'], stateDir);
    await sleep(300);
    process.kill(k.pid, 'SIGKILL');
    await k.exited;
    expect(alive(worker)).toBe(true); // serving on, unprotected
    const k2 = keeperOn('orphan2', { stateDir });
    const s = await k2.waitStatus((x) => x.recovered === 1 && x.vms.length === 1 && x.vms[0]!.state === 'served', 'the VM taken over');
    expect(s.vms[0]!.pid).toBe(c.proc.pid);
    expect(alive(worker)).toBe(false); // a second reader of the uffd would be wrong: it was killed first
    const r = await c.result;
    expect(r.code).toBe(0);
    expect(r.out).toMatchObject({ pages: PAGES, mismatches: 0 });
    expect(k2.stderr()).toMatch(/killed worker \d+ of the dead keeper/);
    // What it read while it had no keeper (REMOVE events among it) is lost with it: said, not hidden.
    expect(k2.stderr()).toMatch(/a worker of the dead keeper served on without it; ranges the VM removed meanwhile never reached a keeper/);
  }, 60_000);
});
