import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where downloads, unpacked packages and built initramfs images live:
 * $TIERSTACK_GUEST_CACHE, else <repo>/.cache/guestvm (git-ignored), else ~/.cache/tierstack-guestvm.
 */
export function guestCacheDir(): string {
  const fromEnv = process.env.TIERSTACK_GUEST_CACHE;
  if (fromEnv) return resolve(fromEnv);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'pnpm-workspace.yaml'))) return join(dir, '.cache', 'guestvm');
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return join(homedir(), '.cache', 'tierstack-guestvm');
}
