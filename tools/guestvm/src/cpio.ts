/**
 * A writer for the "newc" cpio format the kernel unpacks as an initramfs. Written here rather
 * than shelling out to cpio so the archive can hold /dev/console without root or mknod.
 */

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

const hex8 = (n: number): string => n.toString(16).padStart(8, '0');
const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);

function header(ino: number, mode: number, size: number, name: string, rdevMajor = 0, rdevMinor = 0): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`);
  const fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, rdevMajor, rdevMinor, nameBytes.length, 0];
  const head = Buffer.from(`070701${fields.map(hex8).join('')}`, 'ascii');
  return [head, nameBytes, pad4(head.length + nameBytes.length)];
}

export function buildCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    switch (e.kind) {
      case 'dir':
        parts.push(...header(ino++, S_IFDIR | (e.mode ?? 0o755), 0, name));
        break;
      case 'file':
        parts.push(...header(ino++, S_IFREG | (e.mode ?? 0o644), e.data.length, name), e.data, pad4(e.data.length));
        break;
      case 'symlink': {
        const data = Buffer.from(e.target);
        parts.push(...header(ino++, S_IFLNK | 0o777, data.length, name), data, pad4(data.length));
        break;
      }
      case 'chardev':
        parts.push(...header(ino++, S_IFCHR | (e.mode ?? 0o600), 0, name, e.major, e.minor));
        break;
    }
  }
  parts.push(...header(0, 0, 0, 'TRAILER!!!'));
  return Buffer.concat(parts);
}
