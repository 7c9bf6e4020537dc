/**
 * The pool over real verbs: soft-RoCE (rdma_rxe on a dummy netdev) inside a QEMU guest whose
 * kernel has it (tools/guestvm, setup step 'rxe'). ONE boot for the whole file: the guest runs
 * test/guest/verbs-in-guest.test.ts (ofi_rxm over verbs, then verbs) with vitest's JSON reporter writing to the results share; the cases here assert on
 * that report, group by group, so that a case that did not run fails as surely as one that failed.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestErrorCode, guestCapability, runInGuest, type GuestResult } from '@tierstack/guestvm';
import { ensureBuilt } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..', '..');
const cap = await guestCapability();
if (!cap.ok) console.warn(`[rdma] verbs guest tests SKIPPED: ${cap.reason}`);

interface Assertion {
  ancestorTitles: string[];
  title: string;
  fullName: string;
  status: 'passed' | 'failed' | 'skipped' | 'pending' | 'todo' | 'disabled';
  failureMessages: string[];
}
interface Report {
  numFailedTests: number;
  testResults: Array<{ name: string; assertionResults: Assertion[] }>;
}

describe.skipIf(!cap.ok)('RdmaPoolTier over soft-RoCE in a QEMU guest', () => {
  let report: Report;
  let output = '';
  const results = mkdtempSync(join(tmpdir(), 'rdma-verbs-guest-'));
  afterAll(() => rmSync(results, { recursive: true, force: true }));

  beforeAll(async () => {
    // The guest sees the host's root read-only: build the addon and dist here first.
    ensureBuilt();
    const vitest = join(repo, 'node_modules', 'vitest', 'vitest.mjs');
    const boot = (): Promise<GuestResult> =>
      runInGuest({
        command:
          `node ${vitest} run --project rdma packages/rdma/test/guest/ ` +
          `--reporter=default --reporter=json --outputFile.json="$TIERSTACK_GUEST_RESULTS/report.json"`,
        cwd: repo,
        setup: ['rxe'],
        resultsDir: results,
        memoryMiB: 1536,
        timeoutMs: 225_000,
      });
    let r: GuestResult;
    try {
      r = await boot();
    } catch (err) {
      // The emulator's own failure (a guest kernel oops under TCG, e.g. the MTTCG text-patching
      // race tools/guestvm retries before the job starts) is not ours: boot once more.
      const e = err as { code?: string; consoleTail?: string };
      if (e.code !== GuestErrorCode.Crash || !/Kernel panic|Oops/.test(e.consoleTail ?? '')) throw err;
      console.warn(`[rdma] the guest kernel crashed (emulator); booting again:\n${(e.consoleTail ?? '').slice(-1500)}`);
      r = await boot();
    }
    output = r.stdout + r.stderr;
    report = JSON.parse(readFileSync(join(results, 'report.json'), 'utf8')) as Report;
  }, 480_000);

  /** The cases of the report whose full name matches, all of which must have passed. */
  const group = (provider: string, match: RegExp): Assertion[] => {
    const all = report.testResults.flatMap((f) => f.assertionResults).filter((a) => a.fullName.includes(`over ${provider} (`) && match.test(a.fullName));
    const bad = all.filter((a) => a.status !== 'passed').map((a) => `${a.status}: ${a.fullName}\n${a.failureMessages.join('\n').slice(0, 2000)}`);
    expect(bad, output.slice(-3000)).toEqual([]);
    return all;
  };

  for (const provider of ['verbs', 'verbs;ofi_rxm']) {
    it(`${provider}: the PageStore conformance suite (donors and client on the dummy address, replicas 2, token)`, () => {
      expect(group(provider, /PageStore conformance/).length).toBeGreaterThanOrEqual(10);
    });
    it(`${provider}: native threads through the C ABI handle at queue depth 32, byte for byte`, () => {
      expect(group(provider, /native threads read and write/)).toHaveLength(1);
    });
    it(`${provider}: no environment tuning needed (provider defaults)`, () => {
      expect(group(provider, /no libfabric environment tuning/)).toHaveLength(1);
    });
  }
  it('verbs: the C ABI conformance suite from native threads (promotions included)', () => {
    expect(group('verbs', /C ABI conformance/).length).toBeGreaterThanOrEqual(8);
  });
  it('verbs: a donor killed -9 under replicas 2 loses nothing', () => {
    expect(group('verbs', /killed -9/)).toHaveLength(1);
  });
  it('verbs: a slab registration refused for RLIMIT_MEMLOCK names its cause to the client and in memd\'s log', () => {
    expect(group('verbs', /RLIMIT_MEMLOCK/)).toHaveLength(1);
  });
  it('the guest run failed no test', () => {
    expect(report.numFailedTests, output.slice(-3000)).toBe(0);
  });
});
