/**
 * RedisTier vs redis-benchmark on the same private redis-server in the same run: 4 KiB pages,
 * get and put in batches of 1 and 32. The baseline is `redis-benchmark -c 1 -d 4096 -P <batch>
 * -r <span> -t get|set` — one connection like the tier, <batch> commands per round trip like
 * one tier call (which sends one MGET/MSET of <batch> keys) — parsed from its --csv output.
 * Rounds alternate (baseline, case, ...) in slices of a quarter round; each side reports the
 * median of its slices. Server and clients are pinned to CPUs (see placement()).
 */
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { RedisTier } from '@tierstack/redis';
import { startRedisServer, type RedisServer } from '@tierstack/redis/testing';
import { result, rng, randomPages, runFor, type Measurement, type Suite, type Op } from '../harness.js';

const PAGE = 4096;
const SPAN = 4096; // 16 MiB of pages in Redis


/**
 * Where the server and the two clients (this process, redis-benchmark) run. On a small VM the
 * placement dominates everything: a round trip between two vCPUs costs wake-up IPIs, one on the
 * same vCPU does not, and the scheduler moves processes between the two at will (measured here:
 * bare ioredis MGET x32 ~190k pages/s on the server's vCPU, ~35k from the other one). So both
 * clients get the same placement, chosen by TIERSTACK_BENCH_REDIS_CPUS:
 *   same  (default)  server and clients on the last CPU: the software cost, no cross-CPU wake-ups
 *   split            server on the last CPU, clients on the others: every round trip crosses CPUs
 *   none             no pinning (whatever the scheduler does; noisy)
 */
interface Placement {
  mode: 'same' | 'split' | 'none';
  server?: string;
  clients?: string;
}

function hasTaskset(): boolean {
  try {
    execFileSync('taskset', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function placement(): Placement {
  const want = (process.env['TIERSTACK_BENCH_REDIS_CPUS'] ?? 'same') as Placement['mode'];
  const n = availableParallelism();
  if (want === 'none' || !hasTaskset()) return { mode: 'none' };
  const last = String(n - 1);
  if (want === 'split' && n >= 2) return { mode: 'split', server: last, clients: n === 2 ? '0' : `0-${n - 2}` };
  return { mode: 'same', server: last, clients: last };
}

/** Pins every thread of this process to `cpus`; returns a function restoring the old affinity. */
function pinSelf(cpus: string): () => void {
  const pid = String(process.pid);
  const before = /:\s*(\S+)\s*$/.exec(execFileSync('taskset', ['-cp', pid]).toString())?.[1];
  execFileSync('taskset', ['-a', '-cp', cpus, pid], { stdio: 'ignore' });
  return () => {
    if (before) execFileSync('taskset', ['-a', '-cp', before, pid], { stdio: 'ignore' });
  };
}

/**
 * Runs commands through one long-lived shell. Forking this (large) Node process for every
 * redis-benchmark run would leave its heap copy-on-write protected: the following measured slice
 * would pay page faults for a few hundred ms (measured: 190k → 35k pages/s right after any spawn,
 * even `redis-cli ping`). The shell is small; it forks the runs instead.
 */
export class CommandShell {
  private readonly proc: ChildProcessWithoutNullStreams;
  private buffered = '';
  private waiter: ((out: string) => void) | undefined;

  constructor() {
    this.proc = spawn('sh', ['-c', 'while IFS= read -r line; do eval "$line" 2>&1; echo "__TS_END__ $?"; done'], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stdout.on('data', (d: Buffer) => {
      this.buffered += d.toString();
      const end = /__TS_END__ (\d+)\n/.exec(this.buffered);
      if (end && this.waiter) {
        const out = this.buffered.slice(0, end.index);
        this.buffered = this.buffered.slice(end.index + end[0].length);
        const w = this.waiter;
        this.waiter = undefined;
        w(end[1] === '0' ? out : `__FAILED__ ${out}`);
      }
    });
  }

  run(argv: string[]): Promise<string> {
    const quoted = argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
    return new Promise((resolve, reject) => {
      this.waiter = (out) => (out.startsWith('__FAILED__') ? reject(new Error(`${argv.join(' ')} failed: ${out.slice(11, 400)}`)) : resolve(out));
      this.proc.stdin.write(`${quoted}\n`);
    });
  }

  close(): void {
    this.proc.stdin.end();
  }
}

/** One redis-benchmark run; its latencies are per request as it reports them. */
export async function redisBenchmark(shell: CommandShell, server: RedisServer, test: 'get' | 'set', pipeline: number, requests: number, cpus?: string): Promise<Measurement> {
  const args = ['-h', server.host, '-p', String(server.port), '-c', '1', '-d', String(PAGE), '-P', String(pipeline), '-r', String(SPAN), '-t', test, '-n', String(requests), '--csv'];
  const stdout = await shell.run(cpus ? ['taskset', '-c', cpus, 'redis-benchmark', ...args] : ['redis-benchmark', ...args]);
  return parseRedisBenchmarkCsv(stdout, test);
}

/** Parses `redis-benchmark --csv`: a header line, then "TEST","rps","avg","min","p50","p95","p99","max" (ms). */
export function parseRedisBenchmarkCsv(csv: string, test: string): Measurement {
  for (const line of csv.split('\n')) {
    const cells = line.split(',').map((c) => c.trim().replace(/^"|"$/g, ''));
    if (cells[0]?.toUpperCase() !== test.toUpperCase()) continue;
    const rps = Number(cells[1]);
    if (!Number.isFinite(rps)) break;
    return { opsPerSec: rps, p50Us: Number(cells[4]) * 1000, p99Us: Number(cells[6]) * 1000, calls: 0 };
  }
  throw new Error(`no ${test} line in redis-benchmark output: ${csv.slice(0, 300)}`);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const combine = (ms: Measurement[]): Measurement => ({
  opsPerSec: median(ms.map((m) => m.opsPerSec)),
  p50Us: median(ms.map((m) => m.p50Us)),
  p99Us: median(ms.map((m) => m.p99Us)),
  calls: ms.reduce((n, m) => n + m.calls, 0),
});

export const redisSuite: Suite = {
  name: 'redis',
  description: 'RedisTier 4 KiB get/put vs redis-benchmark -c 1 -d 4096 -P <batch> on the same private redis-server',
  async *run(ctx) {
    const place = placement();
    ctx.log(`redis placement: ${place.mode}${place.server ? ` (server on CPU ${place.server}, clients on CPU ${place.clients})` : ''}`);
    const server = await startRedisServer({ dir: join(ctx.tmpDir, 'redis'), ...(place.server ? { cpus: place.server } : {}) });
    const unpin = place.clients ? pinSelf(place.clients) : () => {};
    const shell = new CommandShell();
    const tier = new RedisTier({ connection: server.url, name: 'redis-bench' });
    const plain = new Redis(server.port, server.host);
    const cpus = place.clients;
    try {
      const ns = 'bench';
      const fill = Buffer.alloc(256 * PAGE, 0x5a);
      for (let p = 0; p < SPAN; p += 256) await tier.put(ns, Array.from({ length: 256 }, (_, k) => p + k), fill);
      const { measure } = ctx;
      for (const batch of [1, 32]) {
        for (const test of ['set', 'get'] as const) {
          const next = rng(batch * 7 + test.length);
          const buf = Buffer.alloc(batch * PAGE, 7);
          const op: Op =
            test === 'get'
              ? async () => {
                  await tier.get(ns, randomPages(next, SPAN, batch), { out: buf });
                  return batch;
                }
              : async () => {
                  await tier.put(ns, randomPages(next, SPAN, batch), buf);
                  return batch;
                };
          ctx.log(`redis ${test} batch ${batch}`);
          // Warm up both; the warm-up rate sizes redis-benchmark's request count to about a slice.
          // Each round is cut into 4 alternating slices: on a shared machine the noise comes in
          // bursts, and short alternations spread it over both sides alike.
          const sliceMs = Math.max(50, measure.roundMs / 4);
          const warm = await redisBenchmark(shell, server, test, batch, 2000 * batch, cpus);
          await runFor(op, measure.warmupMs);
          const requests = Math.max(500, Math.round((warm.opsPerSec * sliceMs) / 1000));
          const base: Measurement[] = [];
          const mine: Measurement[] = [];
          for (let r = 0; r < measure.rounds * 4; r++) {
            base.push(await redisBenchmark(shell, server, test, batch, requests, cpus));
            mine.push(await runFor(op, sliceMs));
          }
          const name = `${test === 'get' ? 'get' : 'put'} batch=${batch}`;
          yield result('redis', name, `redis-benchmark -P ${batch}`, { case: combine(mine), baseline: combine(base) }, `cpus ${place.mode}${batch === 32 ? '; bar: ratio >= 0.8' : ''}`);
          if (batch === 32) {
            // Reference: the same MGET/MSET through bare ioredis (no tier), on redis-benchmark's
            // own keys — how much of the gap to the C client is Node + ioredis itself.
            const keys = (): string[] => randomPages(next, SPAN, batch).map((p) => `key:${String(p).padStart(12, '0')}`);
            const rawOp: Op =
              test === 'get'
                ? async () => {
                    await plain.mgetBuffer(keys());
                    return batch;
                  }
                : async () => {
                    const ks = keys();
                    await plain.mset(ks.flatMap((k, i) => [k, buf.subarray(i * PAGE, (i + 1) * PAGE)]));
                    return batch;
                  };
            const rb: Measurement[] = [];
            const raw: Measurement[] = [];
            for (let r = 0; r < measure.rounds * 4; r++) {
              rb.push(await redisBenchmark(shell, server, test, batch, requests, cpus));
              raw.push(await runFor(rawOp, sliceMs));
            }
            yield result('redis', `ioredis ${test === 'get' ? 'mget' : 'mset'} x${batch} (reference, no tier)`, `redis-benchmark -P ${batch}`, { case: combine(raw), baseline: combine(rb) });
          }
        }
      }
    } finally {
      plain.disconnect();
      await tier.close();
      await server.stop();
      shell.close();
      unpin();
    }
  },
};
