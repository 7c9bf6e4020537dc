import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { runRestoreDemo } from '../src/commands/demo.js';

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
