/**
 * Runs inside the QEMU guest for the `ublk` bench (TIERSTACK_BENCH_UBLK_GUEST=1): serves a ublk
 * device over a one-tier stack and prints "ready <path>" until SIGTERM.
 *   node dist/ublk-guest-server.js cxl|memory <size-bytes> <queues> <depth>
 */
import { createTierStack, MemoryTier, type PageStore } from '@tierstack/core';
import { CxlTier } from '@tierstack/cxl';
import { createBlockDevice } from '@tierstack/ublk';

const [kind, sizeArg, queuesArg, depthArg] = process.argv.slice(2);
const size = Number(sizeArg);
const tier: PageStore = kind === 'cxl' ? await CxlTier.open({ backing: { kind: 'memfd', size: size * 4 } }) : new MemoryTier({ maxSize: size * 2 });
const stack = createTierStack({ tiers: [tier] });
const dev = await createBlockDevice({ stack, sizeBytes: size, transport: 'ublk', queues: Number(queuesArg), depth: Number(depthArg), name: `bench-${kind}` });
console.log(`ready ${dev.path}`);
process.once('SIGTERM', () => {
  void dev
    .close()
    .then(() => stack.close())
    .then(() => process.exit(0));
});
