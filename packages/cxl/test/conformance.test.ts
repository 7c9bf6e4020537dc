import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { runNativeStoreConformance, runPageStoreConformance } from '@tierstack/core/testing';
import { CxlTier } from '../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'cxl-conf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

runPageStoreConformance('CxlTier (memfd)', () => CxlTier.open({ backing: { kind: 'memfd', size: 32 << 20 } }));

// One shared file region for every test: tests use fresh namespaces, as two processes would.
let n = 0;
runPageStoreConformance('CxlTier (file)', () =>
  CxlTier.open({ backing: { kind: 'file', path: join(dir, `region-${n++ % 2}`), size: 32 << 20, create: true } }),
);

// The C ABI, as front-end threads call it: a cache (clean pages may be evicted, never wrong) that
// honours TS_PUT_PROMOTION.
runNativeStoreConformance('CxlTier (memfd)', () => CxlTier.open({ backing: { kind: 'memfd', size: 32 << 20 } }), { lossy: true, promotion: true });
runNativeStoreConformance('CxlTier (memfd, dirty puts)', () => CxlTier.open({ backing: { kind: 'memfd', size: 32 << 20 } }), {
  lossy: true,
  putFlags: 1, // TS_PUT_DIRTY
});
