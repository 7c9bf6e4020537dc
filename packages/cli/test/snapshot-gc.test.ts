/**
 * `tierstack snapshot` against damage and interruption, through the real CLI process: a damaged
 * manifest harms only its own snapshot; replaced generations, removed snapshots and an import
 * killed with SIGKILL give their disk space back (`du` of the data directory).
 */
import { describe, it, expect } from 'vitest';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, readdirSync, openSync, readSync, writeSync, closeSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const cli = (args: string[]): string => execFileSync(process.execPath, [bin, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const run = (args: string[]): { status: number | null; stdout: string; stderr: string } => {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
};
/** `du -sk`: KiB allocated under a directory. */
const du = (path: string): number => Number(execFileSync('du', ['-sk', path], { encoding: 'utf8' }).split('\t')[0]);

/** An image: random pages with runs of zero pages (which are not stored). */
function image(pages: number): Buffer {
  const b = randomBytes(pages * 4096);
  for (let p = 0; p < pages; p += 7) b.fill(0, p * 4096, (p + 1) * 4096);
  return b;
}

/** Flips bytes of page 0 of a namespace in the FileTier directory, behind the tier's back. */
function corrupt(tierDir: string, ns: string): void {
  const d = readdirSync(tierDir).find((x) => decodeURIComponent(x) === ns);
  if (!d) throw new Error(`no directory for ${ns}`);
  const fd = openSync(join(tierDir, d, '0.pages'), 'r+');
  const b = Buffer.alloc(32);
  readSync(fd, b, 0, 32, 100);
  for (let i = 0; i < 32; i++) b[i] = b[i]! ^ 0xff;
  writeSync(fd, b, 0, 32, 100);
  closeSync(fd);
}

describe('tierstack snapshot: damage and disk space', () => {
  it('one damaged manifest: ls lists the others and marks it (exit 0), only its own operations fail, rm removes it (exit 0)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ts-cli-dmg-'));
    try {
      const dd = ['--data-dir', join(dir, 'data')];
      for (const id of ['r1', 'r2', 'r3']) {
        writeFileSync(join(dir, id), image(64));
        cli(['snapshot', 'import', ...dd, id, join(dir, id)]);
      }
      corrupt(join(dir, 'data', 'pages'), '__tierstack_catalog/m/r2/a');
      const ls = run(['snapshot', 'ls', ...dd]);
      expect(ls.status).toBe(0);
      expect(ls.stdout).toMatch(/^r1\s+raw/m);
      expect(ls.stdout).toMatch(/^r3\s+raw/m);
      expect(ls.stdout).toMatch(/^r2\s+DAMAGED TS_ERR_CHECKSUM: /m);
      const json = run(['snapshot', 'ls', ...dd, '--json']).stdout.trim().split('\n').map((l) => JSON.parse(l) as { id: string; damaged?: { code: string } });
      expect(json.map((x) => [x.id, x.damaged?.code])).toEqual([['r1', undefined], ['r3', undefined], ['r2', 'TS_ERR_CHECKSUM']]);
      expect(run(['snapshot', 'info', ...dd, 'r2']).stderr).toMatch(/TS_ERR_CHECKSUM/);
      expect(run(['snapshot', 'export', ...dd, 'r2', join(dir, 'out')]).status).toBe(1);
      cli(['snapshot', 'export', ...dd, 'r3', join(dir, 'out3')]);
      expect(readFileSync(join(dir, 'out3')).equals(readFileSync(join(dir, 'r3')))).toBe(true);
      const rm = run(['snapshot', 'rm', ...dd, 'r2']);
      expect(rm.status).toBe(0);
      expect(rm.stdout).toMatch(/removed r2/);
      expect(run(['snapshot', 'ls', ...dd, '--json']).stdout.trim().split('\n').map((l) => (JSON.parse(l) as { id: string }).id)).toEqual(['r1', 'r3']);
      expect(run(['snapshot', 'info', ...dd, 'r2']).stderr).toMatch(/TS_ERR_NOT_FOUND/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('import, replace 3 times, rm, kill -9 mid-import: the old snapshot survives and du of the data dir returns to its starting size', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ts-cli-du-'));
    try {
      const data = join(dir, 'data');
      const dd = ['--data-dir', data];
      expect(cli(['snapshot', 'ls', ...dd])).toMatch(/no snapshots/);
      const start = du(data);
      const sizes: number[] = [];
      for (let i = 0; i < 4; i++) {
        writeFileSync(join(dir, 'fn'), image(4096)); // 16 MiB
        cli(['snapshot', 'import', ...dd, ...(i > 0 ? ['--replace'] : []), 'fn', join(dir, 'fn')]);
        sizes.push(du(data));
      }
      const info = cli(['snapshot', 'info', ...dd, 'fn']);
      expect(info).toMatch(/disk\s+\d+\.\d MiB allocated/);
      expect(cli(['snapshot', 'ls', ...dd])).toMatch(/^fn\s+raw\s+16\.0 MiB\s+3510\s+586\s+\d+\.\d MiB/m);
      cli(['snapshot', 'rm', ...dd, 'fn']);
      const afterRm = du(data);

      // A snapshot to keep, then a replace of it killed half way.
      writeFileSync(join(dir, 'keep'), image(256));
      cli(['snapshot', 'import', ...dd, 'keep', join(dir, 'keep')]);
      const withKeep = du(data);
      writeFileSync(join(dir, 'big'), image(128 * 1024)); // 512 MiB
      const child = spawn(process.execPath, [bin, 'snapshot', 'import', ...dd, '--replace', 'keep', join(dir, 'big')], { stdio: 'ignore' });
      const exited = new Promise((r) => child.on('exit', r));
      let during = 0;
      for (let i = 0; i < 2000 && (during = du(data)) < withKeep + 64 * 1024; i++) await new Promise((r) => setTimeout(r, 5));
      child.kill('SIGKILL');
      await exited;
      const killed = du(data);
      expect(killed).toBeGreaterThan(withKeep + 32 * 1024); // it was cut mid-import

      // The old snapshot is intact; the next ls reclaims the half-written generation.
      const ls = run(['snapshot', 'ls', ...dd]);
      expect(ls.status).toBe(0);
      expect(ls.stderr).toMatch(/reclaimed 1 unreferenced snapshot namespace/);
      cli(['snapshot', 'export', ...dd, 'keep', join(dir, 'keep.out')]);
      expect(readFileSync(join(dir, 'keep.out')).equals(readFileSync(join(dir, 'keep')))).toBe(true);
      const afterGc = du(data);
      cli(['snapshot', 'rm', ...dd, 'keep']);
      expect(cli(['snapshot', 'gc', ...dd])).toMatch(/^reclaimed 0 namespace/);
      const end = du(data);
      console.log(
        `du -sk ${data}: start ${start} KiB; after import + 3 replaces ${sizes.join(' / ')} KiB; after rm ${afterRm}; ` +
          `with keep ${withKeep}; killed mid-import at ${killed}; after ls (gc) ${afterGc}; after rm keep + gc ${end} KiB`,
      );
      // Within one segment; in practice a few catalog pages (the index and registry blobs).
      expect(existsSync(join(data, 'pages'))).toBe(true);
      expect(end - start).toBeLessThanOrEqual(1024);
      expect(afterGc - withKeep).toBeLessThanOrEqual(1024);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);
});
