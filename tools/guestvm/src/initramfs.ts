/**
 * The guest's initramfs: static busybox, the few modules needed to reach the host's root over
 * virtio-9p (decompressed, loaded in dependency order with insmod) and /init below. Built once
 * and cached under a name that hashes every input.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildCpio, type CpioEntry } from './cpio.js';
import type { KernelLayout, ToolsLayout } from './fetch.js';
import { withFileLock } from './lock.js';

const execFileAsync = promisify(execFile);

/** Modules the initramfs loads itself; everything else is modprobe'd later from the guest root. */
export const INITRAMFS_MODULES = ['9pnet_virtio', '9p', 'overlay', 'virtio_blk'] as const;

/** 9p mount tags shared between the QEMU command line and /init. */
export const TAG_ROOT = 'hostroot';
export const TAG_JOB = 'guestjob';
export const TAG_RESULTS = 'guestresults';
/** Where the job share is mounted inside the guest (the results share is its results/ subdir). */
export const GUEST_JOB_DIR = '/run/guestvm';

// Stage 1. Runs as PID 1 from the initramfs and stays PID 1: it assembles the guest root
// (host / read-only over 9p + tmpfs overlay), chroots into it to run the per-run job script,
// then powers off. A failure is printed on the console, which the host reads on a crash.
const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
fail() { echo "guestvm-init: FAILED: $*"; sync; poweroff -f; sleep 5; exit 1; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/guestvm-modules); do insmod "/lib/modules/$m.ko" || fail "insmod $m"; done
echo "guestvm-init: modules loaded"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 ${TAG_ROOT} /host || fail "mount host root (9p ${TAG_ROOT})"
mount -t tmpfs -o mode=0755 overlay-rw /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "mount overlay"
R=/newroot
echo "guestvm-init: host root mounted"
mount -t proc proc $R/proc || fail "mount proc"
mount -t sysfs sysfs $R/sys || fail "mount sysfs"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fail "mount cgroup2"
mount -t devtmpfs devtmpfs $R/dev || fail "mount devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=0755 run $R/run || fail "mount /run"
mkdir -p $R${GUEST_JOB_DIR}
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 ${TAG_JOB} $R${GUEST_JOB_DIR} || fail "mount job share"
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 ${TAG_RESULTS} $R${GUEST_JOB_DIR}/results || fail "mount results share"
ifconfig lo 127.0.0.1 up
# On-demand module loading (mount -t ext4, ...) runs in the kernel's root, which is this
# initramfs, not the chroot: hand it to the guest root's modprobe (linked by the job script).
echo /bin/guestvm-modprobe > /proc/sys/kernel/modprobe
hostname tierstack-guest
echo "guestvm-init: running job"
chroot $R /bin/sh ${GUEST_JOB_DIR}/job.sh
echo "guestvm-init: job finished ($?)"
sync
poweroff -f
`;

const MODPROBE_SHIM = `#!/bin/busybox sh
exec /bin/busybox chroot /newroot /run/guestvm-modprobe "$@"
`;

export interface Initramfs {
  path: string;
  hash: string;
}

/** Modules in load order (dependencies first), skipping the ones built into the kernel. */
async function moduleLoadOrder(kernel: KernelLayout, wanted: readonly string[]): Promise<string[]> {
  const dir = join(kernel.modulesRoot, kernel.release);
  const depLines = (await readFile(join(dir, 'modules.dep'), 'utf8')).split('\n');
  const deps = new Map<string, string[]>();
  const byName = new Map<string, string>();
  const nameOf = (rel: string) => rel.split('/').at(-1)!.replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_');
  for (const line of depLines) {
    const [mod, rest] = line.split(':');
    if (!mod) continue;
    deps.set(mod, (rest ?? '').trim().split(/\s+/).filter(Boolean));
    byName.set(nameOf(mod), mod);
  }
  const order: string[] = [];
  const visit = (rel: string) => {
    if (order.includes(rel)) return;
    for (const d of deps.get(rel) ?? []) visit(d);
    order.push(rel);
  };
  for (const name of wanted) {
    const rel = byName.get(name.replace(/-/g, '_'));
    if (rel) visit(rel); // absent from modules.dep: built in
  }
  return order;
}

/** Drops images built from older inputs, once they have not been used for a day. */
async function removeStaleImages(cacheDir: string, keep: string): Promise<void> {
  const dayAgo = Date.now() - 24 * 3600_000;
  for (const f of await readdir(cacheDir)) {
    const p = join(cacheDir, f);
    if (!/^initramfs-[0-9a-f]+\.cpio$/.test(f) || p === keep) continue;
    const st = await stat(p).catch(() => null);
    if (st && st.atimeMs < dayAgo && st.mtimeMs < dayAgo) await rm(p, { force: true });
  }
}

export async function ensureInitramfs(cacheDir: string, tools: ToolsLayout, kernel: KernelLayout): Promise<Initramfs> {
  const modules = await moduleLoadOrder(kernel, INITRAMFS_MODULES);
  const busybox = await readFile(tools.busybox);
  const hash = createHash('sha256')
    .update(INIT_SCRIPT)
    .update(MODPROBE_SHIM)
    .update(kernel.release)
    .update(modules.join('\n'))
    .update(busybox)
    .digest('hex')
    .slice(0, 16);
  const path = join(cacheDir, `initramfs-${hash}.cpio`);
  if (existsSync(path)) return { path, hash };
  return withFileLock(join(cacheDir, 'fetch.lock'), async () => {
    if (existsSync(path)) return { path, hash };
    const entries: CpioEntry[] = [];
    for (const d of ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'etc', 'lib', 'lib/modules', 'host', 'rw', 'newroot', 'tmp']) {
      entries.push({ kind: 'dir', path: d });
    }
    entries.push({ kind: 'chardev', path: 'dev/console', major: 5, minor: 1 });
    entries.push({ kind: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 });
    entries.push({ kind: 'file', path: 'init', data: Buffer.from(INIT_SCRIPT), mode: 0o755 });
    entries.push({ kind: 'file', path: 'bin/guestvm-modprobe', data: Buffer.from(MODPROBE_SHIM), mode: 0o755 });
    const names: string[] = [];
    for (const rel of modules) {
      const file = join(kernel.modulesRoot, kernel.release, rel);
      // Debian compresses modules with xz; busybox insmod wants the plain ELF.
      const data = rel.endsWith('.xz')
        ? (await execFileAsync('xz', ['-dc', file], { encoding: 'buffer', maxBuffer: 256 << 20 })).stdout
        : await readFile(file);
      const name = rel.split('/').at(-1)!.replace(/\.ko(\.\w+)?$/, '');
      names.push(name);
      entries.push({ kind: 'file', path: `lib/modules/${name}.ko`, data });
    }
    entries.push({ kind: 'file', path: 'etc/guestvm-modules', data: Buffer.from(`${names.join('\n')}\n`) });
    const tmp = `${path}.tmp-${process.pid}`;
    await writeFile(tmp, buildCpio(entries));
    await rename(tmp, path);
    await removeStaleImages(cacheDir, path);
    return { path, hash };
  });
}
