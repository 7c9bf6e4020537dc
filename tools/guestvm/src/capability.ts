/** Can this machine run guests? Used by tests to skip with a printed reason. */
import { GuestErrorCode } from './errors.js';
import { prepareGuest } from './prepare.js';

export interface GuestCapability {
  ok: boolean;
  /** Why not (empty when ok). */
  reason: string;
  /** uname -r of the cached guest kernel, when ok. */
  kernelRelease?: string;
  cacheDir?: string;
}

/**
 * Prepares the cache (downloading on first use) and reports whether guests can run. Only a
 * harness that cannot be set up (no apt, no Debian archive, a missing library: TS_ERR_UNSUPPORTED)
 * yields ok=false; any other failure is a bug and is thrown, so tests fail rather than skip.
 */
export async function guestCapability(): Promise<GuestCapability> {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return { ok: false, reason: `the guest harness needs Linux on x86-64 (this is ${process.platform}/${process.arch})` };
  }
  try {
    const g = await prepareGuest();
    return { ok: true, reason: '', kernelRelease: g.kernel.release, cacheDir: g.cacheDir };
  } catch (err) {
    if ((err as { code?: unknown }).code === GuestErrorCode.Unsupported) {
      return { ok: false, reason: (err as Error).message };
    }
    throw err;
  }
}
