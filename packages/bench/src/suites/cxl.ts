/**
 * CxlTier vs memcpy of the same pages: 4 KiB pages, random page numbers over a resident set,
 * batches of 1 and 64, through
 *   - the native path: a C++ loop calling the tier's C ABI function pointers (as a front-end
 *     thread does), N batches per measured call;
 *   - the JS path: CxlTier.get/put (one native call per batch).
 * The baseline is a native memcpy loop over a memory area of the same size, copying the same
 * page numbers (the bare cost of moving the bytes), measured in the same run.
 * Bars (issue 4): native get/put >= 0.5x memcpy; JS batch-64 >= 0.3x memcpy.
 */
import { CxlTier, cxlAddon } from '@tierstack/cxl';
import { compare, result, rng, randomPages, type Suite } from '../harness.js';

const PAGE = 4096;
const SPAN = 16384; // 64 MiB of pages
const REGION = 160 * 1024 * 1024; // ~1.5x the pages: the set-associative index keeps all (or nearly all) resident
const PAGES_PER_NATIVE_CALL = 256;

export const cxlSuite: Suite = {
  name: 'cxl',
  description: 'CxlTier get/put (native C ABI driver and JS) vs memcpy of the same pages',
  async *run(ctx) {
    const addon = cxlAddon();
    const tier = await CxlTier.open({ backing: { kind: 'memfd', size: REGION } });
    const ns = 'bench';
    const nsId = tier.registerNamespace(ns);
    const fill = Buffer.alloc(256 * PAGE, 0x5a);
    for (let p = 0; p < SPAN; p += 256) await tier.put(ns, Array.from({ length: 256 }, (_, k) => p + k), fill);
    // Keep the pages that are resident (a few sets may have overflowed), so every get is a hit.
    const all = Array.from({ length: SPAN }, (_, i) => i);
    const { found } = await tier.get(ns, all);
    const resident = all.filter((_, i) => found[i]);
    ctx.log(`cxl: ${resident.length}/${SPAN} pages resident in ${tier.info().slots} slots`);
    const next = rng(0xc0ffee);
    const sequence = Float64Array.from(randomPages(next, resident.length, 1 << 16), (i) => resident[i]!);
    const baseline = addon.memcpyBaseline(SPAN, PAGE);
    const handle = tier.nativeHandle!;

    for (const batch of [1, 64]) {
      const iterations = Math.max(1, PAGES_PER_NATIVE_CALL / batch);
      for (const mode of ['get', 'put'] as const) {
        const memcpyOp = (): number => {
          addon.benchMemcpy(baseline, mode, sequence, batch, iterations);
          return iterations * batch;
        };
        const nativeOp = (): number => {
          const r = addon.benchStore(handle, nsId, mode, sequence, batch, iterations);
          if (r.status !== 0 || r.misses !== 0) throw new Error(`cxl bench: status ${r.status}, ${r.misses} misses`);
          return iterations * batch;
        };
        ctx.log(`cxl native ${mode} batch ${batch}`);
        yield result('cxl', `native ${mode} batch=${batch}`, 'memcpy', await compare(nativeOp, memcpyOp, ctx.measure), `C ABI, ${iterations} batches per call; bar >= 0.5`);
      }

      const out = Buffer.alloc(batch * PAGE);
      const data = Buffer.alloc(batch * PAGE, 7);
      const pick = (): number[] => randomPages(next, resident.length, batch).map((i) => resident[i]!);
      const memcpyOf = (mode: 'get' | 'put') => (): number => {
        addon.benchMemcpy(baseline, mode, sequence, batch, iterations);
        return iterations * batch;
      };
      const jsGet = async (): Promise<number> => {
        await tier.get(ns, pick(), { out });
        return batch;
      };
      const jsPut = async (): Promise<number> => {
        await tier.put(ns, pick(), data);
        return batch;
      };
      const bar = batch === 64 ? '; bar >= 0.3' : '';
      ctx.log(`cxl js get batch ${batch}`);
      yield result('cxl', `js get batch=${batch}`, 'memcpy', await compare(jsGet, memcpyOf('get'), ctx.measure), `CxlTier.get${bar}`);
      ctx.log(`cxl js put batch ${batch}`);
      yield result('cxl', `js put batch=${batch}`, 'memcpy', await compare(jsPut, memcpyOf('put'), ctx.measure), `CxlTier.put${bar}`);
    }
    await tier.close();
  },
};
