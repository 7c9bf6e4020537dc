/**
 * The CXL tier's multi-process crash recovery is what lets a new worker reattach to the memfd
 * region the keeper holds and keep the cached and dirty pages: a worker rewriting dirty pages
 * without pause (so that a kill -9 very likely lands while it holds a set lock or is halfway
 * through a page) is killed three times; each next worker opens the same memfd and must find
 * every page whole (one version a writer wrote completely) and dirty — except pages of the one
 * put the kill interrupted: a page rewritten in place when its writer died is dropped (a miss,
 * never torn bytes; see the README) — and must write on (no set stays locked).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { join } from 'node:path';
import { tmp, cleanup } from './fixtures.js';
import { buildAll, startKeeper, sleep, pkgDir } from './keeper-helpers.js';

const N = 2000;
let dir: string;

beforeAll(() => {
  dir = tmp('faas-keeper-cxl-');
  buildAll(dir);
}, 120_000);
afterAll(() => cleanup(dir));

interface WriterStats {
  gen: number;
  found: number;
  whole: number;
  missing: number[];
  dirty: number;
  maxVersion: number;
  lockSteals: number;
  phase: 'checked' | 'writing';
  rounds?: number;
}

describe('the keeper memfd outlives its workers', () => {
  it('dirty pages of a worker killed -9 mid-write are there for the next one, whole and dirty; only the interrupted put is dropped', async () => {
    const k = startKeeper({
      firecracker: join(dir, 'cxl.sock'),
      statusPath: join(dir, 'cxl.status'),
      memfds: [{ name: 'dram', bytes: 32 << 20 }],
      standby: false,
      stableMs: 100,
      dataDir: dir,
      snapshotId: 'unused',
      worker: [process.execPath, join(pkgDir, 'test', 'fixtures', 'keeper-cxl-writer.mjs'), String(N)],
    });
    try {
      const seen: WriterStats[] = [];
      for (let kill = 0; kill <= 3; kill++) {
        const line = await k.workerLine(kill);
        const s = await k.waitStatus(
          (x) => x.worker?.pid === line.workerPid && (x.worker.stats as WriterStats | undefined)?.phase === 'writing' && ((x.worker.stats as unknown as WriterStats).rounds ?? 0) >= 2,
          `worker ${kill + 1} writing`,
        );
        const st = s.worker!.stats as unknown as WriterStats;
        seen.push(st);
        if (kill === 3) break;
        await sleep(Math.floor(Math.random() * 150));
        process.kill(line.workerPid, 'SIGKILL');
      }
      // The first worker found an empty region; each later one found all N pages, each one some
      // version written whole, all dirty, and went on writing (no set stayed wedged).
      expect(seen[0]).toMatchObject({ found: 0, whole: 0, dirty: 0 });
      for (const st of seen.slice(1)) {
        expect(st.whole).toBe(st.found); // nothing torn
        expect(st.found + st.missing.length).toBe(N);
        // What is missing belongs to the one put (64 pages) in flight at the kill.
        expect(new Set(st.missing.map((p) => Math.floor(p / 64))).size).toBeLessThanOrEqual(1);
        expect(st.dirty).toBeGreaterThanOrEqual(st.found);
        expect(st.maxVersion).toBeGreaterThanOrEqual(2);
        expect(st.rounds).toBeGreaterThanOrEqual(2);
      }
      const status = await k.status();
      // (More if a worker failed to start meanwhile: the keeper counts every death.)
      expect(status.restarts, k.stderr().slice(-3000)).toBeGreaterThanOrEqual(3);
      expect(status.memfds).toEqual([expect.objectContaining({ name: 'dram', bytes: 32 << 20 })]);
    } finally {
      await k.stop();
    }
  }, 60_000);
});
