/**
 * Exports a block device's request stats into a caller-supplied prom-client Registry, read at
 * scrape time (core's bindStackMetrics pattern): the IO threads keep their own counters and log2
 * latency buckets; nothing touches prom-client per request and nothing is registered globally.
 */
import type { Registry } from 'prom-client';
import { registerCollected, registerCollectedHistogram } from '@tierstack/core';
import type { DeviceOp, DeviceStats } from './stats.js';

interface DeviceSource {
  readonly name: string;
  stats(): DeviceStats;
}

const OPS: DeviceOp[] = ['read', 'write', 'flush', 'discard', 'writeZeroes'];

export function bindBlockMetrics(registry: Registry, device: DeviceSource, prefix = 'tierstack_ublk_'): () => void {
  const unbind: Array<() => void> = [];
  const perOp = (name: string, help: string, pick: (s: DeviceStats, op: DeviceOp) => number): void => {
    unbind.push(
      registerCollected(registry, 'counter', {
        name: prefix + name,
        help,
        labelNames: ['device', 'op'],
        collect: () => {
          const s = device.stats();
          return OPS.map((op) => [{ device: device.name, op }, pick(s, op)]);
        },
      }),
    );
  };
  perOp('requests_total', 'Block requests completed per operation', (s, op) => s[op].requests);
  perOp('bytes_total', 'Bytes moved per operation', (s, op) => s[op].bytes);
  perOp('errors_total', 'Block requests answered with an error', (s, op) => s[op].errors);
  unbind.push(
    registerCollected(registry, 'gauge', {
      name: prefix + 'locked_bytes',
      help: 'Server memory locked (mlock) so that swapping to the device cannot deadlock',
      labelNames: ['device'],
      collect: () => [[{ device: device.name }, device.stats().lockedBytes]],
    }),
  );
  // The native histogram: bucket b counts requests that took [2^b, 2^(b+1)) ns.
  unbind.push(
    registerCollectedHistogram(registry, {
      name: prefix + 'request_duration_seconds',
      help: 'Block request service time (from the request taken to its completion committed)',
      collect() {
        const s = device.stats();
        return OPS.map((op) => {
          let cumulative = 0;
          const o = s[op];
          return {
            labels: { device: device.name, op },
            buckets: o.buckets.map((n, b): [number, number] => [2 ** (b + 1) / 1e9, (cumulative += n)]),
            count: cumulative,
            sum: (o.latency.meanUs * o.requests) / 1e6,
          };
        });
      },
    }),
  );
  return () => unbind.forEach((u) => u());
}
