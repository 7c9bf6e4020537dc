/**
 * The tier-stack configuration shared by every command that serves or stores pages (snapshot,
 * restore, ublk, demo): one set of flags, one function that opens the stack they describe.
 *
 * Default: [MemoryTier, FileTier(<data-dir>/pages)] — works on any machine. Flags for the other
 * tiers (CXL, Redis, RDMA pool) add them in their place in the picture: CXL on top, Redis and the
 * RDMA pool below DRAM, the file tier (if kept) at the bottom.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Option, type Command } from 'commander';
import { createTierStack, FileTier, MemoryTier, type Logger, type PageStore, type TierStack } from '@tierstack/core';

export interface StackCliOptions {
  dataDir: string;
  memoryMib: number;
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
    .addOption(new Option('--no-file-tier', 'no file tier at the bottom (a remote tier must be durable then)'));
}

/** Opens the stack the flags describe. The caller closes it. */
export async function openStack(o: StackCliOptions, options: { logger?: Logger } = {}): Promise<TierStack> {
  const tiers: PageStore[] = [];
  if (o.memoryMib > 0) tiers.push(new MemoryTier({ maxSize: o.memoryMib * 1024 * 1024 }));
  if (o.fileTier !== false) tiers.push(await FileTier.open({ dir: join(o.dataDir, 'pages') }));
  return createTierStack({ tiers, ...(options.logger ? { logger: options.logger } : {}) });
}
