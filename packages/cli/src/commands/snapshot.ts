/**
 * `tierstack snapshot import|export|ls|rm|info|gc`: the snapshot catalog of @tierstack/faas on the
 * stack described by the shared stack flags (default: [DRAM, FileTier(<data-dir>/pages)]).
 * ls, import, rm and gc first reclaim what interrupted imports, replaces and removals left behind
 * (catalog.gc()); ls and info show the disk space each snapshot takes where the image tier can tell.
 */
import { statSync } from 'node:fs';
import type { Command } from 'commander';
import type { PageStore } from '@tierstack/core';
import { SnapshotCatalog, importRawFile, importFirecracker, importCriu, exportSnapshot, bottomOf, diskUsageOf, type SnapshotSummary, type GcResult } from '@tierstack/faas';
import { addStackOptions, openStack, type StackCliOptions } from '../stack-options.js';

type Out = (line: string) => void;

async function withCatalog<T>(o: StackCliOptions, fn: (c: SnapshotCatalog, stack: PageStore) => Promise<T>, gc = false): Promise<T> {
  const stack = await openStack(o);
  try {
    const c = new SnapshotCatalog(stack);
    if (gc) {
      // Reclaiming leftovers must never stop the command itself.
      const r = await c.gc().catch((err: Error & { code?: string }) => {
        process.stderr.write(`tierstack: warning: snapshot gc failed: ${err.code ? `${err.code}: ` : ''}${err.message}\n`);
        return undefined;
      });
      if (r) noteGc(r);
    }
    return await fn(c, stack);
  } finally {
    await stack.close();
  }
}

/** One stderr line when gc() reclaimed something (stdout stays the command's own output). */
function noteGc(r: GcResult): void {
  if (r.reclaimed.length > 0) process.stderr.write(`reclaimed ${r.reclaimed.length} unreferenced snapshot namespace(s) left by interrupted imports, replaces or removals\n`);
}

const mib = (bytes: number): string => `${(bytes / 1048576).toFixed(1)} MiB`;
const disk = (bytes: number | undefined): string => (bytes === undefined ? '-' : mib(bytes));

export function summaryLines(s: SnapshotSummary & { diskBytes?: number | undefined }): string[] {
  return [
    `id            ${s.id}`,
    `source        ${s.sourceKind} ${s.source}`,
    `created       ${new Date(s.createdAt).toISOString()}`,
    `image         ${mib(s.imageSize)} (${s.pageCount} pages of ${s.pageSize} bytes)`,
    `stored pages  ${s.storedPages} (${s.zeroPages} zero pages elided)`,
    `regions       ${s.regions}`,
    `working sets  ${s.workingSets.length ? s.workingSets.map((w) => `${w.pages} pages @ ${new Date(w.recordedAt).toISOString()}`).join(', ') : 'none recorded'}`,
    `namespace     ${s.namespace}`,
    ...(s.diskBytes !== undefined ? [`disk          ${mib(s.diskBytes)} allocated`] : []),
  ];
}

export function registerSnapshotCommands(program: Command, out: Out = (l) => console.log(l)): void {
  const snap = program.command('snapshot').description('memory snapshots in the tier stack: import, export, list, remove, inspect');

  addStackOptions(
    snap
      .command('import')
      .description('import a memory image: a raw file, a Firecracker memory file (--firecracker) or a CRIU image directory (--criu)')
      .argument('<id>', 'snapshot id')
      .argument('<path>', 'memory file or CRIU image directory')
      .option('--firecracker', 'the file is a Firecracker guest memory file')
      .option('--regions <json>', 'Firecracker: a JSON file describing the guest memory regions')
      .option('--criu', 'the path is a CRIU image directory (pagemap-*.img, pages-*.img); implied for a directory')
      .option('--pid <pid>', 'CRIU: import only this pid', Number)
      .option('--replace', 'replace an existing snapshot of this id'),
  ).action(async (id: string, path: string, o: StackCliOptions & { firecracker?: boolean; regions?: string; criu?: boolean; pid?: number; replace?: boolean }) => {
    const common = { replace: o.replace === true, progressBar: process.stderr.isTTY === true };
    const r = await withCatalog(
      o,
      (c) => {
        // A directory is a CRIU image directory even without --criu.
        const isDir = statSync(path, { throwIfNoEntry: false })?.isDirectory() === true;
        if (o.criu || isDir) return importCriu(c, id, path, { ...common, ...(o.pid !== undefined ? { pid: o.pid } : {}) });
        if (o.firecracker || o.regions) return importFirecracker(c, id, path, { ...common, ...(o.regions ? { regions: o.regions } : {}) });
        return importRawFile(c, id, path, common);
      },
      true,
    );
    out(`imported ${id}: ${mib(r.bytes)}, ${r.storedPages} pages stored, ${r.zeroPages} zero pages elided, ${(r.ms / 1000).toFixed(2)} s`);
  });

  addStackOptions(
    snap.command('export').description('write a snapshot back out as a raw memory file (checksums verified)').argument('<id>').argument('<file>'),
  ).action(async (id: string, file: string, o: StackCliOptions) => {
    const r = await withCatalog(o, (c) => exportSnapshot(c, id, file, { progressBar: process.stderr.isTTY === true }));
    out(`exported ${id} to ${file}: ${mib(r.bytes)} in ${(r.ms / 1000).toFixed(2)} s`);
  });

  addStackOptions(snap.command('ls').description('list snapshots (a damaged one is listed with its error)').option('--json', 'one JSON object per line')).action(
    async (o: StackCliOptions & { json?: boolean }) => {
      const { snapshots, damaged, usage, total } = await withCatalog(
        o,
        async (c, stack) => {
          const r = await c.scan();
          const usage = new Map<string, number | undefined>();
          for (const s of r.snapshots) usage.set(s.id, await diskUsageOf(bottomOf(stack), s.namespace));
          return { ...r, usage, total: await diskUsageOf(bottomOf(stack)) };
        },
        true,
      );
      if (o.json) {
        for (const s of snapshots) out(JSON.stringify({ ...s, diskBytes: usage.get(s.id) }));
        for (const d of damaged) out(JSON.stringify({ id: d.id, damaged: { code: d.code, message: d.message } }));
        return;
      }
      if (snapshots.length === 0 && damaged.length === 0) {
        out('no snapshots');
        return;
      }
      const rows = [['id', 'source', 'size', 'stored', 'zero', 'disk', 'working sets', 'created']];
      for (const s of snapshots) {
        rows.push([s.id, s.sourceKind, mib(s.imageSize), String(s.storedPages), String(s.zeroPages), disk(usage.get(s.id)), String(s.workingSets.length), new Date(s.createdAt).toISOString()]);
      }
      const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
      for (const r of rows) out(r.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd());
      for (const d of damaged) out(`${d.id.padEnd(w[0]!)}  DAMAGED ${d.code}: ${d.message}`);
      if (total !== undefined) out(`disk: ${mib(total)} allocated by the image tier in all`);
    },
  );

  addStackOptions(snap.command('info').description('show one snapshot').argument('<id>').option('--json', 'as JSON')).action(
    async (id: string, o: StackCliOptions & { json?: boolean }) => {
      const { m, diskBytes } = await withCatalog(o, async (c) => {
        const m = await c.get(id);
        return { m, diskBytes: await c.diskUsage(m) };
      });
      if (o.json) out(JSON.stringify({ ...m.summary(), diskBytes, regions: m.regions }));
      else {
        for (const l of summaryLines({ ...m.summary(), diskBytes })) out(l);
        for (const r of m.regions.slice(0, 32)) out(`  region ${r.name}: ${mib(r.size)} at file offset ${r.fileOffset}, base 0x${r.base.toString(16)}`);
        if (m.regions.length > 32) out(`  ... ${m.regions.length - 32} more regions`);
      }
    },
  );

  addStackOptions(
    snap.command('gc').description('reclaim the space of interrupted imports, replaced generations and half-removed snapshots').option('--json', 'as JSON'),
  ).action(async (o: StackCliOptions & { json?: boolean }) => {
    const { r, before, after } = await withCatalog(o, async (c, stack) => {
      const before = await diskUsageOf(bottomOf(stack));
      const r = await c.gc();
      return { r, before, after: await diskUsageOf(bottomOf(stack)) };
    });
    if (o.json) {
      out(JSON.stringify({ ...r, diskBytesBefore: before, diskBytesAfter: after }));
      return;
    }
    out(`reclaimed ${r.reclaimed.length} namespace(s)${before !== undefined && after !== undefined ? `, ${mib(Math.max(0, before - after))} freed (${mib(after)} allocated now)` : ''}`);
    for (const x of r.reclaimed) out(`  reclaimed ${x.ns}`);
    for (const x of r.strayManifests) out(`  removed the unlisted manifest of ${x}`);
    for (const x of r.kept) out(`  kept ${x.ns}: ${x.why}`);
  });

  addStackOptions(snap.command('rm').description('remove a snapshot (manifest and pages)').argument('<id...>')).action(
    async (ids: string[], o: StackCliOptions) => {
      await withCatalog(
        o,
        async (c) => {
          for (const id of ids) {
            await c.remove(id);
            out(`removed ${id}`);
          }
        },
        true,
      );
    },
  );
}
