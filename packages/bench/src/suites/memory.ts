/**
 * MemoryTier vs a plain Map of Buffers (the cost of the bare data structure with the same
 * copies): 4 KiB pages, random keys, batches of 1 and 64.
 */
import { MemoryTier } from '@tierstack/core';
import { compare, result, rng, randomPages, type Suite } from '../harness.js';

const PAGE = 4096;
const SPAN = 16384; // 64 MiB of pages: the whole set stays resident

export const memorySuite: Suite = {
  name: 'memory',
  description: 'MemoryTier get/put vs Map<number, Buffer>',
  async *run(ctx) {
    const tier = new MemoryTier({ maxSize: SPAN * PAGE * 2 });
    const map = new Map<number, Buffer>();
    const ns = 'bench';
    const fill = Buffer.alloc(64 * PAGE, 0x5a);
    for (let p = 0; p < SPAN; p += 64) {
      const pages = Array.from({ length: 64 }, (_, k) => p + k);
      await tier.put(ns, pages, fill);
      for (const q of pages) map.set(q, Buffer.from(fill.subarray(0, PAGE)));
    }
    for (const batch of [1, 64]) {
      const next = rng(batch);
      const out = Buffer.alloc(batch * PAGE);
      const data = Buffer.alloc(batch * PAGE, 7);
      const getCase = async (): Promise<number> => {
        await tier.get(ns, randomPages(next, SPAN, batch), { out });
        return batch;
      };
      const getBase = (): number => {
        const pages = randomPages(next, SPAN, batch);
        for (let i = 0; i < batch; i++) map.get(pages[i]!)!.copy(out, i * PAGE);
        return batch;
      };
      ctx.log(`memory get batch ${batch}`);
      yield result('memory', `get batch=${batch}`, 'Map get+copy', await compare(getCase, getBase, ctx.measure));
      const putCase = async (): Promise<number> => {
        await tier.put(ns, randomPages(next, SPAN, batch), data);
        return batch;
      };
      const putBase = (): number => {
        const pages = randomPages(next, SPAN, batch);
        for (let i = 0; i < batch; i++) {
          const b = Buffer.allocUnsafeSlow(PAGE);
          data.copy(b, 0, i * PAGE, (i + 1) * PAGE);
          map.set(pages[i]!, b);
        }
        return batch;
      };
      ctx.log(`memory put batch ${batch}`);
      yield result('memory', `put batch=${batch}`, 'Map set+copy', await compare(putCase, putBase, ctx.measure));
    }
    await tier.close();
  },
};
