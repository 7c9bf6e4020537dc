/**
 * `--metrics-port` / `--metrics-host` for every long-running command (ublk add, restore, run): a
 * fresh prom-client Registry per process, filled by the command's binders, served by core's
 * serveMetrics. Loopback unless --metrics-host says otherwise.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { Registry } from 'prom-client';
import { serveMetrics, type MetricsServer } from '@tierstack/core';

export interface MetricsCliOptions {
  metricsPort?: number;
  metricsHost: string;
}

const port = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('expected a TCP port (0..65535; 0 picks a free one)');
  return n;
};

export function addMetricsOptions(cmd: Command): Command {
  return cmd
    .option('--metrics-port <port>', 'serve Prometheus metrics on http://<metrics-host>:<port>/metrics (0: a free port, printed)', port)
    .option('--metrics-host <addr>', 'address the metrics endpoint binds', '127.0.0.1');
}

/**
 * With --metrics-port: a Registry, filled by `bind`, served until the returned server closes.
 * `retryMs`: wait that long for a port a predecessor is releasing (a replaced restore worker).
 */
export async function startMetrics(
  o: MetricsCliOptions,
  bind: (registry: Registry) => void,
  options: { retryMs?: number } = {},
): Promise<MetricsServer | undefined> {
  if (o.metricsPort === undefined) return undefined;
  const registry = new Registry();
  bind(registry);
  return serveMetrics(registry, { port: o.metricsPort, host: o.metricsHost, ...(options.retryMs ? { retryMs: options.retryMs } : {}) });
}
