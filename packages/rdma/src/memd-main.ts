#!/usr/bin/env node
/** Standalone memd entry (the same daemon as `tierstack memd`): node dist/memd-main.js --capacity 1G ... */
import { parseArgs } from 'node:util';
import { parseSize, parseCount, runMemdDaemon } from './memd-daemon.js';

const { values: v } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    'data-host': { type: 'string' },
    'data-port': { type: 'string', default: '0' },
    provider: { type: 'string', default: 'tcp' },
    capacity: { type: 'string', default: '1G' },
    'slab-size': { type: 'string', default: '1G' },
    'client-quota': { type: 'string' },
    'client-quota-slabs': { type: 'string' },
    token: { type: 'string' },
    headroom: { type: 'string', default: '0' },
    'headroom-poll-ms': { type: 'string', default: '1000' },
    'evict-grace-ms': { type: 'string', default: '2000' },
    'free-memory-file': { type: 'string' },
    'metrics-port': { type: 'string' },
    'donor-id': { type: 'string' },
    'log-level': { type: 'string', default: 'info' },
    // Exit when the process that started us is gone (tests and benchmarks: no orphan daemons).
    'die-with-parent': { type: 'boolean', default: false },
  },
});

if (v['die-with-parent']) {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.exit(0);
  }, 500).unref();
}

// Options are parsed inside the chain: a bad size or count ends in the one-line error below.
Promise.resolve().then(() => runMemdDaemon({
  host: v.host!,
  port: Number(v.port),
  ...(v['data-host'] ? { dataHost: v['data-host'] } : {}),
  dataPort: Number(v['data-port']),
  provider: v.provider!,
  capacityBytes: parseSize(v.capacity!),
  slabBytes: parseSize(v['slab-size']!),
  ...(v['client-quota'] ? { clientQuotaBytes: parseSize(v['client-quota']) } : {}),
  ...(v['client-quota-slabs'] ? { clientQuotaSlabs: parseCount(v['client-quota-slabs'], '--client-quota-slabs') } : {}),
  ...(v.token ? { token: v.token } : {}),
  headroomBytes: parseSize(v.headroom!),
  headroomPollMs: Number(v['headroom-poll-ms']),
  evictGraceMs: Number(v['evict-grace-ms']),
  ...(v['free-memory-file'] ? { freeMemoryFile: v['free-memory-file'] } : {}),
  ...(v['metrics-port'] ? { metricsPort: Number(v['metrics-port']) } : {}),
  ...(v['donor-id'] ? { donorId: v['donor-id'] } : {}),
  logLevel: v['log-level']!,
})).catch((err: Error & { code?: string }) => {
  process.stderr.write(`memd: ${err.code ? err.code + ': ' : ''}${err.message}\n`);
  process.exit(1);
});
