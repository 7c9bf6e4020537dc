/**
 * The uffd handshake (handshake.ts) under hostile peers, with real sockets, real processes and
 * real kernel uffds: descriptors that are not a usable userfaultfd are refused (never adopted),
 * silent peers wait concurrently without delaying a real VM, and a timeout is logged.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync, existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger, TierStack } from '@tierstack/core';
import { SnapshotCatalog, importFirecracker, createRestoreHook, serveFirecracker } from '../src/index.js';
import { PS, tmp, cleanup, imageBytes, makeStack } from './fixtures.js';

let dir: string;
let stack: TierStack;
let catalog: SnapshotCatalog;
let fcClient: string;
let badClient: string;
const PAGES = 256;
const img = imageBytes(PAGES, 51);

interface Line {
  level: string;
  obj: Record<string, unknown>;
  msg: string | undefined;
}
function captureLogger(): Logger & { lines: Line[] } {
  const lines: Line[] = [];
  const at =
    (level: string) =>
    (a: object | string, msg?: string): void =>
      void lines.push(typeof a === 'string' ? { level, obj: {}, msg: a } : { level, obj: a as Record<string, unknown>, msg });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

function runProc(cmd: string, args: string[]): { child: ChildProcess; result: Promise<Record<string, unknown>> } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  // 'close', not 'exit': a child can exit before its stdout has been read to the end (under load
  // the last line then went missing — the cause of this file's old flake).
  const result = new Promise<Record<string, unknown>>((resolve) => child.on('close', () => resolve(JSON.parse(out.trim().split('\n').pop() || '{}'))));
  return { child, result };
}

const until = async (cond: () => boolean, what: string): Promise<void> => {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
};

/** A valid mappings message for the snapshot (the address is never used: nothing is adopted). */
const goodJson = JSON.stringify([{ base_host_virt_addr: 0x7f0000000000, size: PAGES * PS, offset: 0, page_size: PS, page_size_kib: PS }]);

beforeAll(async () => {
  dir = tmp();
  fcClient = join(dir, 'fc_client');
  badClient = join(dir, 'bad_fd_client');
  execFileSync('gcc', ['-O2', '-o', fcClient, fileURLToPath(new URL('../native-test/fc_client.c', import.meta.url))]);
  execFileSync('gcc', ['-O2', '-o', badClient, fileURLToPath(new URL('./bad_fd_client.c', import.meta.url))]);
  stack = await makeStack(dir, 64);
  catalog = new SnapshotCatalog(stack);
  writeFileSync(join(dir, 'mem'), img);
  await importFirecracker(catalog, 'vm', join(dir, 'mem'), { regions: [{ size: PAGES * PS }] });
});
afterAll(async () => {
  await stack.close();
  cleanup(dir);
});

describe('uffd handshake: the descriptor must be a userfaultfd', () => {
  it('a pipe, an eventfd, /dev/null and a uffd without UFFDIO_API are refused with a log line, never served; a real VM is served meanwhile', async () => {
    const log = captureLogger();
    const hook = createRestoreHook(stack, { catalog, faultAround: 8, recordWorkingSet: false, prefetch: 'none' });
    const sock = join(dir, 'fd.sock');
    const handler = await serveFirecracker(hook, { socketPath: sock, snapshotId: 'vm', logger: log });
    try {
      const kinds = ['pipe', 'eventfd', 'devnull', 'uffd-noapi'] as const;
      const bad = kinds.map((k) => runProc(badClient, [sock, k, goodJson]));
      const vm = runProc(fcClient, [sock, join(dir, 'mem'), '--touch', '0:200']);
      for (const b of bad) expect(await b.result).toEqual({ closed_by_handler: true });
      const r = await vm.result;
      expect(r.error).toBeUndefined();
      expect(r.mismatches).toBe(0);
      expect(r.pages).toBe(200);
      await until(() => handler.health().instances === 0 && handler.health().restores === 1, 'the VM to end');
      const h = handler.health();
      expect(h.rejected).toBe(4);
      const rejected = log.lines.filter((l) => l.msg === 'uffd handshake: rejected a connection');
      expect(rejected.map((l) => l.obj.code)).toEqual(['TS_ERR_PROTOCOL', 'TS_ERR_PROTOCOL', 'TS_ERR_PROTOCOL', 'TS_ERR_PROTOCOL']);
      const reasons = rejected.map((l) => String(l.obj.reason)).sort();
      expect(reasons.filter((x) => /is not a userfaultfd \(it is pipe:\[\d+\]\)/.test(x))).toHaveLength(1);
      expect(reasons.filter((x) => /is not a userfaultfd \(it is anon_inode:\[eventfd\]\)/.test(x))).toHaveLength(1);
      expect(reasons.filter((x) => /is not a userfaultfd \(it is \/dev\/null\)/.test(x))).toHaveLength(1);
      expect(reasons.filter((x) => /has not been through UFFDIO_API/.test(x))).toHaveLength(1);
      // Only the real VM was ever served.
      expect(log.lines.filter((l) => l.msg === 'firecracker handler: serving a VM')).toHaveLength(1);
    } finally {
      await handler.close();
    }
  });

  it('restore(id, { kind: "socket" }) refuses a pipe with TS_ERR_PROTOCOL', async () => {
    const hook = createRestoreHook(stack, { catalog });
    const sock = join(dir, 'one-pipe.sock');
    const pending = hook.restore('vm', { kind: 'socket', socketPath: sock, timeoutMs: 20_000 });
    pending.catch(() => undefined);
    await until(() => existsSync(sock), 'the socket');
    const bad = runProc(badClient, [sock, 'pipe', goodJson]);
    await expect(pending).rejects.toMatchObject({ code: 'TS_ERR_PROTOCOL', message: expect.stringMatching(/not a userfaultfd \(it is pipe:/) });
    expect(await bad.result).toEqual({ closed_by_handler: true });
  });
});

describe('uffd handshake: concurrency and timeouts', () => {
  it('20 silent connections do not delay a real VM: it is served while they all still wait', async () => {
    const hook = createRestoreHook(stack, { catalog, faultAround: 8, recordWorkingSet: false, prefetch: 'none' });
    const sock = join(dir, 'silent.sock');
    const handler = await serveFirecracker(hook, { socketPath: sock, snapshotId: 'vm', handshakeTimeoutMs: 60_000 });
    const silent: Array<{ s: Socket; closed: boolean }> = [];
    try {
      for (let i = 0; i < 20; i++) {
        const s = connect(sock);
        const entry = { s, closed: false };
        s.on('error', () => undefined);
        s.on('close', () => (entry.closed = true));
        silent.push(entry);
        await new Promise<void>((r) => s.once('connect', () => r()));
      }
      await until(() => handler.health().pendingHandshakes === 20, '20 pending handshakes');
      const r = await runProc(fcClient, [sock, join(dir, 'mem'), '--touch', '0:256']).result;
      expect(r.error).toBeUndefined();
      expect(r.mismatches).toBe(0);
      await until(() => handler.health().restores === 1, 'the VM to be served');
      // Served while every silent peer was still waiting (none was dropped to make room).
      expect(silent.filter((x) => x.closed)).toHaveLength(0);
      expect(handler.health().pendingHandshakes).toBe(20);
      expect(handler.health().rejected).toBe(0);
    } finally {
      for (const x of silent) x.s.destroy();
      await handler.close();
    }
    await until(() => handler.health().pendingHandshakes === 0, 'the silent handshakes to end');
  });

  it('a silent peer is dropped after the handshake timeout with a log line; more than maxPending are refused on arrival', async () => {
    const log = captureLogger();
    const hook = createRestoreHook(stack, { catalog });
    const sock = join(dir, 'timeout.sock');
    const handler = await serveFirecracker(hook, { socketPath: sock, snapshotId: 'vm', handshakeTimeoutMs: 300, maxPendingHandshakes: 2, logger: log });
    const peers: Array<{ s: Socket; closed: boolean }> = [];
    try {
      for (let i = 0; i < 3; i++) {
        const s = connect(sock);
        const entry = { s, closed: false };
        s.on('error', () => undefined);
        s.on('close', () => (entry.closed = true));
        peers.push(entry);
        await new Promise<void>((r) => s.once('connect', () => r()));
      }
      await until(() => peers.every((p) => p.closed), 'the handler to drop all three');
      const rejected = log.lines.filter((l) => l.msg === 'uffd handshake: rejected a connection').map((l) => [l.obj.code, l.obj.reason]);
      expect(rejected).toContainEqual(['TS_ERR_UNAVAILABLE', '2 handshakes are already waiting (maxPending); refusing another connection']);
      expect(rejected.filter(([c, r]) => c === 'TS_ERR_TIMEOUT' && r === 'no handshake message within 300 ms')).toHaveLength(2);
      expect(handler.health()).toMatchObject({ rejected: 3, pendingHandshakes: 0 });
    } finally {
      for (const p of peers) p.s.destroy();
      await handler.close();
    }
  });
});
