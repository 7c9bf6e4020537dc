/**
 * tierstack run end to end: real programs (a C program built here, Python + numpy) with
 * libtierstack_run.so preloaded, served by a RunServer over a real stack (a native DRAM cache —
 * CxlTier on a memfd — over a FileTier in a temporary directory). Every case checks data: the
 * program's checksums must be identical with and without the library, under a budget of a
 * quarter of the working set too, and nothing may be left in any tier or on disk afterwards.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, FileTier, type PageStore, type TierStack } from '@tierstack/core';
import { CxlTier } from '@tierstack/cxl';
import { sharedRegionsSupported } from '@tierstack/uffd';
import { runWithTierStack, runEnvironment, RunServer, type RunResult } from '../src/index.js';

const MiB = 2 ** 20;
const dir = mkdtempSync(join(tmpdir(), 'tierstack-run-test-'));
const exe = join(dir, 'bigalloc');
const pyScript = join(import.meta.dirname, 'fixtures', 'bigalloc.py');
const canRun = sharedRegionsSupported().supported;

/** A Python with numpy: Debian's python3-numpy (/usr/bin/python3) or whatever python3 has it. */
function findPython(): string | undefined {
  for (const py of ['/usr/bin/python3', 'python3']) {
    const r = spawnSync(py, ['-c', 'import numpy'], { stdio: 'ignore' });
    if (r.status === 0) return py;
  }
  return undefined;
}
const python = findPython();

interface Stack {
  stack: TierStack;
  dram: CxlTier;
  file: FileTier;
  fileDir: string;
  close(): Promise<void>;
}

let stackNo = 0;
async function openStack(dramMiB: number): Promise<Stack> {
  const fileDir = join(dir, `file-${++stackNo}`);
  const dram = await CxlTier.open({ backing: { kind: 'memfd', size: dramMiB * MiB }, name: 'dram' });
  const file = await FileTier.open({ dir: fileDir });
  const stack = createTierStack({ tiers: [dram, file] });
  return { stack, dram, file, fileDir, close: () => stack.close() };
}

interface Ran {
  out: string;
  err: string;
  result: RunResult;
  namespaces: string[];
}

async function runUnder(stack: PageStore, cmd: string, args: string[], o: { budget?: number; onReady?: (c: ChildProcess, server: RunServer) => void } = {}): Promise<Ran> {
  let out = '';
  let err = '';
  let closed: Promise<void> = Promise.resolve();
  const namespaces = new Set<string>();
  const result = await runWithTierStack({
    stack,
    command: cmd,
    args,
    minSize: MiB,
    arena: 1 << 30,
    ...(o.budget !== undefined ? { budget: o.budget } : {}),
    stdio: ['ignore', 'pipe', 'pipe'],
    onStart: ({ child, server }) => {
      server.on('session', (s: { namespace: string }) => namespaces.add(s.namespace));
      child.stdout!.on('data', (d) => {
        out += d;
        if (o.onReady && out.includes('ready')) o.onReady(child, server);
      });
      child.stderr!.on('data', (d) => (err += d));
      closed = new Promise((r) => child.once('close', () => r()));
    },
  });
  await closed;
  return { out, err, result, namespaces: [...namespaces] };
}

function plain(cmd: string, args: string[]): { out: string; status: number | null } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { out: r.stdout, status: r.status };
}

/** The lines that must match between runs (memory reports start with '#'). */
const data = (s: string): string[] => s.split('\n').filter((l) => l.length > 0 && !l.startsWith('#'));
const memory = (s: string): { base: number; hwm: number } => {
  const m = /# base_kib (\d+) hwm_kib (\d+)/.exec(s);
  if (!m) throw new Error(`no memory report in:\n${s}`);
  return { base: Number(m[1]) * 1024, hwm: Number(m[2]) * 1024 };
};

/** Nothing of these namespaces in any tier, on disk, or in this process's descriptors. */
async function expectNothingLeft(s: Stack, namespaces: string[], pages: number): Promise<void> {
  for (const ns of namespaces) {
    for (let p = 0; p < pages; p += 4096) {
      const got = await s.stack.get(ns, Array.from({ length: Math.min(4096, pages - p) }, (_, i) => p + i));
      expect(got.hits, `pages of ${ns} still in the stack`).toBe(0);
    }
  }
  expect((s.dram.stats().extra as Record<string, number>)['residentPages']).toBe(0);
  await s.stack.flush();
  // The file tier's directory holds its header only: no namespace directory, no segment file.
  expect(readdirSync(s.fileDir).filter((f) => f !== 'tierstack-file.json')).toEqual([]);
  const memfds = readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).includes('tierstack-run');
    } catch {
      return false;
    }
  });
  expect(memfds).toEqual([]);
}

beforeAll(() => {
  execFileSync('gcc', ['-O2', '-Wall', '-pthread', '-o', exe, join(import.meta.dirname, 'fixtures', 'bigalloc.c')]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!canRun)('tierstack run (LD_PRELOAD interposer served from the tier stack)', () => {
  it('C program: identical checksums with and without, and under a budget of a quarter of the working set with RSS near it; pages served natively', async () => {
    const ref = plain(exe, ['arrays', '12']);
    expect(ref.status).toBe(0);
    expect(ref.out).toContain('calloc zero yes');
    const refMem = memory(ref.out);
    expect(refMem.hwm - refMem.base).toBeGreaterThan(60 * MiB); // the working set: 6 arrays, ~60 MiB

    const s = await openStack(256); // the DRAM tier holds everything: reads never need JavaScript
    try {
      const free = await runUnder(s.stack, exe, ['arrays', '12']);
      expect(free.result.status).toBe(0);
      expect(data(free.out)).toEqual(data(ref.out));

      const budget = 15 * MiB; // a quarter of the working set
      const tight = await runUnder(s.stack, exe, ['arrays', '12'], { budget });
      expect(tight.err).toBe('');
      expect(tight.result.status).toBe(0);
      expect(data(tight.out)).toEqual(data(ref.out));
      const m = memory(tight.out);
      expect(m.hwm - m.base).toBeLessThanOrEqual(budget + 2 * MiB);
      expect(m.hwm - m.base).toBeGreaterThan(budget / 2);
      // Pages left and came back, all through native tiers.
      expect(tight.result.store.pagesWritten).toBeGreaterThan(40 * MiB / 4096);
      expect(tight.result.store.nativePages).toBeGreaterThan(15 * MiB / 4096);
      expect(tight.result.store.jsPathPages).toBe(0);
      expect(tight.result.store.errors).toBe(0);
      expect(tight.result.sessions).toHaveLength(1);
      await expectNothingLeft(s, [...free.namespaces, ...tight.namespaces], 65536);
    } finally {
      await s.close();
    }
  });

  it.skipIf(python === undefined)('Python + numpy: identical checksums with and without, and under a quarter budget with RSS near it', async () => {
    const ref = plain(python!, [pyScript, '12']);
    expect(ref.status).toBe(0);
    const s = await openStack(32);
    try {
      const budget = 12 * MiB; // a quarter of the four 12 MiB arrays
      const tight = await runUnder(s.stack, python!, [pyScript, '12'], { budget });
      expect(tight.result.status).toBe(0);
      expect(data(tight.out)).toEqual(data(ref.out));
      const m = memory(tight.out);
      const refMem = memory(ref.out);
      expect(refMem.hwm - refMem.base).toBeGreaterThan(48 * MiB);
      expect(m.hwm - m.base).toBeLessThanOrEqual(budget + 6 * MiB);
      expect(tight.result.store.errors).toBe(0);
      // Without a budget (nothing leaves the process) the output is the same too.
      const free = await runUnder(s.stack, python!, [pyScript, '4']);
      expect(data(free.out)).toEqual(data(plain(python!, [pyScript, '4']).out));
      await expectNothingLeft(s, [...free.namespaces, ...tight.namespaces], 65536);
    } finally {
      await s.close();
    }
  });

  it('8 threads allocating, reallocating and freeing concurrently under a budget', async () => {
    const ref = plain(exe, ['threads', '8', '2', '2']);
    expect(ref.status).toBe(0);
    const s = await openStack(32);
    try {
      const r = await runUnder(s.stack, exe, ['threads', '8', '2', '2'], { budget: 8 * MiB });
      expect(r.result.status).toBe(0);
      expect(data(r.out)).toEqual(data(ref.out));
      expect(data(r.out)).toHaveLength(8);
      const m = memory(r.out);
      expect(m.hwm - m.base).toBeLessThanOrEqual(8 * MiB + 4 * MiB);
      await expectNothingLeft(s, r.namespaces, 32768);
    } finally {
      await s.close();
    }
  });

  it('fork: the child gets its own copy of the big allocations (copy-on-write through the stack)', async () => {
    const ref = plain(exe, ['fork', '16']);
    expect(ref.status).toBe(0);
    expect(ref.out).toContain('child sees pre-fork data');
    const s = await openStack(32);
    try {
      const r = await runUnder(s.stack, exe, ['fork', '16'], { budget: 4 * MiB });
      expect(r.result.status).toBe(0);
      expect(data(r.out)).toEqual(data(ref.out));
      expect(r.out).toContain('child sees pre-fork data');
      expect(r.out).toContain('parent keeps own yes');
      expect(r.result.sessions).toHaveLength(2); // parent and child
      // The parent rewrote its array before the child read it: the old copies went aside for the child.
      expect(r.result.store.cowCopies + r.result.store.cowReads).toBeGreaterThan(0);
      await expectNothingLeft(s, r.namespaces, 16384);
    } finally {
      await s.close();
    }
  });

  it('a program that never allocates big: no session, output and exit status passed through (also signals)', async () => {
    const ref = plain(exe, ['small', '42']);
    expect(ref.status).toBe(42);
    const s = await openStack(8);
    try {
      const r = await runUnder(s.stack, exe, ['small', '42']);
      expect(r.result.status).toBe(42);
      expect(r.result.code).toBe(42);
      expect(r.out).toBe(ref.out);
      expect(r.result.sessions).toEqual([]);
      const killed = await runUnder(s.stack, 'sh', ['-c', 'kill -TERM $$']);
      expect(killed.result.signal).toBe('SIGTERM');
      expect(killed.result.status).toBe(143);
    } finally {
      await s.close();
    }
  });

  it('no server reachable: the library falls back to the real allocator (same output and status)', () => {
    const ref = plain(exe, ['arrays', '4']);
    const env = { ...process.env, ...runEnvironment(join(dir, 'nobody-listens.sock'), { minSize: MiB }) };
    const r = spawnSync(exe, ['arrays', '4'], { encoding: 'utf8', env });
    expect(r.status).toBe(0);
    expect(r.stderr).toBe(''); // silent unless TIERSTACK_RUN_DEBUG is set
    expect(data(r.stdout)).toEqual(data(ref.out));
    const dbg = spawnSync(exe, ['small', '3'], { encoding: 'utf8', env: { ...env, TIERSTACK_RUN_DEBUG: '1' } });
    expect(dbg.status).toBe(3);
    const big = spawnSync(exe, ['arrays', '2'], { encoding: 'utf8', env: { ...env, TIERSTACK_RUN_DEBUG: '1' } });
    expect(big.status).toBe(0);
    expect(big.stderr).toContain('big allocations use the real allocator');
  });

  it('a program that closes every descriptor (a daemon) keeps its big allocations', async () => {
    const ref = plain(exe, ['closefds', '16']);
    expect(ref.status).toBe(0);
    const s = await openStack(32);
    try {
      const r = await runUnder(s.stack, exe, ['closefds', '16'], { budget: 4 * MiB });
      expect(r.result.status).toBe(0);
      expect(data(r.out)).toEqual(data(ref.out));
      await expectNothingLeft(s, r.namespaces, 8192);
    } finally {
      await s.close();
    }
  });

  it('a stack too small for the pages that leave: the program still gets every byte back (nothing dropped, no deadlock)', async () => {
    const ref = plain(exe, ['threads', '2', '1', '12']);
    const dram = await CxlTier.open({ backing: { kind: 'memfd', size: 4 * MiB }, name: 'tiny' });
    const stack = createTierStack({ tiers: [dram] }); // nothing below it: a full tier refuses dirty pages
    try {
      const r = await runUnder(stack, exe, ['threads', '2', '1', '12'], { budget: 2 * MiB }); // ~28 MiB leave: more than the write queue holds
      expect(r.result.status).toBe(0);
      expect(data(r.out)).toEqual(data(ref.out));
      expect(r.result.store.writeRetries).toBeGreaterThan(0); // the tier said no; the pages waited in the queue
    } finally {
      await stack.close();
    }
  });

  it('kill -9 of the program: nothing is left in any tier or on disk', async () => {
    const s = await openStack(8); // small DRAM tier: most evicted pages go on to the file tier (disk)
    try {
      let sessionNs = '';
      let onDisk = 0;
      const r = await runUnder(s.stack, exe, ['hold', '48'], {
        budget: 8 * MiB,
        onReady: (child, server) => {
          if (sessionNs) return;
          sessionNs = server.sessions()[0]!.namespace;
          void (async () => {
            await s.stack.flush(); // make the evicted pages land on disk before the kill
            onDisk = await s.file.diskUsage(sessionNs);
            child.kill('SIGKILL');
          })();
        },
      });
      expect(r.out).toMatch(/^ready /);
      expect(r.result.signal).toBe('SIGKILL');
      expect(r.result.status).toBe(137);
      expect(onDisk).toBeGreaterThan(16 * MiB); // the pages were really on disk before
      const end = r.result.sessions[0]!;
      expect(end.namespace).toBe(sessionNs);
      expect(end.releasedPages).toBeGreaterThan(8192);
      expect(end.error).toBeUndefined();
      expect(existsSync(join(s.fileDir, encodeURIComponent(sessionNs)))).toBe(false);
      await expectNothingLeft(s, [sessionNs], 12288);
    } finally {
      await s.close();
    }
  });
});
