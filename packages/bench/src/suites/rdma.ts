/**
 * RdmaPoolTier vs raw libfabric, one real memd donor process on loopback (tcp provider).
 *
 * For 4 KiB and 64 KiB pages, get and put at queue depth 1 and 32 (QD = pages in flight per
 * call: post all, reap all), each round measures, alternating:
 *   - raw libfabric: packages/rdma/bench/rdma_raw.c (compiled here with gcc + pkg-config), doing
 *     fi_read/fi_write of the same block size against a slab of the same donor — the baseline;
 *   - tier-js:     `tier.get/put` from JavaScript, one batch of QD pages per call;
 *   - tier-native: the tier's page-store C ABI handle called from a native thread (what the uffd
 *                  and ublk front-ends do), QD pages per call;
 *   - tcp:         a plain TCP request/response page server (Node, child process), QD requests
 *                  pipelined per call.
 * Bars (issue 6): QD32 4 KiB get >= 0.8x raw ops/s; QD1 p50 <= 1.3x raw p50.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { namespaceId, TsStatus } from '@tierstack/core';
import { combine, result, rng, randomPages, type Measurement, type Suite } from '../harness.js';

const SIZES = [4096, 65536];
const QDS = [1, 32];
const SLAB = 16 << 20;

interface Sample {
  ops: number;
  secs: number;
  lat: number[]; // per-call latencies, microseconds
}

function toMeasurement(s: Sample): Measurement {
  const lat = [...s.lat].sort((a, b) => a - b);
  return {
    opsPerSec: s.ops / s.secs,
    p50Us: lat[Math.floor(lat.length / 2)] ?? 0,
    p99Us: lat[Math.min(lat.length - 1, Math.floor(lat.length * 0.99))] ?? 0,
    calls: lat.length,
  };
}


async function timed(ms: number, call: () => Promise<number>): Promise<Measurement> {
  const lat: number[] = [];
  let ops = 0;
  const start = process.hrtime.bigint();
  const end = start + BigInt(ms * 1e6);
  let now = start;
  while (now < end) {
    const t0 = now;
    ops += await call();
    now = process.hrtime.bigint();
    lat.push(Number(now - t0) / 1e3);
  }
  return toMeasurement({ ops, secs: Number(now - start) / 1e9, lat });
}

async function readyLine(proc: ChildProcess, what: string): Promise<Record<string, unknown>> {
  let err = '';
  proc.stderr?.on('data', (c: Buffer) => (err += c.toString()));
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout! });
    rl.on('line', (l) => {
      try {
        const j = JSON.parse(l) as Record<string, unknown>;
        if (j.ready) {
          rl.close();
          resolve(j);
        }
      } catch {
        /* other output */
      }
    });
    proc.once('exit', (code) => reject(new Error(`${what} exited (${code}): ${err}`)));
  });
}

/** The raw C baseline: one process, commands on stdin, one JSON answer per command. */
class RawBaseline {
  private readonly lines: Interface;
  private readonly waiting: Array<(l: string) => void> = [];
  constructor(private readonly proc: ChildProcess) {
    this.lines = createInterface({ input: proc.stdout! });
    this.lines.on('line', (l) => this.waiting.shift()?.(l));
  }
  async run(op: 'read' | 'write', block: number, qd: number, ms: number): Promise<Measurement> {
    const line = await new Promise<string>((resolve) => {
      this.waiting.push(resolve);
      this.proc.stdin!.write(`run ${op} ${block} ${qd} ${ms}\n`);
    });
    const j = JSON.parse(line) as { ops: number; secs: number; calls: number; p50_us: number; p99_us: number; error?: string };
    if (j.error) throw new Error(`rdma_raw: ${j.error}`);
    return { opsPerSec: j.ops / j.secs, p50Us: j.p50_us, p99Us: j.p99_us, calls: j.calls };
  }
  close(): void {
    this.proc.stdin!.end();
    this.proc.kill();
  }
}

// A plain TCP page server: request = op(1) + page(u32 LE) [+ page bytes for a put]; answer =
// the page (get) or one byte (put). Runs in a child process so it has its own event loop.
const TCP_SERVER = `
const net = require('net');
const size = Number(process.argv[1]), span = Number(process.argv[2]);
const store = Buffer.alloc(size * span, 0x33);
const srv = net.createServer((s) => {
  s.setNoDelay(true);
  let buf = Buffer.alloc(0);
  s.on('data', (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    const out = [];
    for (;;) {
      if (buf.length < 5) break;
      const op = buf[0], page = buf.readUInt32LE(1) % span;
      if (op === 1) { out.push(store.subarray(page * size, (page + 1) * size)); buf = buf.subarray(5); continue; }
      if (buf.length < 5 + size) break;
      buf.copy(store, page * size, 5, 5 + size);
      buf = buf.subarray(5 + size);
      out.push(Buffer.from([1]));
    }
    if (out.length) s.write(out.length === 1 ? out[0] : Buffer.concat(out));
  });
  s.on('error', () => {});
});
srv.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ ready: true, port: srv.address().port })));
`;

class TcpClient {
  private want = 0;
  private got = 0;
  private done: (() => void) | undefined;
  private constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.got += d.length;
      if (this.got >= this.want && this.done) {
        const f = this.done;
        this.done = undefined;
        f();
      }
    });
  }
  static async open(port: number): Promise<TcpClient> {
    const s = connect(port, '127.0.0.1');
    s.setNoDelay(true);
    await new Promise<void>((r, j) => s.once('connect', () => r()).once('error', j));
    return new TcpClient(s);
  }
  call(op: 'get' | 'put', pages: number[], size: number, data: Buffer): Promise<void> {
    this.got = 0;
    this.want = op === 'get' ? pages.length * size : pages.length;
    const parts: Buffer[] = [];
    for (const p of pages) {
      const h = Buffer.alloc(5);
      h[0] = op === 'get' ? 1 : 2;
      h.writeUInt32LE(p, 1);
      parts.push(h);
      if (op === 'put') parts.push(data.subarray(0, size));
    }
    return new Promise((resolve) => {
      this.done = resolve;
      this.sock.write(Buffer.concat(parts));
    });
  }
  close(): void {
    this.sock.destroy();
  }
}

export const rdmaSuite: Suite = {
  name: 'rdma',
  description: 'RdmaPoolTier get/put (JS batches, native C ABI) vs raw libfabric fi_read/fi_write and a TCP request/response server, one memd on loopback',
  async *run(ctx) {
    const { RdmaPoolTier, DonorClient, packageDir } = await import('@tierstack/rdma');
    const { driveStore } = await import('@tierstack/core/testing');
    const rawBin = join(ctx.tmpDir, 'rdma_raw');
    const pc = execFileSync('pkg-config', ['--cflags', '--libs', 'libfabric'], { encoding: 'utf8' }).trim().split(/\s+/).filter(Boolean);
    execFileSync('gcc', ['-O2', '-o', rawBin, join(packageDir, 'bench', 'rdma_raw.c'), ...pc]);
    const memd = spawn(process.execPath, [join(packageDir, 'dist', 'memd-main.js'), '--port', '0', '--capacity', '512M', '--slab-size', String(SLAB), '--log-level', 'warn', '--die-with-parent'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const children: ChildProcess[] = [memd];
    try {
      const ready = (await readyLine(memd, 'memd')) as { host: string; port: number };
      const donor = `${ready.host}:${ready.port}`;
      const m = ctx.measure;
      for (const size of SIZES) {
        const kib = size / 1024;
        const span = SLAB / size; // one slab's worth of pages
        const tier = await RdmaPoolTier.open({ donors: [donor], pageSize: size, name: `rdma-${kib}k` });
        const ns = `bench-${kib}k`;
        const nsId = namespaceId(ns);
        const fill = Buffer.alloc(Math.min(span, 64) * size, 0x5a);
        for (let p = 0; p < span; p += 64) await tier.put(ns, Array.from({ length: Math.min(64, span - p) }, (_, k) => p + k), fill.subarray(0, Math.min(64, span - p) * size));
        const ctl = await DonorClient.connect({ host: ready.host, port: ready.port }, { clientName: 'rdma-raw' });
        const grant = await ctl.allocSlab('raw-baseline');
        const raw = spawn(rawBin, [ctl.hello.provider, ctl.hello.dataNode, ctl.hello.dataService, grant.remoteAddr, grant.rkey, grant.size], {
          stdio: ['pipe', 'pipe', 'inherit'],
        });
        children.push(raw);
        const rawB = new RawBaseline(raw);
        const tcpProc = spawn(process.execPath, ['-e', TCP_SERVER, String(size), String(span)], { stdio: ['ignore', 'pipe', 'pipe'] });
        children.push(tcpProc);
        const tcp = await TcpClient.open(((await readyLine(tcpProc, 'tcp server')) as { port: number }).port);
        const handle = tier.nativeHandle!;
        // A fresh process needs a while before its latency settles (scheduler placement): warm
        // the baseline up once before its first measured round.
        await rawB.run('read', size, 1, 1000);
        const pool = Float64Array.from(randomPages(rng(size), span, 8192));
        for (const op of ['get', 'put'] as const) {
          for (const qd of QDS) {
            const next = rng(qd * 7 + size);
            const out = Buffer.alloc(qd * size);
            const data = Buffer.alloc(qd * size, 0x6b);
            const js = (): Promise<number> => {
              const pages = randomPages(next, span, qd);
              return (op === 'get' ? tier.get(ns, pages, { out }) : tier.put(ns, pages, data)).then(() => qd);
            };
            const native = async (ms: number): Promise<Measurement> => {
              const lat: number[] = [];
              const start = process.hrtime.bigint();
              let sum = 0;
              while (Number(process.hrtime.bigint() - start) / 1e6 < ms) {
                const off = next() % (pool.length - 256);
                // The testing kit's driver: calls of qd pages through the C ABI from a native thread.
                const r = await driveStore(handle, nsId, op, pool.subarray(off, off + 256), qd, Math.max(8, Math.round(256 / qd)), { latencies: true });
                if (r.status !== TsStatus.Ok || r.misses !== 0) throw new Error(`rdma bench: status ${r.status}, ${r.misses} misses`);
                const l = r.latencies!;
                for (const x of l) {
                  lat.push(x / 1e3);
                  sum += x;
                }
              }
              return toMeasurement({ ops: lat.length * qd, secs: sum / 1e9, lat });
            };
            const tcpOp = async (): Promise<number> => {
              await tcp.call(op, randomPages(next, span, qd), size, data);
              return qd;
            };
            ctx.log(`rdma ${op} ${kib}KiB qd${qd}`);
            await timed(m.warmupMs, js);
            await native(m.warmupMs);
            await rawB.run(op === 'get' ? 'read' : 'write', size, qd, m.warmupMs);
            const R: Measurement[] = [];
            const J: Measurement[] = [];
            const N: Measurement[] = [];
            const T: Measurement[] = [];
            for (let r = 0; r < m.rounds; r++) {
              R.push(await rawB.run(op === 'get' ? 'read' : 'write', size, qd, m.roundMs));
              J.push(await timed(m.roundMs, js));
              N.push(await native(m.roundMs));
              T.push(await timed(m.roundMs, tcpOp));
            }
            const base = combine(R);
            const name = `${op} ${kib}KiB qd${qd}`;
            const bar = (c: Measurement): string | undefined => {
              if (op !== 'get' || size !== 4096) return undefined;
              if (qd === 32) return `bar ops >= 0.8x raw: ${c.opsPerSec / base.opsPerSec >= 0.8 ? 'met' : 'MISSED'}`;
              return `p50 ${(c.p50Us / base.p50Us).toFixed(2)}x raw, bar <= 1.3x: ${c.p50Us / base.p50Us <= 1.3 ? 'met' : 'MISSED'}`;
            };
            for (const [label, ms] of [
              ['tier-native', N],
              ['tier-js', J],
              ['tcp req/resp', T],
            ] as const) {
              const c = combine([...ms]);
              const note = label === 'tcp req/resp' ? undefined : bar(c);
              yield result('rdma', `${name} ${label}`, 'raw libfabric (C)', { case: c, baseline: base }, note);
            }
          }
        }
        tcp.close();
        rawB.close();
        ctl.close();
        await tier.close();
      }
    } finally {
      for (const c of children) if (c.exitCode === null) c.kill();
    }
  },
};
