#!/usr/bin/env node
/**
 * The rdma bench over real verbs, for the QEMU guest (tools/guestvm setup step 'rxe'): one memd
 * over provider `verbs` on soft-RoCE (10.77.0.1, token), 4 KiB pages of one 16 MiB slab, get and
 * put at queue depth 1 and 32, alternating rounds of
 *   raw    bench/rdma_raw.c (the baseline, same donor, its own slab; built on the host first),
 *   native the tier's C ABI handle from a native thread (driveStore of @tierstack/core/testing),
 *   js     tier.get/put from JavaScript,
 * in the same boot, and prints one JSON line per case (medians of the rounds) and a table. Under
 * TCG absolute numbers are low; the ratios to raw are what compare (as packages/bench does on
 * the host).
 *
 *   node tools/guestvm/bin/guest-run.mjs --setup rxe --timeout 400 -- \
 *     node packages/rdma/bench/verbs-guest.mjs /path/to/rdma_raw [rounds] [roundMs]
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { namespaceId } from '@tierstack/core';
import { driveStore } from '@tierstack/core/testing';
import { DonorClient, RdmaPoolTier } from '../dist/index.js';

const [rawBin, roundsArg = '5', roundMsArg = '400'] = process.argv.slice(2);
if (!rawBin) throw new Error('usage: verbs-guest.mjs <rdma_raw binary> [rounds] [roundMs]');
const ROUNDS = Number(roundsArg);
const ROUND_MS = Number(roundMsArg);
const HOST = '10.77.0.1';
const TOKEN = 'verbs-bench';
const PAGE = 4096;
const SLAB = 16 << 20;
const SPAN = SLAB / PAGE;
const pkg = join(fileURLToPath(import.meta.url), '..', '..');

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const pct = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] ?? 0;
let seed = 12345;
const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8);
const pages = (n) => Array.from({ length: n }, () => rnd() % SPAN);

/** One JSON line (with `key`) from a child's stdout. */
function lineOf(proc, key) {
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout });
    rl.on('line', (l) => {
      try {
        const j = JSON.parse(l);
        if (j[key] !== undefined) {
          rl.close();
          resolve(j);
        }
      } catch {}
    });
    proc.once('exit', (c) => reject(new Error(`exited ${c}`)));
  });
}

const memd = spawn(process.execPath, [join(pkg, 'dist', 'memd-main.js'), '--host', HOST, '--data-host', HOST, '--provider', 'verbs', '--token', TOKEN, '--port', '0', '--capacity', '64M', '--slab-size', String(SLAB), '--log-level', 'warn', '--die-with-parent'], { stdio: ['ignore', 'pipe', 'inherit'] });
const ready = await lineOf(memd, 'ready');
const donor = `${ready.host}:${ready.port}`;
const tier = await RdmaPoolTier.open({ donors: [donor], token: TOKEN, pageSize: PAGE, name: 'verbs-bench' });
const ns = 'bench';
const nsId = namespaceId(ns);
const fill = Buffer.alloc(64 * PAGE, 0x5a);
for (let p = 0; p < SPAN; p += 64) await tier.put(ns, Array.from({ length: 64 }, (_, k) => p + k), fill);
const ctl = await DonorClient.connect({ host: ready.host, port: ready.port }, { clientName: 'rdma-raw', token: TOKEN });
const grant = await ctl.allocSlab('raw-baseline');
const raw = spawn(rawBin, ['verbs', ctl.hello.dataNode, ctl.hello.dataService, grant.remoteAddr, grant.rkey, grant.size], { stdio: ['pipe', 'pipe', 'inherit'] });
const rawLines = createInterface({ input: raw.stdout });
const rawWaiting = [];
rawLines.on('line', (l) => rawWaiting.shift()?.(l));
const rawRun = async (op, qd, ms) => {
  const j = JSON.parse(await new Promise((r) => (rawWaiting.push(r), raw.stdin.write(`run ${op === 'get' ? 'read' : 'write'} ${PAGE} ${qd} ${ms}\n`))));
  if (j.error) throw new Error(`rdma_raw: ${j.error}`);
  return { ops: j.ops / j.secs, p50: j.p50_us };
};
const jsRun = async (op, qd, ms) => {
  const out = Buffer.alloc(qd * PAGE);
  const data = Buffer.alloc(qd * PAGE, 0x6b);
  const lat = [];
  let n = 0;
  const start = process.hrtime.bigint();
  while (Number(process.hrtime.bigint() - start) / 1e6 < ms) {
    const t0 = process.hrtime.bigint();
    if (op === 'get') await tier.get(ns, pages(qd), { out });
    else await tier.put(ns, pages(qd), data);
    lat.push(Number(process.hrtime.bigint() - t0) / 1e3);
    n += qd;
  }
  return { ops: n / (Number(process.hrtime.bigint() - start) / 1e9), p50: pct(lat.sort((a, b) => a - b), 0.5) };
};
const nativeRun = async (op, qd, ms) => {
  const lat = [];
  let sum = 0;
  const start = process.hrtime.bigint();
  while (Number(process.hrtime.bigint() - start) / 1e6 < ms) {
    const r = await driveStore(tier.nativeHandle, nsId, op, pages(256), qd, Math.max(4, Math.round(128 / qd)), { latencies: true });
    if (r.status !== 0 || r.misses !== 0) throw new Error(`native ${op}: status ${r.status}, ${r.misses} misses`);
    for (const x of r.latencies) {
      lat.push(x / 1e3);
      sum += x;
    }
  }
  return { ops: (lat.length * qd) / (sum / 1e9), p50: pct(lat.sort((a, b) => a - b), 0.5) };
};

const rows = [];
for (const op of ['get', 'put']) {
  for (const qd of [1, 32]) {
    await rawRun(op, qd, ROUND_MS);
    await nativeRun(op, qd, ROUND_MS);
    await jsRun(op, qd, ROUND_MS);
    const R = [], N = [], J = [];
    for (let r = 0; r < ROUNDS; r++) {
      R.push(await rawRun(op, qd, ROUND_MS));
      N.push(await nativeRun(op, qd, ROUND_MS));
      J.push(await jsRun(op, qd, ROUND_MS));
    }
    const m = (xs) => ({ ops: median(xs.map((x) => x.ops)), p50: median(xs.map((x) => x.p50)) });
    const base = m(R);
    for (const [side, xs] of [['tier-native', N], ['tier-js', J]]) {
      const c = m(xs);
      const row = { case: `${op} 4KiB qd${qd}`, side, ops: Math.round(c.ops), rawOps: Math.round(base.ops), ratio: +(c.ops / base.ops).toFixed(2), p50Us: +c.p50.toFixed(1), rawP50Us: +base.p50.toFixed(1), p50Ratio: +(c.p50 / base.p50).toFixed(2) };
      rows.push(row);
      console.log(JSON.stringify({ verbsBench: row }));
    }
  }
}
console.log('| case | path | ops/s | raw ops/s | ratio | p50 us (raw) | p50 ratio |');
console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) console.log(`| ${r.case} | ${r.side} | ${r.ops} | ${r.rawOps} | ${r.ratio} | ${r.p50Us} (${r.rawP50Us}) | ${r.p50Ratio} |`);
raw.stdin.end();
ctl.close();
await tier.close();
memd.kill();
process.exit(0);
