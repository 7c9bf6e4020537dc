/**
 * Memory and swap use of a cgroup (v1 memory controller or v2), for `tierstack monitor`.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { ErrorCode, TierStackError } from '@tierstack/core';

export interface CgroupMemory {
  path: string;
  version: 1 | 2;
  /** RAM charged to the cgroup (bytes). */
  ramBytes: number;
  /** Swap used by the cgroup's pages (bytes). */
  swapBytes: number;
  /** The RAM limit (bytes; Infinity when unlimited). */
  limitBytes: number;
}

const V1_ROOT = '/sys/fs/cgroup/memory';
const V2_ROOTS = ['/sys/fs/cgroup/unified', '/sys/fs/cgroup'];

/** Resolves a cgroup given as an absolute path or a name relative to a memory hierarchy. */
export function resolveCgroup(cgroup: string): { path: string; version: 1 | 2 } {
  const candidates = isAbsolute(cgroup) ? [cgroup] : [join(V1_ROOT, cgroup), ...V2_ROOTS.map((r) => join(r, cgroup))];
  for (const c of candidates) {
    if (existsSync(join(c, 'memory.usage_in_bytes'))) return { path: c, version: 1 };
    if (existsSync(join(c, 'memory.current'))) return { path: c, version: 2 };
  }
  throw new TierStackError(ErrorCode.NotFound, `no memory cgroup ${cgroup} (looked in ${candidates.join(', ')})`);
}

const num = async (p: string): Promise<number> => {
  const t = (await readFile(p, 'utf8')).trim();
  return t === 'max' ? Infinity : Number(t);
};

async function statField(path: string, field: string): Promise<number> {
  const text = await readFile(join(path, 'memory.stat'), 'utf8');
  const m = new RegExp(`^${field} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

export async function readCgroupMemory(cgroup: string): Promise<CgroupMemory> {
  const { path, version } = resolveCgroup(cgroup);
  if (version === 1) {
    const limit = await num(join(path, 'memory.limit_in_bytes'));
    return {
      path,
      version,
      ramBytes: await num(join(path, 'memory.usage_in_bytes')),
      swapBytes: await statField(path, 'total_swap').then((s) => s || statField(path, 'swap')),
      limitBytes: limit >= 2 ** 62 ? Infinity : limit,
    };
  }
  return {
    path,
    version,
    ramBytes: await num(join(path, 'memory.current')),
    swapBytes: existsSync(join(path, 'memory.swap.current')) ? await num(join(path, 'memory.swap.current')) : 0,
    limitBytes: await num(join(path, 'memory.max')),
  };
}
