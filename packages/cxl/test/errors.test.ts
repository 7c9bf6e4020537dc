import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync, statSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { addonPath } from './fixtures/mp-run.js';
import { makePages, pageMatches } from '@tierstack/core/testing';
import { CxlTier, cxlRegionInfo, formatCxlRegion, readDevdaxGeometry, type CxlTierOptions } from '../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'cxl-err-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function codeOf(fn: () => unknown): Promise<string | undefined> {
  try {
    await fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

/** A file region holding page 1..3 of namespace "keep" (version 5). */
async function regionWithData(name: string): Promise<CxlTierOptions> {
  const options: CxlTierOptions = { backing: { kind: 'file', path: join(dir, name), size: 4 << 20, create: true } };
  const tier = await CxlTier.open(options);
  await tier.put('keep', [1, 2, 3], makePages('keep', [1, 2, 3], tier.pageSize, 5));
  await tier.close();
  return { backing: { kind: 'file', path: join(dir, name) } };
}

async function expectKept(options: CxlTierOptions): Promise<void> {
  const tier = await CxlTier.open(options);
  const r = await tier.get('keep', [1, 2, 3]);
  expect(r.hits).toBe(3);
  [1, 2, 3].forEach((p, i) => expect(pageMatches(r.data.subarray(i * 4096, (i + 1) * 4096), 'keep', p, 5)).toBe(true));
  await tier.close();
}

describe('CxlTier region validation', () => {
  it('keeps pages in a file region across close and reopen', async () => {
    const options = await regionWithData('persist');
    await expectKept(options);
    const info = await cxlRegionInfo(options);
    expect(info.validPages).toBe(3);
    expect(info.namespaces.map((n) => n.name)).toEqual(['keep']);
  });

  it('shares a memfd region with a second opener through /proc/<pid>/fd/<fd>', async () => {
    const a = await CxlTier.open({ backing: { kind: 'memfd', size: 4 << 20 } });
    await a.put('share', [4, 5], makePages('share', [4, 5], a.pageSize, 3), { dirty: true });
    const b = await CxlTier.open({ backing: { kind: 'file', path: `/proc/${process.pid}/fd/${a.info().fd}` } });
    const r = await b.get('share', [4, 5]);
    expect(r.hits).toBe(2);
    expect(pageMatches(r.data.subarray(0, 4096), 'share', 4, 3)).toBe(true);
    expect(b.dirtyCount()).toBe(2);
    await b.close();
    await a.close();
  });

  it('rejects a foreign file and a corrupted header with TS_ERR_CORRUPT', async () => {
    const foreign = join(dir, 'foreign');
    writeFileSync(foreign, randomBytes(1 << 20));
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'file', path: foreign } }))).toBe('TS_ERR_CORRUPT');

    const options = await regionWithData('corrupt');
    const fd = openSync(join(dir, 'corrupt'), 'r+');
    writeSync(fd, Buffer.from([0xff, 0xff]), 0, 2, 40); // inside the geometry: the header checksum catches it
    closeSync(fd);
    expect(await codeOf(() => CxlTier.open(options))).toBe('TS_ERR_CORRUPT');
    // An explicit format is the way out; it starts empty.
    const tier = await CxlTier.open({ ...options, format: true });
    expect((await tier.get('keep', [1, 2, 3])).hits).toBe(0);
    await tier.close();
  });

  it('rejects a geometry mismatch with a typed error and loses nothing', async () => {
    const options = await regionWithData('geometry');
    expect(await codeOf(() => CxlTier.open({ ...options, pageSize: 8192 }))).toBe('TS_ERR_PAGE_SIZE');
    expect(await codeOf(() => CxlTier.open({ ...options, ways: 8 }))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'file', path: join(dir, 'geometry'), size: 8 << 20 } }))).toBe(
      'TS_ERR_BAD_ARGUMENT',
    );
    await expectKept(options);
  });

  it('rejects a truncated file with TS_ERR_CORRUPT', async () => {
    const options = await regionWithData('truncated');
    const path = join(dir, 'truncated');
    truncateSync(path, statSync(path).size / 2);
    expect(await codeOf(() => CxlTier.open(options))).toBe('TS_ERR_CORRUPT');
    truncateSync(path, 100);
    expect(await codeOf(() => CxlTier.open(options))).toBe('TS_ERR_CORRUPT');
  });

  it('never hands out a page whose bytes were damaged in the region: TS_ERR_CHECKSUM', async () => {
    const options = await regionWithData('damaged');
    const info = await cxlRegionInfo(options);
    const fd = openSync(join(dir, 'damaged'), 'r+');
    const junk = Buffer.alloc(info.slots * info.pageSize, 0x66);
    writeSync(fd, junk, 0, junk.length, info.dataOffset);
    closeSync(fd);
    const tier = await CxlTier.open(options);
    expect(await codeOf(() => tier.get('keep', [1]))).toBe('TS_ERR_CHECKSUM');
    expect(tier.info().counters.checksumErrors).toBeGreaterThanOrEqual(1);
    await tier.close();
  });

  it('needs a size for a new or empty file and an existing path otherwise', async () => {
    const empty = join(dir, 'empty');
    writeFileSync(empty, '');
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'file', path: empty } }))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'file', path: join(dir, 'missing') } }))).toBe('TS_ERR_NOT_FOUND');
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'memfd', size: 64 << 10 } }))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'memfd' }, ways: 3 }))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'memfd' }, pageSize: 1000 }))).toBe('TS_ERR_PAGE_SIZE');
    const info = await formatCxlRegion({ backing: { kind: 'file', path: join(dir, 'fresh'), size: 2 << 20, create: true } });
    expect(info.formattedNow).toBe(true);
    expect(info.regionBytes).toBe(2 << 20);
  });

  it('checks devdax geometry from sysfs: unaligned size, not a device, no sysfs entry', async () => {
    // /dev/null is a character device (1:3); a fake sysfs tree describes it as a DAX device.
    const sys = join(dir, 'sys');
    mkdirSync(join(sys, 'dev', 'char', '1:3'), { recursive: true });
    writeFileSync(join(sys, 'dev', 'char', '1:3', 'size'), `${(64 << 20) + 4096}\n`);
    writeFileSync(join(sys, 'dev', 'char', '1:3', 'align'), `${2 << 20}\n`);
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'devdax', path: '/dev/null' }, sysfsRoot: sys }))).toBe('TS_ERR_BAD_ARGUMENT');
    writeFileSync(join(sys, 'dev', 'char', '1:3', 'size'), `${64 << 20}\n`);
    expect(readDevdaxGeometry('/dev/null', sys)).toMatchObject({ size: 64 << 20, align: 2 << 20, major: 1, minor: 3 });
    // Aligned, but /dev/null cannot be mapped: a typed error, not a crash.
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'devdax', path: '/dev/null' }, sysfsRoot: sys }))).toMatch(/^TS_ERR_/);
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'devdax', path: '/dev/zero' }, sysfsRoot: sys }))).toBe('TS_ERR_BAD_ARGUMENT');
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'devdax', path: join(dir, 'fresh') }, sysfsRoot: sys }))).toBe(
      'TS_ERR_BAD_ARGUMENT',
    );
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'devdax', path: '/dev/no-such-dax' } }))).toBe('TS_ERR_NOT_FOUND');
  });

  it('clears set locks left from before a reboot on the first open since', async () => {
    const options = await regionWithData('reboot');
    const info = await cxlRegionInfo(options);
    // Lock every set as if by pid 1 with its real start time: an owner that looks alive forever.
    // Then make the region's boot id a foreign one, as after a reboot.
    const stat1 = readFileSync('/proc/1/stat', 'utf8');
    const start = BigInt(stat1.slice(stat1.lastIndexOf(')') + 2).split(' ')[19]!) & 0xffffffffn;
    const word = Buffer.alloc(8);
    word.writeBigUInt64LE((start << 32n) | 1n);
    const fd = openSync(join(dir, 'reboot'), 'r+');
    for (let s = 0; s < info.sets; s++) writeSync(fd, word, 0, 8, info.setsOffset + s * info.setBytes);
    writeSync(fd, Buffer.alloc(8, 0x42), 0, 8, 768);
    closeSync(fd);
    const tier = await CxlTier.open(options);
    const after = tier.info();
    expect(after.recoveredAfterReboot).toBe(true);
    expect(after.lockedSets).toBe(0);
    expect(after.counters.validPages).toBe(3);
    await tier.put('keep', [1], makePages('keep', [1], tier.pageSize, 5)); // would wait forever on a kept lock
    await tier.close();
    await expectKept(options);
    expect((await cxlRegionInfo(options)).recoveredAfterReboot).toBe(false);
  });

  it('refuses a region formatted in another pid namespace (lock owners are pids)', async (ctx) => {
    const options = await regionWithData('pidns');
    const script = `try { require(${JSON.stringify(addonPath)}).open({ kind: 'file', path: ${JSON.stringify(join(dir, 'pidns'))} }); console.log('opened') } catch (e) { console.log(e.code) }`;
    const r = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, '-e', script], { encoding: 'utf8' });
    if (r.status !== 0) ctx.skip(); // no unshare(CLONE_NEWPID) here
    expect(r.stdout.trim()).toBe('TS_ERR_UNSUPPORTED');
    await expectKept(options);
  });

  it('binds a memfd to a NUMA node, and rejects a node that does not exist', async () => {
    const tier = await CxlTier.open({ backing: { kind: 'memfd', size: 8 << 20, numaNode: 0 } });
    await tier.put('numa', [1], makePages('numa', [1], tier.pageSize));
    expect(pageMatches((await tier.get('numa', [1])).data, 'numa', 1)).toBe(true);
    await tier.close();
    expect(await codeOf(() => CxlTier.open({ backing: { kind: 'memfd', size: 8 << 20, numaNode: 999 } }))).toBe('TS_ERR_BAD_ARGUMENT');
  });
});
