/**
 * The tier-stack configuration shared by every command that serves or stores pages (snapshot,
 * restore, ublk, demo): one set of flags, one function that opens the stack they describe.
 *
 * Default: [DRAM cache, FileTier(<data-dir>/pages)], native end to end — the DRAM cache is a
 * CxlTier over an anonymous memfd and the FileTier has a native read path, so a restore fault
 * is served by native threads from start to finish. `--dram js` makes the DRAM tier a MemoryTier
 * (JavaScript, lru-cache) instead. Flags for the other tiers (CXL, Redis, RDMA pool) add them in
 * their place in the picture: CXL on top, Redis and the RDMA pool below DRAM, the file tier (if
 * kept) at the bottom.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Option, type Command } from 'commander';
import { createTierStack, FileTier, MemoryTier, type Logger, type PageStore, type TierStack } from '@tierstack/core';

export interface StackCliOptions {
  dataDir: string;
  memoryMib: number;
  /** The DRAM tier: a native cache (CxlTier over a memfd, default) or the JS MemoryTier. */
  dram?: 'native' | 'js';
  /** CXL cache on top: "memfd", a file path or a /dev/daxX.Y device. */
  cxl?: string;
  cxlMib?: number;
  /** Redis tier below DRAM: a redis:// URL. */
  redis?: string;
  /** RDMA pool donors ("host:port,host:port") and their token. */
  memd?: string;
  memdToken?: string;
  replicas?: number;
  /** Keep the file tier (default true; --no-file-tier drops it when a remote tier is durable). */
  fileTier: boolean;
}

export function defaultDataDir(): string {
  return process.env['TIERSTACK_DATA_DIR'] ?? join(homedir(), '.tierstack');
}

/** Adds the stack flags to a command. */
export function addStackOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--data-dir <path>', 'where durable tiers and the catalog live').default(defaultDataDir(), '$TIERSTACK_DATA_DIR or ~/.tierstack'))
    .addOption(new Option('--memory-mib <n>', 'DRAM tier budget in MiB (0: no DRAM tier)').default(64).argParser(Number))
    .addOption(
      new Option('--dram <kind>', 'DRAM tier: native (a memfd page cache served from native threads) or js (MemoryTier)')
        .choices(['native', 'js'])
        .default('native'),
    )
    .addOption(new Option('--cxl <backing>', 'CXL cache tier on top: memfd, a file path or /dev/daxX.Y'))
    .addOption(new Option('--cxl-mib <n>', 'size of a memfd or new file CXL region in MiB').default(256).argParser(Number))
    .addOption(new Option('--redis <url>', 'Redis tier below DRAM (redis://host:port)'))
    .addOption(new Option('--memd <donors>', 'RDMA pool tier: memd control addresses, comma-separated host:port'))
    .addOption(new Option('--memd-token <token>', 'token the memd donors expect').env('TIERSTACK_MEMD_TOKEN'))
    .addOption(new Option('--replicas <n>', 'copies of each RDMA pool slab').default(1).argParser(Number))
    .addOption(new Option('--no-file-tier', 'no file tier at the bottom (a remote tier must be durable then)'));
}

/** Opens the stack the flags describe. The caller closes it. */
export async function openStack(o: StackCliOptions, options: { logger?: Logger } = {}): Promise<TierStack> {
  const tiers: PageStore[] = [];
  try {
    // Tier packages load lazily: a command that does not ask for a native tier never loads its addon.
    if (o.cxl) {
      const { CxlTier } = await import('@tierstack/cxl');
      const size = (o.cxlMib ?? 256) * 1024 * 1024;
      const backing =
        o.cxl === 'memfd'
          ? ({ kind: 'memfd', size } as const)
          : o.cxl.startsWith('/dev/dax')
            ? ({ kind: 'devdax', path: o.cxl } as const)
            : ({ kind: 'file', path: o.cxl, size, create: true } as const);
      tiers.push(await CxlTier.open({ backing }));
    }
    if (o.memoryMib > 0) {
      if (o.dram === 'js') {
        tiers.push(new MemoryTier({ maxSize: o.memoryMib * 1024 * 1024 }));
      } else {
        // The native DRAM cache: a private memfd region (same layout as a CXL region).
        const { CxlTier } = await import('@tierstack/cxl');
        tiers.push(await CxlTier.open({ backing: { kind: 'memfd', size: o.memoryMib * 1024 * 1024 }, name: 'dram' }));
      }
    }
    if (o.redis) {
      const { RedisTier } = await import('@tierstack/redis');
      tiers.push(new RedisTier({ connection: o.redis, ...(options.logger ? { logger: options.logger } : {}) }));
    }
    if (o.memd) {
      const { RdmaPoolTier } = await import('@tierstack/rdma');
      tiers.push(
        await RdmaPoolTier.open({
          donors: o.memd.split(',').map((d) => d.trim()).filter(Boolean),
          ...(o.memdToken ? { token: o.memdToken } : {}),
          replicas: o.replicas ?? 1,
          ...(options.logger ? { logger: options.logger } : {}),
        }),
      );
    }
    if (o.fileTier !== false) tiers.push(await FileTier.open({ dir: join(o.dataDir, 'pages') }));
    return createTierStack({ tiers, ...(options.logger ? { logger: options.logger } : {}) });
  } catch (err) {
    await Promise.allSettled(tiers.map((t) => t.close()));
    throw err;
  }
}

/**
 * The default stack, for library users: what `tierstack restore` and `tierstack demo` open with
 * no tier flags — a native DRAM cache (CxlTier over a memfd) over a FileTier with a native read
 * path in `<dataDir>/pages`, so restores are served by native threads end to end:
 *
 *   const hook = createRestoreHook(await openDefaultStack({ dataDir: '/var/lib/fn' }));
 */
export function openDefaultStack(o: Partial<StackCliOptions> = {}, options: { logger?: Logger } = {}): Promise<TierStack> {
  return openStack({ dataDir: defaultDataDir(), memoryMib: 64, dram: 'native', fileTier: true, ...o }, options);
}
