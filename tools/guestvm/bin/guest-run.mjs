#!/usr/bin/env node
// Runs one command in a QEMU guest by hand (see tools/guestvm/README.md).
//   node tools/guestvm/bin/guest-run.mjs [options] -- <command...>
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const USAGE = `usage: guest-run [options] -- <command...>
  One argument after -- is a shell command line; several are an argv (exec'd as is).
  --setup <steps>     comma-separated: ublk, cxl-devdax
  --cxl <MiB>         add a persistent CXL type-3 device of this size (multiple of 256)
  --cxl-file <path>   host file backing the CXL device (default: temporary)
  --disk <MiB>        add a virtio-blk disk (/dev/vda)
  --disk-file <path>  host image for the disk (default: temporary)
  --results <dir>     host directory the guest can write at $TIERSTACK_GUEST_RESULTS
  --env K=V           add to the command's environment (repeatable)
  --cwd <dir>         working directory in the guest (default: the current one)
  --mem <MiB>         guest memory (default 1024, at most 2048)
  --timeout <s>       kill the guest after this long (default 120)
  --keep              keep the job directory (job script, console log)
  --console           print the guest console and timing to stderr afterwards
  --prepare           only fetch and build the cache, print where it is
  --help
Exit status: the command's own; 124 on a guest timeout; 125 if the guest crashed or could not run.`;

const dist = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'index.js');
if (!existsSync(dist)) {
  process.stderr.write(`guest-run: ${dist} is missing; build first: pnpm exec tsc -b tools/guestvm (or npm run build)\n`);
  process.exit(125);
}
const guestvm = await import(dist);

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      setup: { type: 'string' },
      cxl: { type: 'string' },
      'cxl-file': { type: 'string' },
      disk: { type: 'string' },
      'disk-file': { type: 'string' },
      results: { type: 'string' },
      env: { type: 'string', multiple: true },
      cwd: { type: 'string' },
      mem: { type: 'string' },
      timeout: { type: 'string' },
      keep: { type: 'boolean' },
      console: { type: 'boolean' },
      prepare: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (err) {
  process.stderr.write(`guest-run: ${err.message}\n${USAGE}\n`);
  process.exit(125);
}
const { values: v, positionals } = parsed;
if (v.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

try {
  if (v.prepare) {
    const t0 = Date.now();
    const g = await guestvm.prepareGuest();
    process.stdout.write(
      `cache: ${g.cacheDir}\nkernel: ${g.kernel.release}\ninitramfs: ${g.initramfs.path}\nqemu: ${g.tools.qemu}\n(${Date.now() - t0} ms)\n`,
    );
    process.exit(0);
  }
  if (positionals.length === 0) {
    process.stderr.write(`guest-run: no command given\n${USAGE}\n`);
    process.exit(125);
  }
  const env = {};
  for (const kv of v.env ?? []) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new Error(`--env wants K=V, got ${kv}`);
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  const r = await guestvm.runInGuest({
    command: positionals.length === 1 ? positionals[0] : positionals,
    setup: v.setup ? v.setup.split(',').filter(Boolean) : [],
    cxl: v.cxl || v['cxl-file'] ? { sizeMiB: v.cxl ? Number(v.cxl) : undefined, backingFile: v['cxl-file'] } : undefined,
    disk: v.disk || v['disk-file'] ? { sizeMiB: Number(v.disk ?? 64), path: v['disk-file'] } : undefined,
    resultsDir: v.results,
    env,
    cwd: v.cwd,
    memoryMiB: v.mem ? Number(v.mem) : undefined,
    timeoutMs: Number(v.timeout ?? 120) * 1000,
    keepJobDir: v.keep,
    // Streamed as the guest writes them (polled a few times a second).
    onStdout: (chunk) => process.stdout.write(chunk),
    onStderr: (chunk) => process.stderr.write(chunk),
  });
  if (v.console) {
    process.stderr.write(`--- guest console ---\n${r.console.replace(/\r/g, '')}${r.setupLog ? `--- setup log ---\n${r.setupLog}` : ''}`);
    process.stderr.write(`--- ${r.kernelRelease}, exit ${r.exitCode}, ${r.durationMs} ms\n`);
  }
  process.exit(r.exitCode);
} catch (err) {
  process.stderr.write(`guest-run: ${err.code ? `${err.code}: ` : ''}${err.message}\n`);
  process.exit(err.code === 'TS_ERR_TIMEOUT' ? 124 : 125);
}
