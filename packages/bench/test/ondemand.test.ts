/**
 * The restore suite's anchor, the C on-demand UFFD handler (packages/uffd/bench/uffd_ondemand.c), against the
 * Firecracker-faithful client of @tierstack/faas: real kernel userfaultfd, every touched byte
 * checked against the memory file. No timing is asserted.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { buildFirecrackerTestClient, runFirecrackerTestClient } from '@tierstack/faas/testing';
import { buildOnDemandHandler, OnDemandHandler, threadPlacement } from '../src/ondemand.js';
import { compareTimed, result } from '../src/harness.js';

const PS = 4096;
const R0 = 256;
const R1 = 128;
let dir: string;
let mem: string;
let img: Buffer;
let client: string;
let exe: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bench-ondemand-'));
  img = Buffer.alloc((R0 + R1) * PS);
  randomFillSync(img);
  img.fill(0, 10 * PS, 20 * PS);
  mem = join(dir, 'mem');
  writeFileSync(mem, img);
  client = buildFirecrackerTestClient(dir);
  exe = buildOnDemandHandler(dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const regions = ['--region', `${R0 * PS}:0`, '--region', `${R1 * PS}:${R0 * PS}`];

describe('C on-demand UFFD handler (the restore anchor)', () => {
  it('serves VMs one after another: one copy per fault, REMOVE → zero pages, bad handshakes rejected', async () => {
    const h = await OnDemandHandler.start(exe, { socketPath: join(dir, 'c.sock'), memFile: mem, cpu: 0 });
    try {
      expect(threadPlacement(h.pid)).toBe('1 thread on CPU 0');
      // VM 1: pages in both regions, then a balloon drops 20..29 and reads them again.
      const serving = h.serving();
      const r = await runFirecrackerTestClient(client, [h.socketPath, mem, ...regions, '--touch', '0:300', '--touch', '350:30', '--dontneed', '20:10']).result;
      expect(await serving).toBeGreaterThan(0);
      expect(r.error).toBeUndefined();
      expect(r.pages).toBe(330);
      expect(r.mismatches).toBe(0);
      expect(r.dontneed_nonzero).toBe(0);
      const s = await h.done();
      expect(s.copies).toBe(330);
      expect(s.zeropages).toBe(10);
      expect(s.removes).toBeGreaterThan(0);

      // Garbage: a mapping larger than the file, not JSON, no descriptor. The handler lives on.
      const big = await runFirecrackerTestClient(client, [h.socketPath, mem, '--region', `${(R0 + R1 + 1) * PS}:0`, '--handshake-only']).result;
      expect(big.closed_by_handler).toBe(true);
      const junk = await runFirecrackerTestClient(client, [h.socketPath, mem, ...regions, '--json', '[{"size":', '--handshake-only']).result;
      expect(junk.closed_by_handler).toBe(true);
      const nofd = await runFirecrackerTestClient(client, [h.socketPath, mem, ...regions, '--no-fd']).result;
      expect(nofd.closed_by_handler).toBe(true);
      const g = connect(h.socketPath);
      g.on('error', () => undefined);
      g.end('not json');

      // VM 2, after all that: the whole file, in order.
      const serving2 = h.serving().catch((e: Error) => e.message);
      const r2 = await runFirecrackerTestClient(client, [h.socketPath, mem, ...regions]).result;
      expect(r2.mismatches).toBe(0);
      expect(r2.pages).toBe(R0 + R1);
      // The four rejections came first, each as one line.
      expect(await serving2).toMatch(/expected a VM, got: rejected/);
    } finally {
      h.stop();
    }
  });
});

describe('compareTimed', () => {
  it('rates each side by the time its ops report, not by the wall time around them', async () => {
    const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
    // The case reports twice the pages in the same reported time, and wastes more wall time around it.
    const m = await compareTimed(
      async () => (await sleep(3), { ops: 2, ns: 1_000_000 }),
      async () => (await sleep(1), { ops: 1, ns: 1_000_000 }),
      { roundMs: 10, rounds: 3, warmupMs: 1 },
    );
    const r = result('t', 'double', 'single', m);
    expect(r.ops_per_s).toBe(2000);
    expect(r.baseline_ops_per_s).toBe(1000);
    expect(r.ratio).toBe(2);
  });
});
