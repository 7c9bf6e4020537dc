// Builds the addon if its sources changed (a no-op when it is up to date), so the tests never
// run against a missing or stale build.
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export default function setup(): void {
  const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
  execFileSync(process.execPath, [join(pkg, '..', '..', 'scripts', 'build-native.mjs')], { cwd: pkg, stdio: 'inherit' });
}
