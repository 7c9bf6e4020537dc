/**
 * A process's swapped-out pages, read from /proc: /proc/PID/maps (its mappings),
 * /proc/PID/pagemap (one 64-bit entry per virtual page: bit 63 present, bit 62 swapped, and for a
 * swapped page bits 0-4 the swap type and bits 5-54 the offset in the area, in pages) and
 * /proc/swaps (the areas). Reading needs root (CAP_SYS_ADMIN) for other users' processes.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { ErrorCode, TierStackError } from '@tierstack/core';

export const PAGE_SIZE = 4096;

export interface Mapping {
  start: number;
  end: number;
  perms: string;
  /** The file or [heap]/[stack]/…; '' for anonymous memory. */
  name: string;
}

export interface SwapArea {
  /** Swap type: the area's index in the kernel's table (the order /proc/swaps lists them in). */
  type: number;
  filename: string;
  kind: string;
  sizePages: number;
  usedPages: number;
  priority: number;
}

export interface SwappedPage {
  vaddr: number;
  type: number;
  /** Page slot in the swap area (slot 0 is the area's header). */
  offset: number;
  mapping: Mapping;
}

function procError(err: unknown, what: string): TierStackError {
  const code = (err as NodeJS.ErrnoException).code;
  const ts = code === 'ENOENT' || code === 'ESRCH' ? ErrorCode.NotFound : code === 'EACCES' || code === 'EPERM' ? ErrorCode.Permission : ErrorCode.Io;
  return new TierStackError(ts, `${what}: ${(err as Error).message}`, { cause: err });
}

export function readMaps(pid: number): Mapping[] {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/maps`, 'utf8');
  } catch (err) {
    throw procError(err, `process ${pid}`);
  }
  const out: Mapping[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m) out.push({ start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), perms: m[3]!, name: m[4]!.trim() });
  }
  return out;
}

/**
 * The active swap areas. /proc/swaps walks the kernel's table in type order, skipping free
 * entries; swapon takes the lowest free type, so line k is type k unless an area below another
 * was turned off since (then the types above it are unknown from userspace: `consistent` checks
 * every offset seen fits its area).
 */
export function readSwaps(text = readFileSync('/proc/swaps', 'utf8')): SwapArea[] {
  return text
    .split('\n')
    .slice(1)
    .filter((l) => l.trim())
    .map((l, type) => {
      const [filename, kind, size, used, priority] = l.trim().split(/\s+/);
      // The filename column escapes blanks as \040.
      return {
        type,
        filename: filename!.replace(/\\040/g, ' '),
        kind: kind!,
        sizePages: Number(size) / 4,
        usedPages: Number(used) / 4,
        priority: Number(priority),
      };
    });
}

const CHUNK = 1 << 16; // pagemap entries per read (512 KiB)

/** Every swapped-out page of the process, in address order. */
export function swappedPages(pid: number, maps = readMaps(pid)): SwappedPage[] {
  let fd: number;
  try {
    fd = openSync(`/proc/${pid}/pagemap`, 'r');
  } catch (err) {
    throw procError(err, `process ${pid} pagemap`);
  }
  const buf = Buffer.alloc(CHUNK * 8);
  const out: SwappedPage[] = [];
  try {
    for (const m of maps) {
      for (let first = m.start / PAGE_SIZE; first < m.end / PAGE_SIZE; first += CHUNK) {
        const n = Math.min(CHUNK, m.end / PAGE_SIZE - first);
        let got: number;
        try {
          got = readSync(fd, buf, 0, n * 8, first * 8);
        } catch {
          break; // [vsyscall] and the like have no entries
        }
        for (let i = 0; i < got / 8; i++) {
          const hi = buf.readUInt32LE(i * 8 + 4);
          if ((hi & 0x40000000) === 0) continue; // bit 62: swapped
          const lo = buf.readUInt32LE(i * 8);
          out.push({ vaddr: (first + i) * PAGE_SIZE, type: lo & 0x1f, offset: (lo >>> 5) + (hi & 0x7fffff) * 2 ** 27, mapping: m });
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return out;
}
