import { describe, it, expect, afterAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, truncateSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileTier } from '../src/index.js';
import { makePages, pageMatches } from '../src/testing/index.js';

const root = mkdtempSync(join(tmpdir(), 'tierstack-file-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const PS = 4096;

describe('FileTier integrity and persistence', () => {
  it('keeps pages across close and reopen', async () => {
    const dir = join(root, `p${n++}`);
    const a = await FileTier.open({ dir });
    await a.put('ns', [0, 5, 2 ** 20], makePages('ns', [0, 5, 2 ** 20], PS));
    await a.close();
    const b = await FileTier.open({ dir });
    const r = await b.get('ns', [0, 5, 2 ** 20, 6]);
    expect([...r.found]).toEqual([1, 1, 1, 0]);
    expect(pageMatches(r.data.subarray(PS, 2 * PS), 'ns', 5)).toBe(true);
    expect(pageMatches(r.data.subarray(2 * PS, 3 * PS), 'ns', 2 ** 20)).toBe(true);
    await b.close();
  });

  it('reports a flipped byte as TS_ERR_CHECKSUM, never as data', async () => {
    const dir = join(root, `c${n++}`);
    const t = await FileTier.open({ dir });
    await t.put('ns', [3], makePages('ns', [3], PS));
    const fd = openSync(join(dir, 'ns', '0.pages'), 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, 3 * PS + 100);
    closeSync(fd);
    await expect(t.get('ns', [3])).rejects.toMatchObject({ code: 'TS_ERR_CHECKSUM' });
    await t.close();
  });

  it('reports a truncated data file as TS_ERR_CORRUPT', async () => {
    const dir = join(root, `t${n++}`);
    const t = await FileTier.open({ dir });
    await t.put('ns', [0, 1, 2], makePages('ns', [0, 1, 2], PS));
    truncateSync(join(dir, 'ns', '0.pages'), PS + 10);
    await expect(t.get('ns', [2])).rejects.toMatchObject({ code: 'TS_ERR_CORRUPT' });
    expect(pageMatches((await t.get('ns', [0])).data, 'ns', 0)).toBe(true);
    await t.close();
  });

  it('refuses a directory of another page size or a foreign header', async () => {
    const dir = join(root, `h${n++}`);
    await (await FileTier.open({ dir })).close();
    await expect(FileTier.open({ dir, pageSize: 8192 })).rejects.toMatchObject({ code: 'TS_ERR_PAGE_SIZE' });
    writeFileSync(join(dir, 'tierstack-file.json'), '{"format":"something-else"}');
    await expect(FileTier.open({ dir })).rejects.toMatchObject({ code: 'TS_ERR_CORRUPT' });
    writeFileSync(join(dir, 'tierstack-file.json'), 'garbage{');
    await expect(FileTier.open({ dir })).rejects.toMatchObject({ code: 'TS_ERR_CORRUPT' });
  });

  it('coalesces consecutive pages into runs and splits them at segment boundaries', async () => {
    const dir = join(root, `s${n++}`);
    const t = await FileTier.open({ dir });
    const pages = Array.from({ length: 64 }, (_, i) => 2 ** 18 - 32 + i); // crosses segment 0 -> 1
    await t.put('ns', pages, makePages('ns', pages, PS));
    const r = await t.get('ns', pages);
    expect(r.hits).toBe(64);
    expect(pages.every((p, i) => pageMatches(r.data.subarray(i * PS, (i + 1) * PS), 'ns', p))).toBe(true);
    expect(t.stats().extra.openSegments).toBe(2);
    await t.close();
  });
});
