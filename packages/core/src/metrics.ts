/**
 * Exports a stack's per-tier stats into a caller-supplied prom-client Registry.
 *
 * Values are read from stats() when the registry is scraped, so recording stays a few integer
 * increments per batch and nothing touches prom-client on the data path. Library code never
 * registers anything in prom-client's global registry.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { StoreStats, StoreOp } from './stats.js';

export type MetricsRegistry = Registry;

interface StatsSource {
  readonly name: string;
  stats(): StoreStats & { tiers?: StoreStats[] };
}

const OPS: StoreOp[] = ['get', 'put', 'remove'];

/** Registers tierstack_* metrics for `source` (a stack: its tiers too); returns an unbind function. */
export function bindStackMetrics(registry: Registry, source: StatsSource, prefix = 'tierstack_'): () => void {
  const all = (): StoreStats[] => {
    const s = source.stats();
    return [s, ...(s.tiers ?? [])];
  };
  const labelNames = ['store', 'op'] as const;
  const names: string[] = [];
  const counter = (name: string, help: string, pick: (s: StoreStats, op: StoreOp) => number): void => {
    names.push(prefix + name);
    new Counter({
      name: prefix + name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of all()) for (const op of OPS) this.inc({ store: s.name, op }, pick(s, op));
      },
    });
  };
  const gauge = (name: string, help: string, pick: (s: StoreStats, op: StoreOp) => number): void => {
    names.push(prefix + name);
    new Gauge({
      name: prefix + name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        for (const s of all()) for (const op of OPS) this.set({ store: s.name, op }, pick(s, op));
      },
    });
  };
  counter('ops_total', 'Batches handled per store and operation', (s, op) => s.ops[op].calls);
  counter('pages_total', 'Pages requested per store and operation', (s, op) => s.ops[op].pages);
  counter('hits_total', 'Pages found (get) or stored (put/remove)', (s, op) => s.ops[op].hits);
  counter('bytes_total', 'Page bytes moved per store and operation', (s, op) => s.ops[op].bytes);
  counter('errors_total', 'Failed batches per store and operation', (s, op) => s.ops[op].errors);
  gauge('latency_p50_seconds', 'Median batch latency', (s, op) => s.ops[op].latency.p50Us / 1e6);
  gauge('latency_p99_seconds', '99th percentile batch latency', (s, op) => s.ops[op].latency.p99Us / 1e6);
  names.push(prefix + 'store_info');
  new Gauge({
    name: prefix + 'store_info',
    help: 'Store-specific figures (resident pages, dirty pages, evictions, ...)',
    labelNames: ['store', 'figure'],
    registers: [registry],
    collect() {
      for (const s of all()) for (const [figure, v] of Object.entries(s.extra)) this.set({ store: s.name, figure }, v);
    },
  });
  return () => names.forEach((n) => registry.removeSingleMetric(n));
}
