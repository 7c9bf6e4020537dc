import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { runPageStoreConformance } from '../src/testing/index.js';
import { MemoryTier, FileTier, createTierStack } from '../src/index.js';

const root = mkdtempSync(join(tmpdir(), 'tierstack-conf-'));
// Deleting the suites' sparse files (a 1 GiB apparent-size segment per large-page test) waits on
// the disk: seconds on a busy machine, so the hook gets more than the default 10 s.
afterAll(() => rmSync(root, { recursive: true, force: true }), 120_000);
let n = 0;
const dir = (): string => join(root, `d${n++}`);

runPageStoreConformance('MemoryTier', () => new MemoryTier({ maxSize: 64 << 20 }));
runPageStoreConformance('FileTier', () => FileTier.open({ dir: dir() }));
runPageStoreConformance('FileTier (JavaScript only)', () => FileTier.open({ dir: dir(), native: false }));
runPageStoreConformance('FileTier (O_DIRECT)', () => FileTier.open({ dir: dir(), direct: true }));
runPageStoreConformance('TierStack [MemoryTier, FileTier]', async () =>
  createTierStack({ tiers: [new MemoryTier({ maxSize: 64 << 20 }), await FileTier.open({ dir: dir() })] }),
);
// A budget far below the suite's working set: every test also exercises eviction and write-back.
runPageStoreConformance('TierStack [MemoryTier (64 KiB), FileTier], write-back under pressure', async () =>
  createTierStack({ tiers: [new MemoryTier({ maxSize: 64 << 10 }), await FileTier.open({ dir: dir() })] }),
);
runPageStoreConformance('TierStack write-through', async () =>
  createTierStack({ tiers: [new MemoryTier({ maxSize: 1 << 20 }), await FileTier.open({ dir: dir() })], policy: { write: 'write-through' } }),
);
runPageStoreConformance('TierStack write-around, exclusive promotion', async () =>
  createTierStack({
    tiers: [new MemoryTier({ maxSize: 1 << 20 }), new MemoryTier({ maxSize: 1 << 20, name: 'mid' }), await FileTier.open({ dir: dir() })],
    policy: { write: 'write-around', promotion: 'exclusive' },
  }),
);
