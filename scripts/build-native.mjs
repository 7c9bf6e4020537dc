#!/usr/bin/env node
// Builds the native addon of the package in the current directory with node-gyp, unless the
// built .node files are newer than binding.gyp, the package's native sources and the core C
// ABI headers. Uses Node's installed headers (/usr/include/node) when present, so no header
// download is needed. Usage (a package's "build:native" script): node ../../scripts/build-native.mjs
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = process.cwd();
const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const force = process.argv.includes('--force');

function newest(path) {
  if (!existsSync(path)) return 0;
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  return Math.max(0, ...readdirSync(path).map((e) => newest(join(path, e))));
}

function built() {
  const dir = join(pkgDir, 'build', 'Release');
  if (!existsSync(dir)) return 0;
  const nodes = readdirSync(dir).filter((f) => f.endsWith('.node'));
  return nodes.length ? Math.min(...nodes.map((f) => statSync(join(dir, f)).mtimeMs)) : 0;
}

const sources = Math.max(
  newest(join(pkgDir, 'binding.gyp')),
  newest(join(pkgDir, 'native')),
  newest(join(repo, 'packages', 'core', 'include')),
);
if (!force && built() > sources) process.exit(0);

// One build per package at a time: `pnpm install` (the install script), setup.sh and test set-ups
// may all ask at once, and node-gyp rebuild deletes build/ while it works.
const lock = join(pkgDir, '.build-native.lock');
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
for (;;) {
  try {
    mkdirSync(lock);
    break;
  } catch (err) {
    if (err.code !== 'EEXIST') throw err;
    // A lock older than 10 minutes belongs to a build that died.
    if (Date.now() - statSync(lock).mtimeMs > 600_000) rmSync(lock, { recursive: true, force: true });
    else sleep(250);
  }
}
process.on('exit', () => rmSync(lock, { recursive: true, force: true }));
if (!force && built() > sources) process.exit(0); // someone else built it while we waited

const gyp = createRequire(join(repo, 'package.json')).resolve('node-gyp/bin/node-gyp.js');
const args = [gyp, 'rebuild', '--release', `-j`, 'max'];
if (existsSync('/usr/include/node/node_api.h')) args.push('--nodedir=/usr');
console.error(`build-native: building ${pkgDir}`);
execFileSync(process.execPath, args, { cwd: pkgDir, stdio: ['ignore', 'inherit', 'inherit'] });
