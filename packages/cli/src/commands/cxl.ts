/**
 * `tierstack cxl format|info`: administer a CXL tier region on a file or a devdax device.
 *   tierstack cxl format --file /mnt/pmem/cache.region --size 1G [--page-size 4096] [--ways 16]
 *   tierstack cxl format --devdax /dev/dax0.0
 *   tierstack cxl info --file /mnt/pmem/cache.region [--json]
 */
import { InvalidArgumentError, type Command } from 'commander';
import type { CxlBacking, CxlRegionInfo, CxlTierOptions } from '@tierstack/cxl';

/** Parses a byte size: 4096, 64K, 256M, 1G (binary units). */
export function parseByteSize(v: string): number {
  const m = /^(\d+)\s*([kmgt]?)i?b?$/i.exec(v.trim());
  if (!m) throw new InvalidArgumentError('expected a size like 4096, 64M or 1G');
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const n = Number(m[1]) * mult;
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError('size out of range');
  return n;
}

const int = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive integer');
  return n;
};

interface BackingFlags {
  file?: string;
  devdax?: string;
  size?: number;
  pageSize?: number;
  ways?: number;
  nsEntries?: number;
  json?: boolean;
}

function backingOf(o: BackingFlags, forFormat: boolean): CxlBacking {
  if ((o.file === undefined) === (o.devdax === undefined)) throw new InvalidArgumentError('give exactly one of --file <path> or --devdax <path>');
  if (o.devdax !== undefined) return { kind: 'devdax', path: o.devdax, ...(o.size ? { size: o.size } : {}) };
  return { kind: 'file', path: o.file!, create: forFormat, ...(o.size ? { size: o.size } : {}) };
}

function optionsOf(o: BackingFlags, forFormat: boolean): CxlTierOptions {
  return {
    backing: backingOf(o, forFormat),
    ...(o.pageSize ? { pageSize: o.pageSize } : {}),
    ...(o.ways ? { ways: o.ways } : {}),
    ...(o.nsEntries ? { namespaceEntries: o.nsEntries } : {}),
  };
}

const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;

export function describeRegion(i: CxlRegionInfo): string {
  const c = i.counters;
  const lookups = c.hits + c.misses;
  const lines = [
    `backing          ${i.backing.kind === 'memfd' ? 'memfd' : `${i.backing.kind} ${i.backing.path}`}`,
    `region           ${mib(i.regionBytes)} (${i.regionBytes} bytes), format v${i.version}`,
    `pages            ${i.slots} slots of ${i.pageSize} bytes in ${i.sets} sets x ${i.ways} ways (data at offset ${i.dataOffset})`,
    `index overhead   ${i.indexBytesPerPage} bytes per cached page (${i.setBytes}-byte set records)`,
    `namespaces       ${i.namespaces.length} of ${i.nsEntries}${i.namespaces.length ? ': ' + i.namespaces.map((n) => n.name).join(', ') : ''}`,
    `created          ${new Date(i.createdUnixMs).toISOString()} by pid ${i.creatorPid} on ${i.creatorHost}`,
    `occupancy        ${i.validPages}/${i.slots} pages (${((100 * i.validPages) / i.slots).toFixed(1)}%), ${i.dirtyPages} dirty, ${i.lockedSets} sets locked`,
    `lookups          ${c.hits} hits, ${c.misses} misses${lookups ? ` (${((100 * c.hits) / lookups).toFixed(1)}% hits)` : ''}`,
    `writes           ${c.puts} pages, ${c.removes} removed, ${c.evictions} evictions (${c.dirtyEvictions} dirty, written back)`,
    `faults           ${c.checksumErrors} checksum errors, ${c.lockSteals} locks taken over from dead processes, ${c.noSpace} puts without room`,
  ];
  return lines.join('\n');
}

function print(info: CxlRegionInfo, json: boolean): void {
  if (json) {
    const plain = { ...info, namespaces: info.namespaces.map((n) => ({ id: `0x${n.id.toString(16)}`, name: n.name })) };
    console.log(JSON.stringify(plain, null, 2));
  } else {
    console.log(describeRegion(info));
  }
}

export function registerCxlCommands(program: Command): void {
  const cxl = program.command('cxl').description('CXL tier regions: format a file or devdax device, show geometry, occupancy and counters');
  const common = (c: Command): Command =>
    c
      .option('--file <path>', 'a region in a file (fsdax, hugetlbfs, tmpfs or any file)')
      .option('--devdax <path>', 'a region on a device DAX character device, e.g. /dev/dax0.0')
      .option('--json', 'print JSON');
  common(cxl.command('format'))
    .description('format a region (drops everything it held); creates and sizes a file when --size is given')
    .option('--size <bytes>', 'region size (e.g. 1G); a devdax device defaults to all of it', parseByteSize)
    .option('--page-size <bytes>', 'bytes per page', int)
    .option('--ways <n>', 'slots per set of the index (4..64)', int)
    .option('--ns-entries <n>', 'entries of the namespace table', int)
    .action(async (o: BackingFlags) => {
      const { formatCxlRegion } = await import('@tierstack/cxl');
      print(await formatCxlRegion(optionsOf(o, true)), o.json === true);
    });
  common(cxl.command('info'))
    .description('validate a region and print its geometry, occupancy and hit/miss counters')
    .action(async (o: BackingFlags) => {
      const { cxlRegionInfo } = await import('@tierstack/cxl');
      print(await cxlRegionInfo(optionsOf(o, false)), o.json === true);
    });
}
