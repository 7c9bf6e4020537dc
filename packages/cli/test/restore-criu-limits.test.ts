/**
 * `tierstack restore --criu-port` resource limits from the command line: connection limit, idle
 * timeout and layout mismatch, against the real CLI process.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { encodePsHeader, decodePsHeader, PS_IOV_GET, CRIU_IMG_MAGIC, CRIU_PAGEMAP_MAGIC } from '@tierstack/faas';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const cli = (args: string[]): string => execFileSync(process.execPath, [bin, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let dir: string;
let dd: string[];
const pages = randomBytes(8 * 4096);
const VADDR = 0x7f0000000000;
const DST = (7n << 8n) | 1n;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ts-cli-criu-limits-'));
  dd = ['--data-dir', join(dir, 'data')];
  // pagemap-7.img: head {pages_id 1}, one PRESENT entry of 8 pages at 0x7f0000000000 (4.2+ layout, by hand).
  const rec = (b: number[]): Buffer => Buffer.concat([Buffer.from(new Uint32Array([b.length]).buffer), Buffer.from(b)]);
  const vaddrVarint = [0x80, 0x80, 0x80, 0x80, 0x80, 0xe0, 0x1f];
  const magic = Buffer.alloc(8);
  magic.writeUInt32LE(CRIU_IMG_MAGIC, 0);
  magic.writeUInt32LE(CRIU_PAGEMAP_MAGIC, 4);
  const img = join(dir, 'img');
  mkdirSync(img, { recursive: true });
  writeFileSync(join(img, 'pagemap-7.img'), Buffer.concat([magic, rec([0x08, 1]), rec([0x08, ...vaddrVarint, 0x10, 0, 0x20, 4, 0x28, 8])]));
  writeFileSync(join(img, 'pages-1.img'), pages);
  cli(['snapshot', 'import', ...dd, '--criu', 'ct', img]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function startServer(extra: string[]): Promise<{ proc: ChildProcess; port: number; stderr: () => string }> {
  const proc = spawn(process.execPath, [bin, 'restore', ...dd, '--criu-port', '0', ...extra, 'ct'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d) => {
      out += d;
      const m = /on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    proc.on('exit', (code) => reject(new Error(`restore exited (${code}): ${out} ${err}`)));
  });
  return { proc, port, stderr: () => err };
}

async function stop(proc: ChildProcess): Promise<void> {
  proc.kill('SIGINT');
  await new Promise((r) => proc.on('exit', r));
}

function open(port: number): Promise<{ sock: Socket; data: () => Buffer; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let got = Buffer.alloc(0);
    sock.on('data', (d) => (got = Buffer.concat([got, d])));
    sock.on('error', () => undefined);
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    sock.once('connect', () => resolve({ sock, data: () => got, closed }));
    sock.once('error', reject);
  });
}

async function served(port: number): Promise<void> {
  const c = await open(port);
  c.sock.write(encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: 2, vaddr: VADDR + 4096, dstId: DST }));
  for (let i = 0; i < 500 && c.data().length < 32 + 2 * 4096; i++) await new Promise((r) => setTimeout(r, 10));
  expect(decodePsHeader('v42', c.data().subarray(0, 32)).nrPages).toBe(2);
  expect(c.data().subarray(32).equals(pages.subarray(4096, 3 * 4096))).toBe(true);
  c.sock.destroy();
}

describe('tierstack restore --criu-port limits', () => {
  it('--criu-max-connections and --criu-idle-timeout-ms: the extra connection and the silent one are closed with a log line', async () => {
    const s = await startServer(['--criu-layout', 'v42', '--criu-max-connections', '1', '--criu-idle-timeout-ms', '2500']);
    try {
      const silent = await open(s.port);
      const extra = await open(s.port);
      await extra.closed;
      await silent.closed;
      expect(s.stderr()).toMatch(/1 connections are open \(maxConnections\)/);
      expect(s.stderr()).toMatch(/idle for 2500 ms/);
      await served(s.port).catch((e) => { throw new Error(`${(e as Error).message}\n${s.stderr()}`); });
    } finally {
      await stop(s.proc);
    }
  });

  it('--criu-layout v42 against a legacy (24-byte header) client: the connection is refused with what to run, no deadlock', async () => {
    const s = await startServer(['--criu-layout', 'v42', '--criu-idle-timeout-ms', '0']);
    try {
      const c = await open(s.port);
      c.sock.write(encodePsHeader('legacy', { cmd: PS_IOV_GET, nrPages: 2, vaddr: VADDR, dstId: DST }));
      await c.closed;
      expect(c.data().length).toBe(0);
      expect(s.stderr()).toMatch(/TS_ERR_PROTOCOL.*CRIU 3\.x-4\.1 \(24-byte\).*--criu-layout legacy or auto/);
      await served(s.port);
    } finally {
      await stop(s.proc);
    }
  });

  it('bad limits are refused before serving', () => {
    expect(() => cli(['restore', ...dd, '--criu-port', '0', '--criu-max-connections', '0', 'ct'])).toThrow(/TS_ERR_BAD_ARGUMENT/);
  });
});
