import { describe, it, expect } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { runRestoreDemo } from '../src/commands/demo.js';
import { encodePsHeader, decodePsHeader, PS_IOV_GET, PS_IOV_CLOSE, CRIU_IMG_MAGIC, CRIU_PAGEMAP_MAGIC } from '@tierstack/faas';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const cli = (args: string[]): string => execFileSync(process.execPath, [bin, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

describe('tierstack snapshot / demo', () => {
  it('snapshot import, ls, info, export (byte-identical), refuse re-import, rm', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ts-cli-snap-'));
    try {
      const img = Buffer.concat([randomBytes(64 * 4096), Buffer.alloc(32 * 4096), randomBytes(5000)]);
      writeFileSync(join(dir, 'mem'), img);
      const dd = ['--data-dir', join(dir, 'data')];
      expect(cli(['snapshot', 'import', ...dd, 'fn', join(dir, 'mem')])).toMatch(/imported fn: .* 66 pages stored, 32 zero pages elided/);
      const ls = cli(['snapshot', 'ls', ...dd, '--json']).trim().split('\n').map((l) => JSON.parse(l) as { id: string; pageCount: number });
      expect(ls.map((s) => [s.id, s.pageCount])).toEqual([['fn', 98]]);
      expect(cli(['snapshot', 'info', ...dd, 'fn'])).toMatch(/stored pages\s+66 \(32 zero pages elided\)/);
      cli(['snapshot', 'export', ...dd, 'fn', join(dir, 'out')]);
      expect(readFileSync(join(dir, 'out')).equals(img)).toBe(true);
      expect(() => cli(['snapshot', 'import', ...dd, 'fn', join(dir, 'mem')])).toThrow(/TS_ERR_EXISTS/);
      cli(['snapshot', 'rm', ...dd, 'fn']);
      expect(cli(['snapshot', 'ls', ...dd])).toMatch(/no snapshots/);
      expect(() => cli(['snapshot', 'info', ...dd, 'fn'])).toThrow(/TS_ERR_NOT_FOUND/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('restore --criu-port serves a CRIU-imported snapshot over the page-server protocol', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ts-cli-criu-'));
    const dd = ['--data-dir', join(dir, 'data')];
    try {
      // pagemap-7.img: head {pages_id 1}, one PRESENT entry of 8 pages at 0x7f0000000000 (4.2+ layout, by hand).
      const rec = (b: number[]): Buffer => Buffer.concat([Buffer.from(new Uint32Array([b.length]).buffer), Buffer.from(b)]);
      const vaddrVarint = [0x80, 0x80, 0x80, 0x80, 0x80, 0xe0, 0x1f]; // 0x7f0000000000
      const magic = Buffer.alloc(8);
      magic.writeUInt32LE(CRIU_IMG_MAGIC, 0);
      magic.writeUInt32LE(CRIU_PAGEMAP_MAGIC, 4);
      const img = join(dir, 'img');
      execFileSync('mkdir', ['-p', img]);
      writeFileSync(join(img, 'pagemap-7.img'), Buffer.concat([magic, rec([0x08, 1]), rec([0x08, ...vaddrVarint, 0x10, 0, 0x20, 4, 0x28, 8])]));
      const pages = randomBytes(8 * 4096);
      writeFileSync(join(img, 'pages-1.img'), pages);
      cli(['snapshot', 'import', ...dd, '--criu', 'ct', img]);
      const server = spawn(process.execPath, [bin, 'restore', ...dd, '--criu-port', '0', '--criu-layout', 'v42', 'ct'], { stdio: ['ignore', 'pipe', 'pipe'] });
      const port = await new Promise<number>((resolve, reject) => {
        let out = '';
        server.stdout!.on('data', (d) => {
          out += d;
          const m = /on 127\.0\.0\.1:(\d+)/.exec(out);
          if (m) resolve(Number(m[1]));
        });
        server.on('exit', (code) => reject(new Error(`restore exited (${code}): ${out}`)));
      });
      const sock = connect(port, '127.0.0.1');
      let got = Buffer.alloc(0);
      sock.on('data', (d) => (got = Buffer.concat([got, d])));
      const closed = new Promise<void>((r) => sock.on('close', () => r()));
      sock.write(Buffer.concat([
        encodePsHeader('v42', { cmd: PS_IOV_GET, nrPages: 3, vaddr: 0x7f0000000000 + 2 * 4096, dstId: (7n << 8n) | 1n }),
        encodePsHeader('v42', { cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0, dstId: 0n }),
      ]));
      await closed;
      expect(decodePsHeader('v42', got.subarray(0, 32)).nrPages).toBe(3);
      expect(got.subarray(32, 32 + 3 * 4096).equals(pages.subarray(2 * 4096, 5 * 4096))).toBe(true);
      expect(got.readInt32LE(32 + 3 * 4096)).toBe(0);
      server.kill('SIGINT');
      await new Promise((r) => server.on('exit', r));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the restore demo: eager, lazy and lazy + prefetch all serve the request byte-correct', async () => {
    const lines: string[] = [];
    const r = await runRestoreDemo({ snapshotMiB: 16, cacheMiB: 8, out: (l) => lines.push(l) });
    expect(r.wrong).toBe(0);
    expect(r.rows.map((x) => x.mode)).toEqual(['eager (copy all, then run)', 'lazy (first touch)', 'lazy + working-set prefetch']);
    for (const row of r.rows) expect(row.touched).toBeGreaterThan(0);
    expect(r.rows[0]!.prefetched).toBeGreaterThan(r.rows[2]!.prefetched);
    expect(r.rows[2]!.prefetched).toBeGreaterThan(0);
    expect(r.rows[2]!.faults).toBeLessThan(r.rows[1]!.faults);
    expect(lines.join('\n')).toMatch(/time to first response/);
  });
});
