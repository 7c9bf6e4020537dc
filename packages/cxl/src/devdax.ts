/**
 * Device DAX geometry from sysfs. A devdax character device (/dev/daxX.Y) is mapped whole,
 * MAP_SHARED, in pieces of its alignment (2 MiB usually); its size and alignment are in
 * /sys/dev/char/<major>:<minor>/{size,align} (the same directory as /sys/bus/dax/devices/daxX.Y).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { TierStackError, ErrorCode, badArgument } from '@tierstack/core';

export interface DevdaxGeometry {
  size: number;
  align: number;
  major: number;
  minor: number;
  sysfsDir: string;
}

export const DEFAULT_DEVDAX_ALIGN = 2 * 1024 * 1024;

// glibc's gnu_dev_major/minor over a 64-bit dev_t.
const major = (dev: number): number => Number(((BigInt(dev) >> 8n) & 0xfffn) | ((BigInt(dev) >> 32n) & ~0xfffn));
const minor = (dev: number): number => Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & ~0xffn));

function readNumber(file: string): number | undefined {
  if (!existsSync(file)) return undefined;
  const text = readFileSync(file, 'utf8').trim();
  const n = Number(text.startsWith('0x') ? parseInt(text, 16) : text);
  return Number.isFinite(n) ? n : undefined;
}

/** Reads the size and alignment of a devdax device; `sysfsRoot` is for tests (default /sys). */
export function readDevdaxGeometry(path: string, sysfsRoot = '/sys'): DevdaxGeometry {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw new TierStackError(ErrorCode.NotFound, `devdax device ${path} does not exist`, { cause: err, details: { path } });
  }
  if (!st.isCharacterDevice()) throw badArgument(`${path} is not a character device (a devdax backing is /dev/daxX.Y)`, { path });
  const maj = major(st.rdev);
  const min = minor(st.rdev);
  const candidates = [join(sysfsRoot, 'dev', 'char', `${maj}:${min}`), join(sysfsRoot, 'bus', 'dax', 'devices', basename(path))];
  for (const dir of candidates) {
    const size = readNumber(join(dir, 'size'));
    if (size === undefined) continue;
    const align = readNumber(join(dir, 'align')) ?? DEFAULT_DEVDAX_ALIGN;
    if (!Number.isSafeInteger(size) || size <= 0) throw badArgument(`sysfs reports size ${size} for ${path}`, { path, size });
    if (!Number.isSafeInteger(align) || align <= 0 || (align & (align - 1)) !== 0) {
      throw badArgument(`sysfs reports alignment ${align} for ${path}`, { path, align });
    }
    if (size % align !== 0) {
      throw badArgument(`devdax size ${size} of ${path} is not a multiple of its ${align}-byte alignment`, { path, size, align });
    }
    return { size, align, major: maj, minor: min, sysfsDir: dir };
  }
  throw badArgument(`${path} (char ${maj}:${min}) is not a device DAX device: no size in ${candidates.join(' or ')}`, { path });
}
