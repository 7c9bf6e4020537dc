/**
 * Missing-page policies. Strict: a page that cannot be produced (absent, or failing its
 * checksum) is poisoned, so the toucher — a child process — dies with SIGBUS while every
 * other page still works, and JS hears about it (address + cause). Zero: absent pages read
 * as zeros.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack } from '@tierstack/core';
import { pageMatches } from '@tierstack/core/testing';
import { createUffdEngine, listenForUffd, type PageErrorEvent } from '../src/index.js';
import { NativeTestTier, touchPages } from '../src/testing.js';
import { PS, eventually, seed, uniqueNs } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'uffd-strict-'));
const exe = join(dir, 'external_region');
beforeAll(() => {
  execFileSync('gcc', ['-O2', '-Wall', '-o', exe, join(import.meta.dirname, 'fixtures', 'external_region.c')]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function runStrictChild(failure: 'missing' | 'checksum'): Promise<void> {
  const tier = new NativeTestTier();
  const stack = createTierStack({ tiers: [tier] });
  const engine = createUffdEngine({ stack, faultThreads: 1 });
  const ns = uniqueNs(`strict-${failure}`);
  const pages = 64;
  const badPage = 37;
  if (failure === 'missing') {
    await seed(stack, ns, pages, 0, new Set([badPage]));
  } else {
    await seed(stack, ns, pages);
    tier.failPages(ns, [badPage], -5); // TS_E_CHECKSUM: the tier refuses to hand the bytes out
  }
  const sock = join(dir, `${failure}.sock`);
  const listener = listenForUffd(sock);
  const child = spawn(exe, [sock, ns, String(pages), '0', String(badPage)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.on('data', (d) => (stdout += d));
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_code, signal) => resolve(signal)));
  const got = await listener.accept({ timeoutMs: 10_000 });
  const base = BigInt(/"base_host_virt_addr":(\d+)/.exec(got.message.toString())![1]!);
  const errors: PageErrorEvent[] = [];
  engine.on('pageError', (e: PageErrorEvent) => errors.push(e));
  const adopted = engine.adopt({ fd: got.fd, pid: got.pid, regions: [{ base, size: pages * PS, namespace: ns, missing: 'strict', faultAround: 16 }] });
  const signal = await exited;
  expect(stdout).toContain(`touched ${pages - 1} bad 0`); // every other page was right
  expect(signal).toBe('SIGBUS');
  await adopted.exited;
  await new Promise((r) => setTimeout(r, 20)); // events are delivered in batches on the JS thread
  expect(errors).toHaveLength(1);
  expect(errors[0]!.page).toBe(badPage);
  expect(errors[0]!.address).toBe(base + BigInt(badPage * PS));
  expect(errors[0]!.code).toBe(failure === 'missing' ? 'TS_ERR_NOT_FOUND' : 'TS_ERR_CHECKSUM');
  got.closeConnection();
  listener.close();
  await engine.close();
  await stack.close();
}

describe('strict regions', () => {
  it('poison a page no tier holds: the toucher dies with SIGBUS, other pages work', () => runStrictChild('missing'));
  it('poison a page that fails its checksum', () => runStrictChild('checksum'));
});

describe('zero regions', () => {
  it('return zeros for absent pages and stored bytes for the rest', async () => {
    const tier = new NativeTestTier();
    const stack = createTierStack({ tiers: [tier] });
    const engine = createUffdEngine({ stack, faultThreads: 1 });
    const ns = uniqueNs('zero');
    const pages = 256;
    const absent = new Set<number>();
    for (let p = 0; p < pages; p += 3) absent.add(p);
    await seed(stack, ns, pages, 0, absent);
    const region = engine.createRegion({ size: pages * PS, namespace: ns, missing: 'zero', faultAround: 8 });
    const order = Array.from({ length: pages }, (_, i) => (i * 101) % pages);
    const out = Buffer.alloc(pages * PS);
    await touchPages(region.address, order, PS, { out });
    const wrong: number[] = [];
    order.forEach((p, i) => {
      const page = out.subarray(i * PS, (i + 1) * PS);
      const ok = absent.has(p) ? page.every((b) => b === 0) : pageMatches(page, ns, p);
      if (!ok) wrong.push(p);
    });
    expect(wrong).toEqual([]);
    await eventually(() => expect(region.stats().zeroPages).toBe(absent.size));
    const s = region.stats();
    expect(s.poisoned).toBe(0);
    await engine.close();
    await stack.close();
  });
});
