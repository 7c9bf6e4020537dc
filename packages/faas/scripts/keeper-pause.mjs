#!/usr/bin/env node
// The pause a restoring VM sees when its page-serving worker is killed -9 under the keeper: from
// the kill to the next fault served (by the next worker), over N kills. A Firecracker-faithful
// client (native-test/fc_client.c) touches every page of a snapshot in order, one fault per touch
// (fault-around 1), a touch every --delay-us, recording each touch's completion time
// (CLOCK_MONOTONIC, the clock of Node's hrtime); the script kills the serving worker at random
// moments (once the replacement and, with --standby, a new spare are ready) and takes, for each
// kill, the first touch completed after it. Clients are started one after the other as needed.
//
//   node packages/faas/scripts/keeper-pause.mjs [--kills 20] [--pages 16384] [--delay-us 500] [--no-standby]
//
// Needs the package built (tsc -b; the keeper: build:native) and gcc for the client.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir, cpus } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTierStack, FileTier } from '@tierstack/core';
import { SnapshotCatalog, importRawFile, keeperArgs, keeperBinary } from '../dist/index.js';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const KILLS = arg('kills', 20);
const PAGES = arg('pages', 16384);
const DELAY_US = arg('delay-us', 500);
const STANDBY = !process.argv.includes('--no-standby');
const PS = 4096;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const dir = mkdtempSync(join(tmpdir(), 'keeper-pause-'));
const client = join(dir, 'fc_client');
execFileSync('gcc', ['-O2', '-pthread', '-o', client, join(pkg, 'native-test', 'fc_client.c')]);
const img = Buffer.alloc(PAGES * PS);
for (let p = 0; p < PAGES; p++) for (let w = 0; w < PS / 4; w += 16) img.writeUInt32LE((Math.imul(p + 1, 2654435761) ^ w) >>> 0, p * PS + w * 4);
writeFileSync(join(dir, 'mem'), img);
{
  const stack = createTierStack({ tiers: [await FileTier.open({ dir: join(dir, 'data', 'pages') })] });
  await importRawFile(new SnapshotCatalog(stack), 'fn', join(dir, 'mem'));
  await stack.close();
}

const sock = join(dir, 'fc.sock');
const statusPath = join(dir, 'fc.status');
const worker = [process.execPath, join(pkg, 'test', 'fixtures', 'keeper-worker.mjs'), join(dir, 'data'), 'fn', 'firecracker', '1', 'none'];
const keeper = spawn(keeperBinary(), keeperArgs({ firecracker: sock, status: statusPath, memfds: [{ name: 'dram', bytes: 128 << 20 }], standby: STANDBY, stableMs: 500, worker }), {
  stdio: ['ignore', 'pipe', 'ignore'],
});
let out = '';
keeper.stdout.on('data', (d) => (out += d));
const lines = () => out.split('\n').filter((l) => l.startsWith('{"keeperPid"')).map((l) => JSON.parse(l));
const status = () =>
  new Promise((resolve, reject) => {
    let d = '';
    connect(statusPath).on('data', (x) => (d += x)).on('end', () => resolve(JSON.parse(d))).on('error', reject);
  });
async function until(pred) {
  for (;;) {
    try {
      const s = await status();
      if (pred(s)) return s;
    } catch {
      // not up yet
    }
    await sleep(50);
  }
}

const clients = [];
function startClient() {
  const trace = join(dir, `trace-${clients.length}.bin`);
  const proc = spawn(client, [sock, join(dir, 'mem'), '--touch-delay-us', String(DELAY_US), '--trace', trace], { stdio: ['ignore', 'pipe', 'inherit'] });
  let o = '';
  proc.stdout.on('data', (d) => (o += d));
  const c = { proc, trace, kills: [], done: new Promise((r) => proc.on('exit', (code) => r({ code, out: o }))), running: true };
  proc.on('exit', () => (c.running = false));
  clients.push(c);
  return c;
}

try {
  await until((s) => s.healthy && (!STANDBY || s.standby?.state === 'standby'));
  let c = startClient();
  for (let k = 0; k < KILLS; k++) {
    // A VM restoring (a new one once the last finished), the worker serving it for a while and,
    // with --standby, a spare booted: then a kill at a random moment.
    await until((s) => {
      if (!c.running) c = startClient();
      return s.healthy && s.vms.length === 1 && s.vms[0].state === 'served' && (!STANDBY || s.standby?.state === 'standby') && (s.worker?.servingMs ?? 0) >= 600;
    });
    await sleep(100 + Math.random() * 300);
    if (!c.running) {
      k--;
      continue;
    }
    const pid = lines().at(-1).workerPid;
    const t = process.hrtime.bigint();
    process.kill(pid, 'SIGKILL');
    c.kills.push(t);
    while (lines().at(-1).workerPid === pid) await sleep(20);
  }
  const pauses = [];
  for (const cl of clients) {
    const r = await cl.done;
    const res = JSON.parse(r.out.trim().split('\n').pop());
    if (r.code !== 0 || res.mismatches !== 0) throw new Error(`a client saw wrong bytes: ${r.out}`);
    const done = new BigUint64Array(readFileSync(cl.trace).buffer.slice(0));
    for (const t of cl.kills) {
      const next = done.find((d) => d > t);
      if (next !== undefined) pauses.push(Number(next - t) / 1e6);
    }
  }
  pauses.sort((a, b) => a - b);
  const q = (p) => pauses[Math.min(pauses.length - 1, Math.floor(p * pauses.length))];
  const s = await status();
  const result = {
    standby: STANDBY,
    kills: pauses.length,
    p50Ms: +q(0.5).toFixed(1),
    p90Ms: +q(0.9).toFixed(1),
    maxMs: +pauses.at(-1).toFixed(1),
    minMs: +pauses[0].toFixed(1),
    touchDelayUs: DELAY_US,
    pages: PAGES,
    clients: clients.length,
    restarts: s.restarts,
    cpus: cpus().length,
    load: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    pausesMs: pauses.map((x) => +x.toFixed(1)),
  };
  console.log(JSON.stringify(result));
} finally {
  keeper.kill('SIGTERM');
  await new Promise((r) => keeper.on('exit', r));
  for (const c of clients) if (c.running) c.proc.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}
