/**
 * `tierstack run` through the built binary: a C program with big allocations under a budget (its
 * checksum and exit status as without the command), the flags' environment variables, --stats,
 * --print-library. The interposer package's own tests cover the library and the server in depth.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'tierstack-cli-run-'));
const exe = join(dir, 'big');

const PROGRAM = `
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
int main(int argc, char **argv) {
  size_t n = (size_t)atoi(argv[1]) << 20;
  uint64_t *a = malloc(n), h = 1;
  if (!a) return 2;
  for (size_t i = 0; i < n / 8; i++) a[i] = i * 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < n / 8; i++) h = (h ^ a[i]) * 0x100000001b3ull;
  a = realloc(a, 2 * n);
  for (size_t i = 0; i < n / 8; i++) h = (h ^ a[i]) * 0x100000001b3ull;
  free(a);
  printf("%016llx\\n", (unsigned long long)h);
  return atoi(argv[2]);
}
`;

beforeAll(() => {
  writeFileSync(join(dir, 'big.c'), PROGRAM);
  execFileSync('gcc', ['-O2', '-o', exe, join(dir, 'big.c')]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const canRun = existsSync('/dev/userfaultfd') && process.getuid?.() === 0;

describe.skipIf(!canRun)('tierstack run (CLI)', () => {
  it('runs a program with big allocations under a budget: same output, exit status passed through, nothing left', () => {
    const plain = spawnSync(exe, ['24', '5'], { encoding: 'utf8' });
    expect(plain.status).toBe(5);
    const dataDir = join(dir, 'data');
    const r = spawnSync(
      process.execPath,
      [bin, 'run', '--data-dir', dataDir, '--memory-mib', '8', '--min-size', '1M', '--budget', '4M', '--arena', '1G', '--stats', '--', exe, '24', '5'],
      { encoding: 'utf8' },
    );
    expect(r.status).toBe(5);
    expect(r.stdout).toBe(plain.stdout);
    const stats = JSON.parse(r.stderr.trim().split('\n').pop()!) as { status: number; sessions: Array<{ releasedPages: number }>; store: { pagesWritten: number; errors: number } };
    expect(stats.status).toBe(5);
    expect(stats.sessions).toHaveLength(1);
    expect(stats.store.pagesWritten).toBeGreaterThan(4096); // pages left the process under the 4 MiB budget
    expect(stats.store.errors).toBe(0);
    expect(readdirSync(join(dataDir, 'pages')).filter((f) => f !== 'tierstack-file.json')).toEqual([]);
  });

  it('reads its settings from the TIERSTACK_RUN_* variables too', () => {
    const plain = spawnSync(exe, ['8', '0'], { encoding: 'utf8' });
    const r = spawnSync(process.execPath, [bin, 'run', '--data-dir', join(dir, 'data2'), '--memory-mib', '8', '--stats', '--', exe, '8', '0'], {
      encoding: 'utf8',
      env: { ...process.env, TIERSTACK_RUN_MIN_SIZE: '1M', TIERSTACK_RUN_BUDGET: '2M', TIERSTACK_RUN_ARENA: '1G' },
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(plain.stdout);
    const stats = JSON.parse(r.stderr.trim().split('\n').pop()!) as { sessions: unknown[]; store: { pagesWritten: number } };
    expect(stats.sessions).toHaveLength(1);
    expect(stats.store.pagesWritten).toBeGreaterThan(1024);
  });

  it('prints the library path for people who preload it themselves', () => {
    const out = execFileSync(process.execPath, [bin, 'run', '--print-library'], { encoding: 'utf8' }).trim();
    expect(out).toMatch(/tierstack_run\.so$/);
    expect(existsSync(out)).toBe(true);
  });
});
