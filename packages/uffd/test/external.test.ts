/**
 * External region: a C program (built here with gcc) creates a region and a uffd, registers
 * it and sends the uffd with a Firecracker-style JSON mapping over a Unix socket; the engine
 * adopts it and serves the program's faults from the stack. The program checks every byte,
 * then drops pages (REMOVE) and expects zeros. When it exits, the engine notices, cleans up
 * and no descriptor is left behind.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTierStack, MemoryTier } from '@tierstack/core';
import { createUffdEngine, listenForUffd } from '../src/index.js';
import { PS, seed, uniqueNs } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'uffd-ext-'));
const exe = join(dir, 'external_region');
const fdCount = (): number => readdirSync('/proc/self/fd').length;

beforeAll(() => {
  execFileSync('gcc', ['-O2', '-Wall', '-o', exe, join(import.meta.dirname, 'fixtures', 'external_region.c')]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Mapping {
  base: bigint;
  size: number;
  offset: number;
}

// Firecracker's message: a JSON array of { base_host_virt_addr, size, offset, page_size, page_size_kib }.
// Addresses are u64: read them as bigint, not through JSON numbers.
function parseMappings(message: Buffer): Mapping[] {
  const text = message.toString('utf8');
  const raw = JSON.parse(text) as Array<{ size: number; offset: number }>;
  const bases = [...text.matchAll(/"base_host_virt_addr"\s*:\s*(\d+)/g)].map((m) => BigInt(m[1]!));
  return raw.map((r, i) => ({ base: bases[i]!, size: r.size, offset: r.offset }));
}

describe('external region over a Unix socket (SCM_RIGHTS)', () => {
  it('serves another process, zero-fills removed ranges, cleans up on exit', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 64 << 20 })] });
    const engine = createUffdEngine({ stack, faultThreads: 2 });
    const ns = uniqueNs('ext');
    const pages = 512;
    const offset = 32;
    await seed(stack, ns, pages, offset);
    const before = fdCount();

    const sock = join(dir, 'uffd.sock');
    const listener = listenForUffd(sock);
    const child = spawn(exe, [sock, ns, String(pages), String(offset)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));

    const got = await listener.accept({ timeoutMs: 10_000 });
    expect(got.pid).toBe(child.pid);
    const mappings = parseMappings(got.message);
    expect(mappings).toHaveLength(1);
    const adopted = engine.adopt({
      fd: got.fd,
      pid: got.pid,
      regions: mappings.map((m) => ({ base: m.base, size: m.size, namespace: ns, pageOffset: m.offset / PS, missing: 'strict' as const, faultAround: 8 })),
    });
    const exitEvent = new Promise<unknown>((resolve) => adopted.once('exit', resolve));

    const code = await exited;
    expect(stderr).toBe('');
    expect(stdout).toContain(`touched ${pages} bad 0`);
    expect(stdout).toContain('removed-zero 8');
    expect(code).toBe(0);

    await exitEvent; // the engine saw the owner go (pidfd) and closed the uffd
    await adopted.exited;
    expect(adopted.closed).toBe(true);
    got.closeConnection();
    listener.close();
    expect(fdCount()).toBeLessThanOrEqual(before); // uffd, pidfd, connection and listener all closed

    await engine.close();
    await stack.close();
  });

  it('adopts a fresh uffd: negotiates and registers the sender\'s range itself (apiDone: false)', async () => {
    const stack = createTierStack({ tiers: [new MemoryTier({ maxSize: 16 << 20 })] });
    const engine = createUffdEngine({ stack, faultThreads: 1 });
    const ns = uniqueNs('ext-fresh');
    const pages = 64;
    await seed(stack, ns, pages);
    const sock = join(dir, 'fresh.sock');
    const listener = listenForUffd(sock);
    const child = spawn(exe, [sock, ns, String(pages), '0'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TS_UNREGISTERED: '1' } });
    let stdout = '';
    child.stdout.on('data', (d) => (stdout += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const got = await listener.accept({ timeoutMs: 10_000 });
    const [m] = parseMappings(got.message);
    const adopted = engine.adopt({ fd: got.fd, pid: got.pid, apiDone: false, regions: [{ base: m!.base, size: m!.size, namespace: ns, faultAround: 4 }] });
    writeSync(got.conn, Buffer.from('g')); // registered: the sender may touch now
    expect(await exited).toBe(0);
    expect(stdout).toContain(`touched ${pages} bad 0`);
    expect(stdout).toContain('removed-zero 8'); // the engine asked for REMOVE events itself
    await adopted.exited;
    got.closeConnection();
    listener.close();
    await engine.close();
    await stack.close();
  });
});
