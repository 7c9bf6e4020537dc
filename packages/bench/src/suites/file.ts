/**
 * FileTier vs raw pread/pwrite of the same pages on a file in the same directory: 4 KiB pages,
 * random page numbers, batches of 1 and 64 (the baseline issues the batch's preads/pwrites
 * concurrently, as FileTier does).
 */
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { FileTier } from '@tierstack/core';
import { compare, result, rng, randomPages, type Suite } from '../harness.js';

const PAGE = 4096;
const SPAN = 16384; // a 64 MiB file: it sits in the page cache, so this measures the software path

export const fileSuite: Suite = {
  name: 'file',
  description: 'FileTier get/put vs raw pread/pwrite of the same pages',
  async *run(ctx) {
    const tier = await FileTier.open({ dir: join(ctx.tmpDir, 'filetier') });
    const raw = await open(join(ctx.tmpDir, 'raw.pages'), 'w+');
    const ns = 'bench';
    const fill = Buffer.alloc(256 * PAGE, 0x5a);
    for (let p = 0; p < SPAN; p += 256) {
      await tier.put(ns, Array.from({ length: 256 }, (_, k) => p + k), fill);
      await raw.write(fill, 0, fill.length, p * PAGE);
    }
    for (const batch of [1, 64]) {
      const next = rng(batch);
      const out = Buffer.alloc(batch * PAGE);
      const data = Buffer.alloc(batch * PAGE, 7);
      const getCase = async (): Promise<number> => {
        await tier.get(ns, randomPages(next, SPAN, batch), { out });
        return batch;
      };
      const getBase = async (): Promise<number> => {
        const pages = randomPages(next, SPAN, batch);
        await Promise.all(pages.map((p, i) => raw.read(out, i * PAGE, PAGE, p * PAGE)));
        return batch;
      };
      ctx.log(`file get batch ${batch}`);
      yield result('file', `get batch=${batch}`, 'pread', await compare(getCase, getBase, ctx.measure));
      const putCase = async (): Promise<number> => {
        await tier.put(ns, randomPages(next, SPAN, batch), data);
        return batch;
      };
      const putBase = async (): Promise<number> => {
        const pages = randomPages(next, SPAN, batch);
        await Promise.all(pages.map((p, i) => raw.write(data, i * PAGE, PAGE, p * PAGE)));
        return batch;
      };
      ctx.log(`file put batch ${batch}`);
      yield result('file', `put batch=${batch}`, 'pwrite', await compare(putCase, putBase, ctx.measure));
    }
    await raw.close();
    await tier.close();
  },
};
