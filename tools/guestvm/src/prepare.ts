/** Everything a boot needs, fetched and built once into the cache (memoised per process). */
import { guestCacheDir } from './cache-dir.js';
import { ensureKernel, ensureTools, type KernelLayout, type ToolsLayout } from './fetch.js';
import { ensureInitramfs, type Initramfs } from './initramfs.js';

export interface PreparedGuest {
  cacheDir: string;
  tools: ToolsLayout;
  kernel: KernelLayout;
  initramfs: Initramfs;
}

const prepared = new Map<string, Promise<PreparedGuest>>();

/**
 * Fetches QEMU, the tools and a kernel into the cache and builds the initramfs, if not done yet.
 * The first call on a machine downloads ~125 MB; later calls only check stamps.
 */
export function prepareGuest(cacheDir = guestCacheDir()): Promise<PreparedGuest> {
  let p = prepared.get(cacheDir);
  if (!p) {
    p = (async () => {
      const tools = await ensureTools(cacheDir);
      const kernel = await ensureKernel(cacheDir, tools);
      const initramfs = await ensureInitramfs(cacheDir, tools, kernel);
      return { cacheDir, tools, kernel, initramfs };
    })();
    // A failure is not cached: a later call may succeed (network back, apt lists updated).
    p.catch(() => prepared.delete(cacheDir));
    prepared.set(cacheDir, p);
  }
  return p;
}
