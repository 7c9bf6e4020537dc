#!/usr/bin/env node
// Builds the restore keeper (native/keeper/*.c -> build/tierstack-keeper) with the C compiler,
// unless the binary is newer than its sources (--force rebuilds). The binary is written under a
// temporary name and renamed, so a keeper being started never sees half a file.
// Usage (this package's "build:native" and "install" scripts): node scripts/build-keeper.mjs
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(pkg, 'native', 'keeper');
const out = join(pkg, 'build', 'tierstack-keeper');
const sources = readdirSync(src).filter((f) => f.endsWith('.c')).map((f) => join(src, f));
const newest = Math.max(...readdirSync(src).map((f) => statSync(join(src, f)).mtimeMs));
if (!process.argv.includes('--force') && existsSync(out) && statSync(out).mtimeMs > newest) process.exit(0);
mkdirSync(dirname(out), { recursive: true });
const tmp = `${out}.${process.pid}.tmp`;
const cc = process.env.CC || 'cc';
try {
  execFileSync(cc, ['-O2', '-g', '-std=gnu11', '-Wall', '-Wextra', '-Werror', '-D_FORTIFY_SOURCE=2', '-o', tmp, ...sources], { stdio: ['ignore', 'inherit', 'inherit'] });
  renameSync(tmp, out);
} catch (err) {
  console.error(
    err.code === 'ENOENT' ? `build-keeper: no C compiler (${cc}): apt-get install gcc, then run it again` : `build-keeper: ${cc} failed (status ${err.status}): see the messages above`,
  );
  process.exitCode = 1;
} finally {
  rmSync(tmp, { force: true });
}
if (!process.exitCode) console.error(`build-keeper: built ${out}`);
