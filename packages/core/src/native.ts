/**
 * Native plumbing shared by the packages that ship an addon (cxl, rdma, uffd, ublk).
 *
 * - `loadNativeAddon` finds a package's node-gyp output and, when it is missing or fails to
 *   load, throws one TS_ERR_NATIVE_MISSING error that says what to install and what to run.
 * - `NativePageStoreHandle` is the JS face of the C ABI in include/tierstack/page_store.h:
 *   a napi_external wrapping a `ts_page_store*`, type-tagged so that addons can check it.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { TierStackError, ErrorCode } from './errors.js';

/** Opaque: a napi_external holding a `ts_page_store*`. Only native code looks inside. */
export interface NativePageStoreHandle {
  readonly __tierstackPageStore: unique symbol;
}

export interface NativeAddonSpec {
  /** The package directory (the one holding binding.gyp). */
  packageDir: string;
  /** The target name in binding.gyp (the file is build/Release/<name>.node). */
  name: string;
  /** Package name, for the error message. */
  packageName: string;
  /** Debian packages the build needs (headers, libraries). */
  aptPackages?: string[];
}

/** Where the include directory of the C ABI header lives (for binding.gyp). */
export function coreIncludeDir(): string {
  return join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..', 'include');
}

export function loadNativeAddon<T>(spec: NativeAddonSpec): T {
  const candidates = [
    join(spec.packageDir, 'build', 'Release', `${spec.name}.node`),
    join(spec.packageDir, 'build', 'Debug', `${spec.name}.node`),
  ];
  const path = candidates.find((c) => existsSync(c));
  const hint = [
    spec.aptPackages?.length ? `install the system packages: apt-get install -y ${spec.aptPackages.join(' ')}` : undefined,
    `build it: pnpm --filter ${spec.packageName} run build:native (or run the README's setup: npm run setup)`,
  ]
    .filter(Boolean)
    .join('; then ');
  if (path === undefined) {
    throw new TierStackError(
      ErrorCode.NativeMissing,
      `the native addon of ${spec.packageName} is not built (looked for ${candidates[0]}): ${hint}`,
      { details: { candidates } },
    );
  }
  try {
    return createRequire(import.meta.url)(path) as T;
  } catch (err) {
    throw new TierStackError(
      ErrorCode.NativeMissing,
      `the native addon of ${spec.packageName} at ${path} failed to load (${(err as Error).message}): ${hint}`,
      { cause: err, details: { path } },
    );
  }
}
