/**
 * Runs only inside the QEMU guest (TIERSTACK_GUEST=1 with /dev/dax0.0 from the guest harness's
 * 'cxl-devdax' setup): the conformance suite and the multi-process test on a real device DAX
 * mapping of an emulated CXL type-3 device. The host side (devdax.test.ts) boots the guest once
 * and runs this file there; on the host it is skipped.
 */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { runPageStoreConformance } from '@tierstack/core/testing';
import { CxlTier, formatCxlRegion, readDevdaxGeometry } from '../../src/index.js';
import { runMultiProcess } from '../fixtures/mp-run.js';

const DAX = '/dev/dax0.0';
const inGuest = process.env.TIERSTACK_GUEST === '1' && existsSync(DAX);
const REGION = 64 << 20; // the conformance suite's region: a prefix of the device

describe.skipIf(!inGuest)('CxlTier on a CXL devdax device (guest)', () => {
  it('formats the device (size and 2 MiB alignment from sysfs)', async () => {
    const geo = readDevdaxGeometry(DAX);
    expect(geo.align).toBe(2 << 20);
    expect(geo.size % geo.align).toBe(0);
    const info = await formatCxlRegion({ backing: { kind: 'devdax', path: DAX, size: REGION } });
    expect(info.regionBytes).toBe(REGION);
    console.log(`devdax: ${DAX} ${geo.size} bytes, align ${geo.align}, ${info.slots} slots in the ${REGION}-byte region, checksum ${info.checksum}`);
  });

  if (inGuest) runPageStoreConformance('CxlTier (devdax)', () => CxlTier.open({ backing: { kind: 'devdax', path: DAX, size: REGION } }), { timeout: 120_000 });

  it('serves only whole, right pages to several processes sharing the device, also after one is killed', async () => {
    const geo = readDevdaxGeometry(DAX);
    // A smaller region so that the processes evict each other's pages.
    await formatCxlRegion({ backing: { kind: 'devdax', path: DAX, size: 4 << 20 } });
    const run = await runMultiProcess({ regionPath: DAX, devdax: [geo.size, geo.align], children: 3, durationMs: 4000, keySpan: 2048, killAfterMs: 2000 });
    expect(run.killed).toEqual([0]);
    expect(run.reports).toHaveLength(2);
    for (const r of run.reports) {
      expect(r.hits).toBeGreaterThan(0);
      expect(r.mismatches, `child ${r.writer} mismatches`).toBe(0);
      expect(r.checksumErrors).toBe(0);
    }
    console.log(`devdax multi-process: ${JSON.stringify(run.reports)}`);
  }, 120_000);
});
