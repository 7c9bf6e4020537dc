/**
 * Serves a prom-client Registry as Prometheus text on http://host:port/metrics — the one HTTP
 * endpoint every long-running tierstack process (ublk server, restore worker, run server) shares.
 * Loopback by default: the figures name devices, snapshots and namespaces, so exposing them
 * further is a choice the caller makes (`host`). A scrape only reads stats; it never touches pages.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { ErrorCode, TierStackError } from './errors.js';

export interface MetricsServerOptions {
  /** TCP port; 0 picks a free one (read it back from `port`). */
  port: number;
  /** Default 127.0.0.1. */
  host?: string;
  /**
   * Keep trying this long while the port is taken (default 0: fail at once). A process that
   * replaces a dying one (a restore worker) binds the port its predecessor is still releasing.
   */
  retryMs?: number;
  /** Called before each scrape (e.g. to refresh gauges read from elsewhere). */
  beforeScrape?: () => void;
}

export interface MetricsServer {
  readonly host: string;
  readonly port: number;
  /** http://host:port/metrics */
  readonly url: string;
  close(): Promise<void>;
}

function listenOnce(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

export async function serveMetrics(registry: Registry, options: MetricsServerOptions): Promise<MetricsServer> {
  const host = options.host ?? '127.0.0.1';
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && !req.url?.startsWith('/metrics?'))) {
      res.writeHead(404).end('try /metrics\n');
      return;
    }
    try {
      options.beforeScrape?.();
    } catch (err) {
      res.writeHead(500).end(`${(err as Error).message}\n`);
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(`${err.message}\n`),
    );
  });
  // A scrape must not keep a process alive that is otherwise done.
  server.unref();
  const deadline = Date.now() + (options.retryMs ?? 0);
  for (;;) {
    try {
      await listenOnce(server, options.port, host);
      break;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EADDRINUSE' && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const tsCode = code === 'EADDRINUSE' ? ErrorCode.Exists : code === 'EACCES' ? ErrorCode.Permission : ErrorCode.Io;
      throw new TierStackError(tsCode, `cannot serve metrics on ${host}:${options.port}: ${(err as Error).message}`, { cause: err });
    }
  }
  const a = server.address() as AddressInfo;
  const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  return {
    host: a.address,
    port: a.port,
    url: `http://${shown}:${a.port}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
