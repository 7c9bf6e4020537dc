/**
 * A Prometheus histogram whose buckets are read at scrape time from counts kept elsewhere (a
 * native server's log2 latency buckets), so the data path keeps its own cheap counters and
 * prom-client is only touched when someone scrapes. prom-client's Histogram can only observe
 * values one by one; a Registry accepts any object with a name, help, type and get().
 */
import type { Registry } from 'prom-client';

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
