/**
 * Exports the engine's per-region stats into a caller-supplied prom-client Registry, read at
 * scrape time (the pattern of core's bindStackMetrics): nothing touches prom-client on the
 * fault path, and nothing is registered globally.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { RegionStats } from './region.js';

interface RegionSource {
  allRegions(): Array<{ stats(): RegionStats; closed: boolean }>;
}

type Pick = (s: RegionStats) => number;

export function bindUffdMetrics(registry: Registry, engine: RegionSource, prefix = 'tierstack_uffd_'): () => void {
  const all = (): RegionStats[] => engine.allRegions().filter((r) => !r.closed).map((r) => r.stats());
  const names: string[] = [];
  const counter = (name: string, help: string, pick: Pick): void => {
    names.push(prefix + name);
    new Counter({
      name: prefix + name,
      help,
      labelNames: ['region', 'namespace'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of all()) this.inc({ region: s.name, namespace: s.namespace }, pick(s));
      },
    });
  };
  const gauge = (name: string, help: string, pick: Pick): void => {
    names.push(prefix + name);
    new Gauge({
      name: prefix + name,
      help,
      labelNames: ['region', 'namespace'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of all()) this.set({ region: s.name, namespace: s.namespace }, pick(s));
      },
    });
  };
  counter('faults_total', 'Missing-page faults served', (s) => s.faults);
  counter('wp_faults_total', 'Write-protect faults (managed regions: first write to a clean page)', (s) => s.wpFaults);
  counter('pages_installed_total', 'Pages installed (faults, fault-around, prefetch)', (s) => s.pagesInstalled);
  counter('zero_pages_total', 'Zero pages installed', (s) => s.zeroPages);
  counter('poisoned_total', 'Pages poisoned (the toucher got SIGBUS)', (s) => s.poisoned);
  counter('prefetched_total', 'Pages installed by prefetch', (s) => s.prefetched);
  counter('js_path_pages_total', 'Pages served through the JS path', (s) => s.jsPathPages);
  counter('deadlocks_total', 'JS-thread faults on pages only the JS path could serve', (s) => s.deadlocks);
  counter('evictions_total', 'Pages evicted from managed regions', (s) => s.evictions);
  counter('writebacks_total', 'Dirty pages written back to the stack', (s) => s.writebacks);
  counter('writeback_errors_total', 'Pages whose write-back failed (kept, retried on flush)', (s) => s.writebackErrors);
  gauge('resident_pages', 'Pages installed now', (s) => s.residentPages);
  gauge('fault_latency_p50_seconds', 'Median fault service time', (s) => s.latency.p50Us / 1e6);
  gauge('fault_latency_p99_seconds', '99th percentile fault service time', (s) => s.latency.p99Us / 1e6);
  names.push(prefix + 'pages_by_level_total');
  new Counter({
    name: prefix + 'pages_by_level_total',
    help: 'Pages served per stack level (native tiers first, then the JS path)',
    labelNames: ['region', 'namespace', 'level'],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of all()) s.pagesByLevel.forEach((n, level) => this.inc({ region: s.name, namespace: s.namespace, level: String(level) }, n));
    },
  });
  return () => names.forEach((n) => registry.removeSingleMetric(n));
}
