import { describe, it, expect } from 'vitest';
import { randomBytes } from 'node:crypto';
import { pageChecksum, pageChecksums } from '../src/index.js';
import { coreAddon } from '../src/core-addon.js';

describe('pageChecksums', () => {
  it('equals pageChecksum page by page (native fold and zlib agree), for several page sizes', () => {
    expect(coreAddon()).toBeDefined(); // the suite runs with the addon built: this checks the native fold
    for (const ps of [512, 4096, 16384]) {
      const data = randomBytes(ps * 37);
      data.fill(0, 5 * ps, 6 * ps); // a zero page among them
      const sums = pageChecksums(data, ps);
      expect(sums.length).toBe(37);
      for (let i = 0; i < 37; i++) expect(sums[i]).toBe(pageChecksum(data.subarray(i * ps, (i + 1) * ps)));
    }
  });

  it('falls back to zlib for data that is not whole pages', () => {
    const data = randomBytes(4096 * 2 + 100);
    const sums = pageChecksums(data, 4096);
    expect(Array.from(sums)).toEqual([pageChecksum(data.subarray(0, 4096)), pageChecksum(data.subarray(4096, 8192))]);
  });
});
