/**
 * Removed ranges across the keeper's own death (README.md, "When the keeper dies"), with real
 * processes and the real kernel userfaultfd: a VM that dropped memory (MADV_DONTNEED page by page:
 * REMOVE events) keeps reading zeros there after the keeper AND its workers were killed -9 and a
 * new keeper on the same --state-dir took it back — the ranges are in vm-<pid>.removed
 * (native/keeper/state.c). Past 1,024 separate ranges the overflow is kept too and logged again by
 * the new keeper. A removed-ranges log that is corrupt, truncated or missing makes the new keeper
 * refuse that VM (logged at level 60, records kept), never serve it, and the keeper runs on.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createTierStack, FileTier } from '@tierstack/core';
import { SnapshotCatalog, importRawFile } from '../src/index.js';
import { PS, tmp, cleanup, imageBytes } from './fixtures.js';
import {
  buildAll,
  buildDropClient,
  startKeeper,
  startClient,
  sleep,
  alive,
  procStartTime,
  readRemovedLog,
  removedLogBytes,
  type RunningKeeper,
} from './keeper-helpers.js';

const PAGES = 4096;
const img = imageBytes(PAGES, 29, () => false); // no zero pages: old bytes in a dropped page are never zeros

let dir: string;
let dropClient: string;
const keepers: RunningKeeper[] = [];
const extraPids: number[] = [];

beforeAll(async () => {
  dir = tmp('faas-keeper-removed-');
  buildAll(dir);
  dropClient = buildDropClient(dir);
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

function keeperOn(name: string, stateDir: string): RunningKeeper {
  const k = startKeeper({
    firecracker: join(dir, `${name}.sock`),
    statusPath: join(dir, `${name}.status`),
    memfds: [{ name: 'dram', bytes: 32 << 20 }],
    standby: true,
    dataDir: join(dir, 'data'),
    snapshotId: 'fn',
    stateDir,
  });
  keepers.push(k);
  return k;
}

async function until(pred: () => boolean, timeoutMs = 30_000): Promise<boolean> {
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await sleep(50)) if (pred()) return true;
  return pred();
}

/**
 * A VM touching pages 0..touch-1 and dropping `drops` page by page under keeper 1; once keeper 1
 * wrote the drops down (or 30 s passed: an older keeper never does), keeper 1 and both its
 * workers are killed -9 and keeper 2 takes the VM back; then the VM reads every page.
 */
async function dropThenKeeperDies(name: string, touch: number, drops: string[], expectLog: (l: NonNullable<ReturnType<typeof readRemovedLog>>) => boolean) {
  const stateDir = join(dir, `${name}.state`);
  const k1 = keeperOn(name, stateDir);
  const line = await k1.workerLine(0);
  const c = startClient(dropClient, join(dir, `${name}.sock`), join(dir, 'mem.raw'), ['--touch', `0:${touch}`, ...drops.flatMap((d) => ['--drop', d])]);
  extraPids.push(c.proc.pid!);
  const s1 = await k1.waitStatus((x) => x.vms.length === 1 && x.vms[0]!.state === 'served' && x.standby?.state === 'standby', 'the VM served and a standby ready');
  extraPids.push(line.workerPid, s1.standby!.pid);
  expect(await until(() => c.output().includes('"phase":"dropped"'))).toBe(true);
  const logPath = join(stateDir, `vm-${c.proc.pid}.removed`);
  let before: ReturnType<typeof readRemovedLog> = null;
  const written = await until(() => {
    before = readRemovedLog(logPath);
    return before !== null && expectLog(before);
  });
  for (const pid of [k1.pid, line.workerPid, s1.standby!.pid]) process.kill(pid, 'SIGKILL');
  await k1.exited;
  // A new keeper (a new socket: the VM does not reconnect) on the dead one's state dir.
  const k2 = keeperOn(`${name}2`, stateDir);
  const s2 = await k2.waitStatus((x) => x.recovered === 1 && x.vms.length === 1 && x.vms[0]!.state === 'served', 'the VM taken back and served');
  expect(s2.vms[0]!.pid).toBe(c.proc.pid);
  const taken = readRemovedLog(logPath); // keeper 2's own log, before the VM ends and it goes
  process.kill(c.proc.pid!, 'SIGUSR1'); // the VM reads every page now
  const r = await c.result;
  return { k2, r, written, stateDir, before: before as ReturnType<typeof readRemovedLog>, taken };
}

describe('removed ranges survive the keeper', () => {
  it('keeper and workers killed -9 after the VM dropped 700 pages: the new keeper hands the ranges on, they read zeros, every other page is byte-correct', async () => {
    // 400 adjacent pages (400 REMOVE events merging into one range: the log is compacted on the
    // way) and 300 separate ones (every other page of 600..1198), all touched before.
    const { k2, r, written, stateDir, before, taken } = await dropThenKeeperDies('drop', 1200, ['100:400', '600:300:2'], (l) => {
      const pages = l.ranges.reduce((n, [a, b]) => n + (b - a) / PS, 0);
      return l.ranges.length === 301 && pages === 700 && !l.overflow;
    });
    expect(r.out).toMatchObject({ pages: PAGES, dropped: 700, mismatches: 0, dontneed_nonzero: 0 });
    expect(r.code).toBe(0);
    expect(written).toBe(true); // keeper 1 had every drop on disk before it was killed
    expect(before!.records).toBeLessThan(700); // 700 REMOVE events appended, compacted on the way
    expect(k2.stderr()).toMatch(/took back VM \d+ from a dead keeper \(pidfd_getfd\), 301 removed ranges handed on/);
    expect(taken).toMatchObject({ records: 301, overflow: false }); // keeper 2 starts its own log, compacted
    // The VM ended: its record and its removed log are gone with it.
    await k2.waitStatus((x) => x.vms.length === 0 && x.vmsEnded === 1, 'the VM ended');
    expect(readdirSync(stateDir).sort()).toEqual(['keeper.json']);
    await k2.stop();
    expect(readdirSync(stateDir)).toEqual([]);
  }, 90_000);

  it('past 1,024 separate ranges the overflow survives too and the new keeper logs it again (old bytes only past the bound)', async () => {
    // 1,100 separate pages: the first 1,024 are kept, the 76 after (from page 200 + 2 * 1024) are not.
    const { k2, r, written } = await dropThenKeeperDies('overflow', 2400, ['200:1100:2'], (l) => l.ranges.length === 1024 && l.overflow);
    expect(written).toBe(true);
    expect(k2.stderr()).toMatch(/VM \d+: more than 1024 separate removed ranges came under an earlier keeper; later ones were not remembered/);
    expect(k2.stderr()).toMatch(/"removedRanges":1024,"removedOverflow":true/);
    expect(r.out).toMatchObject({ pages: PAGES, dropped: 1100, mismatches: 0 });
    // The documented limit, not a wish: the ranges past the bound come back with old bytes.
    expect(r.out['first_dontneed_nonzero' as keyof typeof r.out]).toBeGreaterThanOrEqual(200 + 2 * 1024);
    expect(r.out.dontneed_nonzero).toBeLessThanOrEqual(1100 - 1024);
  }, 90_000);

  it('a corrupt, truncated, empty or missing removed-ranges log: the VM is refused with a log line, the keeper runs on', async () => {
    const stateDir = join(dir, 'corrupt.state');
    mkdirSync(stateDir);
    // Stand-ins for live VMs (the keeper checks the log before looking for the VM's uffd).
    const vms = Array.from({ length: 6 }, () => spawn('sleep', ['600'], { stdio: 'ignore' }));
    for (const v of vms) extraPids.push(v.pid!);
    await until(() => vms.every((v) => alive(v.pid!)));
    const [trunc, badSum, empty, missing, foreign, good] = vms.map((v) => v.pid!) as [number, number, number, number, number, number];
    for (const pid of [trunc, badSum, empty, missing, foreign, good]) {
      const rec = { pid, start: Number(procStartTime(pid)), dev: 1, ino: 1, uid: 0, gid: 0 };
      writeFileSync(join(stateDir, `vm-${pid}.json`), `${JSON.stringify(rec).slice(0, -1)},"msg":"W10=","removedLog":1}\n`);
    }
    const log = (pid: number, recs: Array<[number, number] | 'O'>) => removedLogBytes(pid, procStartTime(pid), recs);
    writeFileSync(join(stateDir, `vm-${trunc}.removed`), log(trunc, [[0x10000, 0x20000], [0x30000, 0x40000]]).subarray(0, 32 + 32 + 20));
    const bad = log(badSum, [[0x10000, 0x20000], [0x30000, 0x40000]]);
    bad.writeBigUInt64LE(0x31000n, 32 + 32 + 8); // a range changed after it was written
    writeFileSync(join(stateDir, `vm-${badSum}.removed`), bad);
    writeFileSync(join(stateDir, `vm-${empty}.removed`), Buffer.alloc(0));
    writeFileSync(join(stateDir, `vm-${foreign}.removed`), removedLogBytes(foreign, procStartTime(foreign) + 1n, [])); // an earlier VM's
    writeFileSync(join(stateDir, `vm-${good}.removed`), log(good, [[0x10000, 0x20000], 'O']));
    // Leftovers of a dead keeper: a removed log without its VM record, a temporary file.
    writeFileSync(join(stateDir, 'vm-999999.removed'), log(good, []));
    writeFileSync(join(stateDir, 'vm-999999.removed.123.tmp'), 'x');
    const k = keeperOn('corrupt', stateDir);
    await k.workerLine(0);
    const s = await k.status();
    expect(s.recovered).toBe(0);
    expect(s.vms).toEqual([]);
    expect(s.lastError).toMatch(/refused to take back VM \d+: removed-ranges log corrupt/);
    const logs = k.stderr().trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; vmPid?: number });
    const refused = (pid: number) => logs.find((l) => l.vmPid === pid && l.level === 60 && /^refusing to take back VM/.test(l.msg))?.msg;
    expect(refused(trunc)).toMatch(/is corrupt: truncated record/);
    expect(refused(badSum)).toMatch(/is corrupt: record checksum mismatch \(record 2 of 2\)/);
    expect(refused(empty)).toMatch(/is corrupt: empty/);
    expect(refused(missing)).toMatch(/cannot be read: No such file or directory/);
    expect(refused(foreign)).toMatch(/written for another VM/);
    // A readable log passes; this stand-in then has no uffd to take (an ordinary "not taking back").
    expect(refused(good)).toBeUndefined();
    expect(logs.some((l) => l.vmPid === good && /not taking back VM \d+: the VM no longer holds its uffd/.test(l.msg))).toBe(true);
    // Refused VMs keep their records (for the operator; the next keeper refuses them the same way);
    // the taken-back-or-dropped one and the leftovers are gone.
    const left = readdirSync(stateDir).sort();
    for (const pid of [trunc, badSum, empty, foreign]) expect(left).toContain(`vm-${pid}.removed`);
    for (const pid of [trunc, badSum, empty, missing, foreign]) expect(left).toContain(`vm-${pid}.json`);
    expect(left.filter((f) => f.includes(String(good)) || f.includes('999999'))).toEqual([]);
    expect(alive(k.pid)).toBe(true);
    await k.stop();
    expect(await k.exited).toBe(0);
    expect(existsSync(join(stateDir, 'keeper.json'))).toBe(false);
  }, 60_000);
});
