/**
 * Fetches QEMU, its firmware and libraries, kmod, busybox, the ndctl/cxl/daxctl tools and a
 * Debian 6.12 kernel from the Debian archive with `apt-get download` + `dpkg -x` into the cache.
 * Nothing is installed on the host: binaries run from the cache with LD_LIBRARY_PATH.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GuestErrorCode, GuestVmError } from './errors.js';
import { exec, execOk } from './exec.js';
import { withFileLock } from './lock.js';

/** Packages unpacked into <cache>/tools (REFERENCE.md: QEMU 7.2 and what it loads, the tools). */
export const TOOL_PACKAGES = [
  'qemu-system-x86',
  'qemu-system-common',
  'qemu-system-data',
  'seabios',
  'ipxe-qemu',
  'libcapstone4',
  'libfdt1',
  'libpmem1',
  'libslirp0',
  'libvdeplug2',
  'libaio1',
  'kmod',
  'busybox-static',
  'cpio',
  'ndctl',
  'libndctl6',
  'libcxl1',
  'libdaxctl1',
  'daxctl',
  'libtraceevent1',
  'libtracefs1',
  'libiniparser1',
] as const;

/** Kernel package names: bookworm-security's 6.12 (bookworm's own 6.1 lacks ublk_drv and dax_cxl). */
export const KERNEL_PACKAGE_PATTERN = /^linux-image-(6\.12\.\d+)\+deb12-amd64-unsigned$/;

export interface ToolsLayout {
  root: string;
  qemu: string;
  /** Directories QEMU searches for firmware (-L). */
  firmwareDirs: string[];
  /** QEMU's loadable modules (accel-tcg-x86_64.so lives there). */
  qemuModuleDir: string;
  kmod: string;
  busybox: string;
  /** Colon-separated library directories inside the cache. */
  libraryPath: string;
  /** Wrappers: modprobe/depmod/insmod/rmmod/lsmod/modinfo/cxl/ndctl/daxctl (+ busybox), usable on the host and in the guest. */
  binDir: string;
}

export interface KernelLayout {
  /** uname -r of the guest kernel, e.g. 6.12.117+deb12-amd64. */
  release: string;
  root: string;
  vmlinuz: string;
  /** <root>/lib/modules (bind-mounted at /lib/modules in the guest). */
  modulesRoot: string;
}

const LIB_DIRS = ['usr/lib/x86_64-linux-gnu', 'lib/x86_64-linux-gnu'];

const aptEnv = (): NodeJS.ProcessEnv => ({ ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' });

function unsupported(message: string, cause?: unknown): GuestVmError {
  return new GuestVmError(GuestErrorCode.Unsupported, message, { cause });
}

function toolsLayout(root: string): ToolsLayout {
  return {
    root,
    qemu: join(root, 'usr/bin/qemu-system-x86_64'),
    firmwareDirs: [join(root, 'usr/share/qemu'), join(root, 'usr/share/seabios')],
    qemuModuleDir: join(root, 'usr/lib/x86_64-linux-gnu/qemu'),
    kmod: join(root, 'bin/kmod'),
    busybox: join(root, 'bin/busybox'),
    libraryPath: LIB_DIRS.map((d) => join(root, d)).join(':'),
    binDir: join(root, 'guestvm-bin'),
  };
}

async function aptDownload(packages: readonly string[], intoDir: string): Promise<string[]> {
  await mkdir(intoDir, { recursive: true });
  const before = new Set(await readdir(intoDir));
  const r = await exec('apt-get', ['download', ...packages], { cwd: intoDir, env: aptEnv() }).catch((err: unknown) => {
    throw unsupported(`cannot run apt-get (is this a Debian machine?): ${String(err)}`, err);
  });
  if (r.code !== 0) {
    throw unsupported(`apt-get download ${packages.join(' ')} failed: ${r.stderr.trim().split('\n').slice(-5).join('\n')}`);
  }
  const after = await readdir(intoDir);
  // apt-get download names files <name>_<version>_<arch>.deb; pick each package's file.
  return packages.map((p) => {
    const hits = after.filter((f) => f.startsWith(`${p}_`) && f.endsWith('.deb'));
    const fresh = hits.filter((f) => !before.has(f));
    const file = (fresh.length > 0 ? fresh : hits).sort().at(-1);
    if (!file) throw unsupported(`apt-get download ${p} produced no .deb`);
    return join(intoDir, file);
  });
}

let listsRefreshed = false;

/**
 * apt-get download, retried once after `apt-get update` when it fails: a fresh machine's apt
 * lists can be stale (versions gone from the mirror) or lack bookworm-security.
 */
async function aptDownloadFresh(packages: readonly string[], intoDir: string): Promise<string[]> {
  try {
    return await aptDownload(packages, intoDir);
  } catch (err) {
    if (listsRefreshed || process.getuid?.() !== 0) throw err;
    await refreshAptLists();
    return aptDownload(packages, intoDir);
  }
}

async function unpack(debs: readonly string[], root: string): Promise<void> {
  for (const deb of debs) {
    await execOk('dpkg', ['-x', deb, root]).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw unsupported('dpkg is not installed (is this a Debian machine?)', err);
      throw err;
    });
  }
}

/** Staging directories a killed process left behind (callers hold the fetch lock). */
async function removeStaleStaging(cacheDir: string): Promise<void> {
  for (const f of await readdir(cacheDir)) {
    if (/\.tmp-\d+$/.test(f)) await rm(join(cacheDir, f), { recursive: true, force: true });
  }
}

/** Dynamic libraries a binary needs that neither the cache nor the host provides. */
async function missingLibraries(binary: string, libraryPath: string): Promise<string[]> {
  const r = await exec('ldd', [binary], { env: { ...process.env, LD_LIBRARY_PATH: libraryPath } });
  return [...r.stdout.matchAll(/^\s*(\S+) => not found/gm)].map((m) => m[1]!);
}

async function installedOnHost(packages: readonly string[]): Promise<Set<string>> {
  const r = await exec('dpkg-query', ['-W', '-f=${Package} ${db:Status-Status}\n', ...packages]);
  const installed = new Set<string>();
  for (const line of r.stdout.split('\n')) {
    const [name, status] = line.split(' ');
    if (name && status === 'installed') installed.add(name.split(':')[0]!);
  }
  return installed;
}

/**
 * Library packages that the tool packages depend on (recursively) and the host lacks. Only
 * used when ldd finds a library missing: on the usual machine the fixed list above is enough.
 */
async function missingLibraryPackages(): Promise<string[]> {
  const r = await execOk(
    'apt-cache',
    ['depends', '--recurse', '--no-recommends', '--no-suggests', '--no-conflicts', '--no-breaks', '--no-replaces', '--no-enhances', 'qemu-system-x86', 'kmod', 'ndctl', 'daxctl'],
    { env: aptEnv() },
  );
  const names = [...new Set(r.stdout.split('\n').filter((l) => /^lib[\w.+-]+$/.test(l)))];
  const installed = await installedOnHost(names);
  return names.filter((n) => !installed.has(n));
}

/** Bump when the helper layout below changes: existing caches then rebuild only the helpers. */
const HELPERS_VERSION = '2';

/**
 * <tools>/guestvm-bin: modprobe, depmod, insmod, rmmod, lsmod, modinfo, cxl, ndctl, daxctl as
 * small sh wrappers that set LD_LIBRARY_PATH to the cache's libraries, plus busybox. They run
 * on the host and in the guest, where the cache is seen at the same path; the guest kernel also
 * uses the modprobe wrapper to load modules on demand (mount -t ext4, ...).
 */
async function ensureHelpers(cacheDir: string, layout: ToolsLayout): Promise<void> {
  const stamp = join(layout.binDir, '.version');
  if ((await readFile(stamp, 'utf8').catch(() => '')) === HELPERS_VERSION) return;
  await withFileLock(join(cacheDir, 'fetch.lock'), async () => {
    if ((await readFile(stamp, 'utf8').catch(() => '')) === HELPERS_VERSION) return;
    const staging = `${layout.binDir}.tmp-${process.pid}`;
    await rm(staging, { recursive: true, force: true });
    await mkdir(join(staging, '.kmod'), { recursive: true });
    const wrapper = (target: string) =>
      `#!/bin/sh\nLD_LIBRARY_PATH='${layout.libraryPath}'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} exec '${target}' "$@"\n`;
    // kmod picks its personality from argv[0]'s basename, hence one link per name. The
    // package's own links point at /bin/kmod, which the host does not have.
    for (const name of ['modprobe', 'depmod', 'insmod', 'rmmod', 'lsmod', 'modinfo']) {
      await symlink('../../bin/kmod', join(staging, '.kmod', name));
      await writeFile(join(staging, name), wrapper(join(layout.binDir, '.kmod', name)), { mode: 0o755 });
    }
    for (const name of ['cxl', 'ndctl', 'daxctl']) {
      await writeFile(join(staging, name), wrapper(join(layout.root, 'usr/bin', name)), { mode: 0o755 });
    }
    await symlink('../bin/busybox', join(staging, 'busybox'));
    await writeFile(join(staging, '.version'), HELPERS_VERSION);
    await rm(layout.binDir, { recursive: true, force: true });
    await rename(staging, layout.binDir);
  });
}

/** Unpacks the tool packages into <cache>/tools once; later calls only check the stamp. */
export async function ensureTools(cacheDir: string): Promise<ToolsLayout> {
  const root = join(cacheDir, 'tools');
  const stamp = join(root, '.complete');
  if (!existsSync(stamp)) await fetchTools(cacheDir, root, stamp);
  const layout = toolsLayout(root);
  await ensureHelpers(cacheDir, layout);
  return layout;
}

async function fetchTools(cacheDir: string, root: string, stamp: string): Promise<void> {
  await mkdir(cacheDir, { recursive: true });
  await withFileLock(join(cacheDir, 'fetch.lock'), async () => {
    if (existsSync(stamp)) return;
    await removeStaleStaging(cacheDir);
    const staging = `${root}.tmp-${process.pid}`;
    await rm(staging, { recursive: true, force: true });
    // Only this run's downloads in debs/, so each package maps to exactly one file.
    await rm(join(cacheDir, 'debs'), { recursive: true, force: true });
    const debs = await aptDownloadFresh(TOOL_PACKAGES, join(cacheDir, 'debs'));
    await unpack(debs, staging);
    const layout = toolsLayout(staging);
    const checked = [layout.qemu, layout.kmod, join(staging, 'usr/bin/ndctl'), join(staging, 'usr/bin/cxl'), join(staging, 'usr/bin/daxctl')];
    const missing = async () => (await Promise.all(checked.map((b) => missingLibraries(b, layout.libraryPath)))).flat();
    let lacking = await missing();
    const extra: string[] = [];
    if (lacking.length > 0) {
      extra.push(...(await missingLibraryPackages()));
      if (extra.length > 0) await unpack(await aptDownloadFresh(extra, join(cacheDir, 'debs')), staging);
      lacking = await missing();
      if (lacking.length > 0) throw unsupported(`QEMU or the tools need libraries that could not be fetched: ${[...new Set(lacking)].join(', ')}`);
    }
    await writeFile(join(staging, '.complete'), JSON.stringify({ debs: debs.map((d) => d.split('/').at(-1)), extra }, null, 1));
    await rm(root, { recursive: true, force: true });
    await rename(staging, root);
  });
}

const versionKey = (v: string): number[] => v.split(/[.+-]/).map((p) => Number.parseInt(p, 10) || 0);
function compareVersions(a: string, b: string): number {
  const ka = versionKey(a);
  const kb = versionKey(b);
  for (let i = 0; i < Math.max(ka.length, kb.length); i++) {
    const d = (ka[i] ?? 0) - (kb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** Kernel packages apt knows about, newest first. */
async function kernelCandidates(): Promise<string[]> {
  const r = await exec('apt-cache', ['search', '--names-only', '^linux-image-6\\.12\\..*-amd64-unsigned$'], { env: aptEnv() });
  const names = r.stdout
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => KERNEL_PACKAGE_PATTERN.test(n));
  return names.sort((a, b) => compareVersions(b.match(KERNEL_PACKAGE_PATTERN)![1]!, a.match(KERNEL_PACKAGE_PATTERN)![1]!));
}

async function refreshAptLists(): Promise<void> {
  if (listsRefreshed || process.getuid?.() !== 0) return;
  listsRefreshed = true;
  // Other tierstack tooling serialises apt on this lock file; flock may be absent elsewhere.
  // Best effort: a failure shows up as the download or kernel lookup failing afterwards.
  const viaFlock = await exec('flock', ['/tmp/tierstack-apt.lock', 'apt-get', 'update', '-qq'], { env: aptEnv() }).catch(() => null);
  if (viaFlock === null) await exec('apt-get', ['update', '-qq'], { env: aptEnv() }).catch(() => null);
}

async function cachedKernels(cacheDir: string): Promise<string[]> {
  if (!existsSync(cacheDir)) return [];
  const dirs = (await readdir(cacheDir)).filter((d) => d.startsWith('kernel-') && existsSync(join(cacheDir, d, '.complete')));
  return dirs.sort((a, b) => compareVersions(b.slice(7), a.slice(7)));
}

async function kernelLayout(root: string): Promise<KernelLayout> {
  const release = (await readFile(join(root, '.complete'), 'utf8')).trim();
  return { release, root, vmlinuz: join(root, 'boot', `vmlinuz-${release}`), modulesRoot: join(root, 'lib/modules') };
}

/**
 * A 6.12 kernel unpacked into <cache>/kernel-<release> with modules.dep built. A kernel already
 * in the cache is used as is (no apt query); $TIERSTACK_GUEST_KERNEL names a package to pin one.
 * Otherwise the newest linux-image-6.12.*+deb12-amd64-unsigned that apt-cache lists is fetched.
 */
export async function ensureKernel(cacheDir: string, tools: ToolsLayout): Promise<KernelLayout> {
  const pinned = process.env.TIERSTACK_GUEST_KERNEL;
  const pick = async (): Promise<string | undefined> => {
    const cached = await cachedKernels(cacheDir);
    if (pinned) {
      const release = pinned.replace(/^linux-image-/, '').replace(/-unsigned$/, '');
      return cached.find((d) => d === `kernel-${release}`);
    }
    return cached[0];
  };
  const hit = await pick();
  if (hit) return kernelLayout(join(cacheDir, hit));
  await mkdir(cacheDir, { recursive: true });
  return withFileLock(join(cacheDir, 'fetch.lock'), async () => {
    const again = await pick();
    if (again) return kernelLayout(join(cacheDir, again));
    await removeStaleStaging(cacheDir);
    let candidates = pinned ? [pinned] : await kernelCandidates();
    if (candidates.length === 0) {
      await refreshAptLists();
      candidates = await kernelCandidates();
    }
    if (candidates.length === 0) {
      throw unsupported(
        'apt-cache lists no linux-image-6.12.*+deb12-amd64-unsigned: add bookworm-security to the apt sources and run apt-get update',
      );
    }
    const errors: string[] = [];
    for (const pkg of candidates.slice(0, 3)) {
      try {
        const [deb] = await aptDownloadFresh([pkg], join(cacheDir, 'debs'));
        const release = pkg.replace(/^linux-image-/, '').replace(/-unsigned$/, '');
        const root = join(cacheDir, `kernel-${release}`);
        const staging = `${root}.tmp-${process.pid}`;
        await rm(staging, { recursive: true, force: true });
        await unpack([deb!], staging);
        // The package's postinst would run depmod; we never run it, so build modules.dep here.
        await execOk(tools.kmod, ['-b', staging, release], {
          argv0: 'depmod',
          env: { ...process.env, LD_LIBRARY_PATH: tools.libraryPath },
        });
        await writeFile(join(staging, '.complete'), `${release}\n`);
        await rm(root, { recursive: true, force: true });
        await rename(staging, root);
        // The .deb is 100 MiB and no longer needed once unpacked.
        await rm(deb!, { force: true });
        return kernelLayout(root);
      } catch (err) {
        errors.push(`${pkg}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    throw unsupported(`could not fetch a 6.12 kernel:\n${errors.join('\n')}`);
  });
}
