/**
 * `tierstack snapshot import|export|ls|rm|info`: the snapshot catalog of @tierstack/faas on the
 * stack described by the shared stack flags (default: [DRAM, FileTier(<data-dir>/pages)]).
 */
import { statSync } from 'node:fs';
import type { Command } from 'commander';
import type { PageStore } from '@tierstack/core';
import { SnapshotCatalog, importRawFile, importFirecracker, importCriu, exportSnapshot, type SnapshotSummary } from '@tierstack/faas';
import { addStackOptions, openStack, type StackCliOptions } from '../stack-options.js';

type Out = (line: string) => void;

async function withCatalog<T>(o: StackCliOptions, fn: (c: SnapshotCatalog, stack: PageStore) => Promise<T>): Promise<T> {
  const stack = await openStack(o);
  try {
    return await fn(new SnapshotCatalog(stack), stack);
  } finally {
    await stack.close();
  }
}

const mib = (bytes: number): string => `${(bytes / 1048576).toFixed(1)} MiB`;

export function summaryLines(s: SnapshotSummary): string[] {
  return [
    `id            ${s.id}`,
    `source        ${s.sourceKind} ${s.source}`,
    `created       ${new Date(s.createdAt).toISOString()}`,
    `image         ${mib(s.imageSize)} (${s.pageCount} pages of ${s.pageSize} bytes)`,
    `stored pages  ${s.storedPages} (${s.zeroPages} zero pages elided)`,
    `regions       ${s.regions}`,
    `working sets  ${s.workingSets.length ? s.workingSets.map((w) => `${w.pages} pages @ ${new Date(w.recordedAt).toISOString()}`).join(', ') : 'none recorded'}`,
    `namespace     ${s.namespace}`,
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
    const r = await withCatalog(o, (c) => {
      // A directory is a CRIU image directory even without --criu.
      const isDir = statSync(path, { throwIfNoEntry: false })?.isDirectory() === true;
      if (o.criu || isDir) return importCriu(c, id, path, { ...common, ...(o.pid !== undefined ? { pid: o.pid } : {}) });
      if (o.firecracker || o.regions) return importFirecracker(c, id, path, { ...common, ...(o.regions ? { regions: o.regions } : {}) });
      return importRawFile(c, id, path, common);
    });
    out(`imported ${id}: ${mib(r.bytes)}, ${r.storedPages} pages stored, ${r.zeroPages} zero pages elided, ${(r.ms / 1000).toFixed(2)} s`);
  });

  addStackOptions(
    snap.command('export').description('write a snapshot back out as a raw memory file (checksums verified)').argument('<id>').argument('<file>'),
  ).action(async (id: string, file: string, o: StackCliOptions) => {
    const r = await withCatalog(o, (c) => exportSnapshot(c, id, file, { progressBar: process.stderr.isTTY === true }));
    out(`exported ${id} to ${file}: ${mib(r.bytes)} in ${(r.ms / 1000).toFixed(2)} s`);
  });

  addStackOptions(snap.command('ls').description('list snapshots').option('--json', 'one JSON object per line')).action(
    async (o: StackCliOptions & { json?: boolean }) => {
      const list = await withCatalog(o, (c) => c.list());
      if (o.json) {
        for (const s of list) out(JSON.stringify(s));
        return;
      }
      if (list.length === 0) {
        out('no snapshots');
        return;
      }
      const rows = [['id', 'source', 'size', 'stored', 'zero', 'working sets', 'created']];
      for (const s of list) {
        rows.push([s.id, s.sourceKind, mib(s.imageSize), String(s.storedPages), String(s.zeroPages), String(s.workingSets.length), new Date(s.createdAt).toISOString()]);
      }
      const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
      for (const r of rows) out(r.map((c, i) => c.padEnd(w[i]!)).join('  '));
    },
  );

  addStackOptions(snap.command('info').description('show one snapshot').argument('<id>').option('--json', 'as JSON')).action(
    async (id: string, o: StackCliOptions & { json?: boolean }) => {
      const m = await withCatalog(o, (c) => c.get(id));
      if (o.json) out(JSON.stringify({ ...m.summary(), regions: m.regions }));
      else {
        for (const l of summaryLines(m.summary())) out(l);
        for (const r of m.regions.slice(0, 32)) out(`  region ${r.name}: ${mib(r.size)} at file offset ${r.fileOffset}, base 0x${r.base.toString(16)}`);
        if (m.regions.length > 32) out(`  ... ${m.regions.length - 32} more regions`);
      }
    },
  );

  addStackOptions(snap.command('rm').description('remove a snapshot (manifest and pages)').argument('<id...>')).action(
    async (ids: string[], o: StackCliOptions) => {
      await withCatalog(o, async (c) => {
        for (const id of ids) {
          await c.remove(id);
          out(`removed ${id}`);
        }
      });
    },
  );
}
