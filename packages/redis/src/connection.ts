/**
 * Turns the `connection` option into an ioredis client.
 *
 * Accepted: a redis:// or rediss:// URL, ioredis options (standalone or Sentinel), `{ cluster:
 * nodes, options? }` for a Cluster the tier creates, or a ready-made `Redis` / `Cluster`
 * instance. Instances are recognised by shape, not `instanceof`: the caller's ioredis may be
 * another copy than ours. A client the tier did not create is never closed or reconfigured by it.
 *
 * Clients the tier creates fail fast instead of queueing while Redis is down
 * (enableOfflineQueue: false, maxRetriesPerRequest: 0, a commandTimeout) and reconnect forever
 * in the background, so the tier recovers by itself when the server comes back.
 */
import { Redis, Cluster, type RedisOptions, type ClusterNode, type ClusterOptions } from 'ioredis';
import { badArgument } from '@tierstack/core';

/** The subset of a Redis or Cluster instance the tier needs to recognise one. */
export interface RedisClientLike {
  readonly status: string;
  pipeline(...args: unknown[]): unknown;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  off?(event: string, listener: (...args: unknown[]) => void): unknown;
}

export interface ClusterConnection {
  /** Seed nodes: "host:port" strings, ports, or { host, port }. */
  cluster: ClusterNode[];
  options?: ClusterOptions;
}

export type RedisConnection = string | RedisOptions | ClusterConnection | Redis | Cluster | RedisClientLike;

export type RedisClient = Redis | Cluster;

export interface ResolvedConnection {
  client: RedisClient;
  isCluster: boolean;
  /** The tier created the client and closes it on close(). */
  owned: boolean;
}

export interface ConnectionDefaults {
  /** Bound on one command (ms). */
  timeoutMs: number;
  /** Longest pause between reconnect attempts (ms). */
  maxReconnectDelayMs: number;
}

/** A Redis or Cluster instance, by shape: it can build pipelines, has a connection status and emits events. */
export function isClientInstance(x: unknown): x is RedisClientLike {
  if (x === null || typeof x !== 'object') return false;
  const c = x as Record<string, unknown>;
  return typeof c.pipeline === 'function' && typeof c.status === 'string' && typeof c.on === 'function' && typeof c.sendCommand === 'function';
}

/** A Cluster instance, by shape: ioredis marks it `isCluster`; older copies at least list their nodes. */
export function isClusterInstance(x: RedisClientLike): boolean {
  const c = x as unknown as Record<string, unknown>;
  if (typeof c.isCluster === 'boolean') return c.isCluster;
  return typeof c.nodes === 'function' && typeof c.refreshSlotsCache === 'function';
}

/** Per-connection options shared by standalone clients and the node connections of a Cluster. */
function nodeOptions(defaults: ConnectionDefaults) {
  return {
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    commandTimeout: defaults.timeoutMs,
    connectTimeout: defaults.timeoutMs,
  } satisfies RedisOptions;
}

function clientOptions(defaults: ConnectionDefaults): RedisOptions {
  return {
    ...nodeOptions(defaults),
    enableOfflineQueue: false,
    retryStrategy: (times: number) => Math.min(times * 50, defaults.maxReconnectDelayMs),
  };
}

export function resolveConnection(connection: RedisConnection | undefined, defaults: ConnectionDefaults): ResolvedConnection {
  if (connection === undefined) throw badArgument('RedisTier needs a connection: a URL, ioredis options, { cluster: nodes } or a Redis/Cluster instance');
  let resolved: ResolvedConnection;
  if (typeof connection === 'string') {
    if (!/^rediss?:\/\//.test(connection)) throw badArgument(`not a redis:// or rediss:// URL: ${connection}`);
    resolved = { client: new Redis(connection, clientOptions(defaults)), isCluster: false, owned: true };
  } else if (isClientInstance(connection)) {
    resolved = { client: connection as unknown as RedisClient, isCluster: isClusterInstance(connection), owned: false };
  } else if (connection !== null && typeof connection === 'object' && Array.isArray((connection as ClusterConnection).cluster)) {
    const { cluster, options = {} } = connection as ClusterConnection;
    if (cluster.length === 0) throw badArgument('cluster needs at least one seed node');
    const client = new Cluster(cluster, {
      enableOfflineQueue: false,
      clusterRetryStrategy: (times: number) => Math.min(times * 100, defaults.maxReconnectDelayMs),
      ...options,
      redisOptions: { ...nodeOptions(defaults), ...options.redisOptions },
    });
    resolved = { client, isCluster: true, owned: true };
  } else if (connection !== null && typeof connection === 'object') {
    resolved = { client: new Redis({ ...clientOptions(defaults), ...(connection as RedisOptions) }), isCluster: false, owned: true };
  } else {
    throw badArgument('connection must be a URL, ioredis options, { cluster: nodes } or a Redis/Cluster instance');
  }
  // ioredis' own keyPrefix would be applied to commands but not to SCAN results: keys would be
  // prefixed twice when removing a namespace. The tier has its own keyPrefix option.
  const prefix = (resolved.client as unknown as { options?: { keyPrefix?: string } }).options?.keyPrefix;
  if (prefix) {
    if (resolved.owned) void resolved.client.disconnect();
    throw badArgument(`use RedisTier's keyPrefix option instead of ioredis' keyPrefix ("${prefix}")`);
  }
  return resolved;
}
