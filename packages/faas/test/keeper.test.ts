/**
 * The restore keeper (native/keeper/) with real processes and the real kernel userfaultfd: a
 * keeper holding Firecracker-style clients' uffds and a memfd DRAM cache, a worker
 * (test/fixtures/keeper-worker.mjs: what `tierstack restore-worker` runs) killed -9 while the
 * clients fault, a worker that keeps dying. Everything is checked on data: page bytes, the
 * keeper's status, the worker's stats.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createTierStack, FileTier } from '@tierstack/core';
import { SnapshotCatalog, importRawFile } from '../src/index.js';
import { PS, tmp, cleanup, imageBytes } from './fixtures.js';
import { buildAll, startKeeper, startClient, writeList, sleep, type RunningKeeper } from './keeper-helpers.js';

const PAGES = 8192;
const img = imageBytes(PAGES, 91); // p % 5 === 3 is zero
const stored = Array.from({ length: PAGES }, (_, p) => p).filter((p) => p % 5 !== 3).length;

let dir: string;
let client: string;
const keepers: RunningKeeper[] = [];

beforeAll(async () => {
  dir = tmp('faas-keeper-');
  ({ client } = buildAll(dir));
  writeFileSync(join(dir, 'mem.raw'), img);
  const stack = createTierStack({ tiers: [await FileTier.open({ dir: join(dir, 'data', 'pages') })] });
  await importRawFile(new SnapshotCatalog(stack), 'fn', join(dir, 'mem.raw'));
  await stack.close();
}, 120_000);
afterEach(async () => {
  for (const k of keepers.splice(0)) await k.stop();
});
afterAll(() => cleanup(dir));

function keeper(name: string, extra: Partial<Parameters<typeof startKeeper>[0]> = {}): RunningKeeper {
  const k = startKeeper({
    firecracker: join(dir, `${name}.sock`),
    statusPath: join(dir, `${name}.status`),
    memfds: [{ name: 'dram', bytes: 64 << 20 }],
    standby: true,
    dataDir: join(dir, 'data'),
    snapshotId: 'fn',
    ...extra,
  });
  keepers.push(k);
  return k;
}

describe('restore keeper (Firecracker)', () => {
  it('kill -9 of the worker 3 times at random points: both clients finish byte-correct, the dropped range reads zeros', async () => {
    const k = keeper('kills');
    await k.workerLine(0);
    const sock = join(dir, 'kills.sock');
    const mem = join(dir, 'mem.raw');
    // A: one thread touching every page in order (each touch a fault: faultAround 1), slowly, then
    // a balloon-like MADV_DONTNEED of 64 pages that must read as zeros. B: four threads touching
    // every page in a scattered order, so that several faults are in flight when a worker dies.
    const a = startClient(client, sock, mem, ['--touch-delay-us', '700', '--dontneed', '4000:64']);
    const order = Array.from({ length: PAGES }, (_, i) => (i * 2399 + 17) % PAGES);
    writeList(join(dir, 'order.txt'), order);
    const b = startClient(client, sock, mem, ['--touch-file', join(dir, 'order.txt'), '--threads', '4', '--touch-delay-us', '2000']);
    await k.waitStatus((s) => s.vms.length === 2 && s.vms.every((v) => v.state === 'served'), 'two VMs served');
    const killedWhileRunning: boolean[] = [];
    for (let kill = 0; kill < 3; kill++) {
      const line = await k.workerLine(kill);
      await sleep(300 + Math.floor(Math.random() * 900));
      killedWhileRunning.push(a.running() && b.running());
      process.kill(line.workerPid, 'SIGKILL');
      const next = await k.workerLine(kill + 1);
      expect(next.restarts).toBeGreaterThan(line.restarts);
    }
    const [ra, rb] = await Promise.all([a.result, b.result]);
    expect(killedWhileRunning).toEqual([true, true, true]); // every kill hit a restore in progress
    expect(ra.out).toMatchObject({ pages: PAGES, mismatches: 0, dontneed_nonzero: 0 });
    expect(ra.code).toBe(0);
    expect(rb.out).toMatchObject({ pages: PAGES, mismatches: 0 });
    expect(rb.code).toBe(0);
    const s = await k.waitStatus((st) => st.vms.length === 0, 'both VMs ended');
    expect(s.restarts).toBeGreaterThanOrEqual(3); // more only if a replacement failed to start
    expect(k.stderr()).toMatch(/"exit":\{"signal":"SIGKILL"/);
    expect(s.handshakes).toMatchObject({ accepted: 2, rejected: 0 });
    expect(s.wakeErrors).toBe(0);
    expect(s.wakes).toBeGreaterThanOrEqual(6); // each death woke both VMs (and again after adoption)
    expect(s.vmsEnded).toBe(2);
    // The last worker resumed both VMs (no prefetch, no recording) and served them to the end.
    const st = await k.waitStatus((x) => (x.worker?.stats?.['resumedRestores'] as number) === 2 && x.worker?.stats?.['instances'] === 0, 'the last worker stats');
    expect(st.worker!.stats!['rejected']).toBe(0);
    expect(st.worker!.stats!['poisoned']).toBe(0);
  }, 60_000);

  it('a range the VM dropped reads zeros even when the worker that read its REMOVE dies before the next touch', async () => {
    const k = keeper('removed');
    const first = await k.workerLine(0);
    const sock = join(dir, 'removed.sock');
    // Touch 600 pages, drop 200 of them (balloon-like), then wait: madvise returns only once the
    // worker's fault thread has read the REMOVE events — which it reports to the keeper at once.
    const c = startClient(client, sock, join(dir, 'mem.raw'), ['--touch', '0:600', '--dontneed', '100:200', '--dontneed-wait']);
    for (let i = 0; i < 600 && !c.output().includes('dropped'); i++) await sleep(50);
    expect(c.output()).toContain('dropped');
    process.kill(first.workerPid, 'SIGKILL');
    const next = await k.workerLine(1);
    expect(next.workerPid).not.toBe(first.workerPid);
    await k.waitStatus((s) => s.vms.length === 1 && s.vms.every((v) => v.state === 'served'), 'the VM served by the new worker');
    // The new worker never saw those REMOVE events: it zero-fills the range from the keeper's record.
    process.kill(c.proc.pid!, 'SIGUSR1');
    const r = await c.result;
    expect(r.out).toMatchObject({ pages: 600, mismatches: 0, dontneed_nonzero: 0 });
    expect(r.code).toBe(0);
  });

  it('the DRAM cache lives in the keeper memfd: pages a killed worker cached are served from it by the next worker', async () => {
    const k = keeper('cache', { faultAround: 16 });
    const first = await k.workerLine(0);
    const sock = join(dir, 'cache.sock');
    const mem = join(dir, 'mem.raw');
    const c1 = await startClient(client, sock, mem, []).result;
    expect(c1.out).toMatchObject({ pages: PAGES, mismatches: 0 });
    // Worker 1 read every stored page from the file tier and promoted it into the memfd cache.
    const s1 = await k.waitStatus((s) => s.vmsEnded === 1 && s.worker?.stats?.['instances'] === 0, 'first VM ended');
    expect((s1.worker!.stats!['pagesByLevel'] as number[])[1]).toBe(stored);
    process.kill(first.workerPid, 'SIGKILL');
    const second = await k.workerLine(1);
    expect(second.replaced).toBe(first.workerPid);
    const c2 = await startClient(client, sock, mem, []).result;
    expect(c2.out).toMatchObject({ pages: PAGES, mismatches: 0 });
    const s2 = await k.waitStatus((s) => s.vmsEnded === 2 && s.worker?.pid === second.workerPid && s.worker?.stats?.['restores'] === 1 && s.worker?.stats?.['instances'] === 0, 'second VM ended');
    // The stored pages came from level 0 (the memfd the keeper held), not from the file tier —
    // all but the few the set-associative cache had to evict for lack of ways in their set.
    const levels = s2.worker!.stats!['pagesByLevel'] as number[];
    expect(levels[0]! + (levels[1] ?? 0)).toBe(stored);
    expect(levels[0]!).toBeGreaterThan(stored * 0.97);
    expect(s2.worker!.stats!['jsPathPages']).toBe(0);
  }, 60_000);

  it('a worker that keeps dying is restarted with back-off, and the status says so', async () => {
    const k = keeper('crashloop', {
      standby: false,
      backoffBaseMs: 50,
      backoffMaxMs: 400,
      worker: ['/bin/sh', '-c', 'exit 3'],
    });
    const s = await k.waitStatus((x) => x.consecutiveFailures >= 6, 'six deaths in a row');
    expect(s.healthy).toBe(false);
    expect(['backoff', 'starting']).toContain(s.state);
    expect(s.backoffMs).toBe(400); // 50, 100, 200, 400 (capped)
    expect(s.lastExit!.exit).toEqual({ signal: null, code: 3 });
    expect(s.lastError).toMatch(/died/);
    expect(k.lines).toEqual([]); // no worker ever served
    // The log says it, at error level, with the delay.
    const logs = k.stderr().trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; nextStartInMs?: number });
    const loud = logs.filter((l) => l.level === 50 && /keeps dying/.test(l.msg));
    expect(loud.length).toBeGreaterThanOrEqual(3);
    expect(loud.at(-1)!.nextStartInMs).toBe(400);
    // A handshake arriving meanwhile is held, not refused: it is served once a worker lives.
  }, 60_000);
});
