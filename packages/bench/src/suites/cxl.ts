/**
 * CxlTier vs memcpy of the same pages: 4 KiB pages, random page numbers over a resident set,
 * batches of 1 and 64, through
 *   - the native path: the testing kit's driver (@tierstack/core/testing driveStoreSync), a C++
 *     loop calling the tier's C ABI function pointers (as a front-end thread does), N batches per
 *     measured call;
 *   - the JS path: CxlTier.get/put (one native call per batch).
 * The baseline is a native memcpy loop (@tierstack/cxl/testing; one N-API call per batch for the JS cases, like the tier)
 * over a memfd mapping of the same size (the same kind of
 * memory as the region), copying the same page numbers: the bare cost of moving the bytes,
 * measured in the same run.
 * Bars (issue 4): native get/put >= 0.5x memcpy; JS batch-64 >= 0.3x memcpy.
 */
import { TsStatus } from '@tierstack/core';
import { driveStoreSync } from '@tierstack/core/testing';
import { CxlTier } from '@tierstack/cxl';
import { benchMemcpy, memcpyBaseline } from '@tierstack/cxl/testing';
import { compare, result, rng, randomPages, type Suite } from '../harness.js';

const PAGE = 4096;
// Pages touched: 1 GiB by default, larger than the CPU caches, as a CXL cache is (a 64 MiB set
// can sit in the L3 of big server CPUs, where memcpy runs at cache speed). TIERSTACK_BENCH_CXL_MIB overrides.
const SPAN_MIB = Number(process.env.TIERSTACK_BENCH_CXL_MIB ?? 1024);
const SPAN = (SPAN_MIB * 1024 * 1024) / PAGE;
const REGION = Math.ceil(SPAN * 1.3 * (PAGE + 28) + (1 << 20)); // ~1.3x the pages: the set-associative index keeps nearly all resident
const PAGES_PER_NATIVE_CALL = 256;

export const cxlSuite: Suite = {
  name: 'cxl',
  description: 'CxlTier get/put (native C ABI driver and JS) vs memcpy of the same pages',
  async *run(ctx) {
    const tier = await CxlTier.open({ backing: { kind: 'memfd', size: REGION } });
    const ns = 'bench';
    const nsId = tier.registerNamespace(ns);
    const fill = Buffer.alloc(256 * PAGE, 0x5a);
    for (let p = 0; p < SPAN; p += 256) await tier.put(ns, Array.from({ length: 256 }, (_, k) => p + k), fill);
    // Keep the pages that are resident (a few sets may have overflowed), so every get is a hit.
    const resident: number[] = [];
    const probe = Buffer.alloc(4096 * PAGE);
    for (let p = 0; p < SPAN; p += 4096) {
      const chunk = Array.from({ length: Math.min(4096, SPAN - p) }, (_, k) => p + k);
      const { found } = await tier.get(ns, chunk, { out: probe.subarray(0, chunk.length * PAGE) });
      chunk.forEach((q, k) => found[k] && resident.push(q));
    }
    ctx.log(`cxl: ${resident.length}/${SPAN} pages (${SPAN_MIB} MiB) resident in ${tier.info().slots} slots`);
    const next = rng(0xc0ffee);
    const sequence = Float64Array.from(randomPages(next, resident.length, 1 << 16), (i) => resident[i]!);
    const baseline = memcpyBaseline(SPAN, PAGE);
    const handle = tier.nativeHandle!;

    // Each side walks the same random sequence from where its last call stopped.
    const walker = () => {
      let at = 0;
      return (n: number): number => {
        const start = at;
        at = (at + n) % sequence.length;
        return start;
      };
    };

    for (const batch of [1, 64]) {
      const iterations = Math.max(1, PAGES_PER_NATIVE_CALL / batch);
      const per = iterations * batch;
      for (const mode of ['get', 'put'] as const) {
        const baseAt = walker();
        const caseAt = walker();
        const memcpyOp = (): number => {
          benchMemcpy(baseline, mode, sequence, batch, iterations, baseAt(per));
          return per;
        };
        const nativeOp = (): number => {
          const r = driveStoreSync(handle, nsId, mode, sequence, batch, iterations, { start: caseAt(per) });
          if (r.status !== TsStatus.Ok || r.misses !== 0) throw new Error(`cxl bench: status ${r.status}, ${r.misses} misses`);
          return per;
        };
        ctx.log(`cxl native ${mode} batch ${batch}`);
        const m = await compare(nativeOp, memcpyOp, ctx.measure);
        // The native loops also report the CPU time of their thread: the same ratio without the
        // time a busy shared machine did not run us (median of alternating pairs of calls).
        const ratios: number[] = [];
        for (let i = 0; i < 41; i++) {
          const base = benchMemcpy(baseline, mode, sequence, batch, iterations, baseAt(per));
          const own = driveStoreSync(handle, nsId, mode, sequence, batch, iterations, { start: caseAt(per) }).cpuNs;
          ratios.push(base / own);
        }
        const cpuRatio = ratios.sort((a, b) => a - b)[20]!;
        yield result('cxl', `native ${mode} batch=${batch}`, 'memcpy', m, `C ABI, ${iterations} batches per call; CPU-time ratio ${cpuRatio.toFixed(2)}; bar >= 0.5`);
      }

      for (const mode of ['get', 'put'] as const) {
        const out = Buffer.alloc(batch * PAGE);
        const data = Buffer.alloc(batch * PAGE, 7);
        const baseAt = walker();
        const caseAt = walker();
        const memcpyOp = (): number => {
          benchMemcpy(baseline, mode, sequence, batch, 1, baseAt(batch));
          return batch;
        };
        const jsOp = async (): Promise<number> => {
          const at = caseAt(batch);
          const pages = Array.from(sequence.subarray(at, at + batch)); // the sequence length is a multiple of the batch
          if (mode === 'get') await tier.get(ns, pages, { out });
          else await tier.put(ns, pages, data);
          return batch;
        };
        const bar = batch === 64 ? '; bar >= 0.3' : '';
        ctx.log(`cxl js ${mode} batch ${batch}`);
        yield result('cxl', `js ${mode} batch=${batch}`, 'memcpy', await compare(jsOp, memcpyOp, ctx.measure), `CxlTier.${mode}, one native call per batch${bar}`);
      }
    }
    await tier.close();
  },
};
