/**
 * Prometheus series whose values are read at scrape time from counters kept elsewhere (a native
 * server's atomics and log2 latency buckets, a worker's last report), so the data path keeps its
 * own cheap counters and prom-client is only touched when someone scrapes.
 */
import { Counter, Gauge, type Registry } from 'prom-client';

export interface CollectedOptions<L extends string> {
  name: string;
  help: string;
  labelNames: readonly L[];
  /** The current value of every series (may read a socket: a scrape awaits it). */
  collect: () => Array<[Record<L, string>, number]> | Promise<Array<[Record<L, string>, number]>>;
}

/**
 * A counter (monotonic figures) or a gauge (levels) set wholesale from `collect` at each scrape;
 * series absent from a collect disappear. Returns an unbind function.
 */
export function registerCollected<L extends string>(registry: Registry, kind: 'counter' | 'gauge', o: CollectedOptions<L>): () => void {
  const Ctor = kind === 'counter' ? Counter : Gauge;
  new Ctor({
    name: o.name,
    help: o.help,
    labelNames: o.labelNames,
    registers: [registry],
    async collect() {
      const values = await o.collect();
      this.reset();
      // Counter and Gauge both have inc(labels, value); from a reset series it sets the value.
      for (const [labels, v] of values) (this as Counter<L>).inc(labels as never, v);
    },
  });
  return () => registry.removeSingleMetric(o.name);
}

/*
 * A histogram from bucket counts: prom-client's Histogram can only observe values one by one; a
 * Registry accepts any object with a name, help, type and get().
 */

export interface CollectedSeries {
  labels: Record<string, string>;
  /** Ascending upper bounds (seconds) with the count of observations <= each (cumulative). */
  buckets: Array<[le: number, cumulative: number]>;
  count: number;
  /** Sum of observations, seconds. */
  sum: number;
}

export interface CollectedHistogramOptions {
  name: string;
  help: string;
  collect: () => CollectedSeries[];
}

/** Registers the histogram; returns an unbind function. */
export function registerCollectedHistogram(registry: Registry, o: CollectedHistogramOptions): () => void {
  const metric = {
    name: o.name,
    help: o.help,
    type: 'histogram' as const,
    aggregator: 'sum' as const,
    get() {
      const values: Array<{ labels: Record<string, string | number>; value: number; metricName: string }> = [];
      for (const s of o.collect()) {
        for (const [le, n] of s.buckets) values.push({ labels: { ...s.labels, le }, value: n, metricName: `${o.name}_bucket` });
        values.push({ labels: { ...s.labels, le: '+Inf' }, value: s.count, metricName: `${o.name}_bucket` });
        values.push({ labels: s.labels, value: s.sum, metricName: `${o.name}_sum` });
        values.push({ labels: s.labels, value: s.count, metricName: `${o.name}_count` });
      }
      return { name: o.name, help: o.help, type: 'histogram', aggregator: 'sum', values };
    },
    reset() {},
  };
  registry.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0]);
  return () => registry.removeSingleMetric(o.name);
}
