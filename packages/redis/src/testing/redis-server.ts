/**
 * Private redis-server processes for tests and benchmarks: a standalone server, a Sentinel, or a
 * 3-node cluster on free loopback ports, without persistence, in a temporary directory.
 *
 * Each server runs under a tiny sh wrapper that holds our end of a pipe: when the pipe closes
 * (stop(), or this process dies however it dies) the wrapper SIGKILLs its server, so a crashed
 * test run leaves no stray redis-server behind.
 */
import { spawn, execFile, execFileSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const HOST = '127.0.0.1';

function onPath(cmd: string): boolean {
  try {
    execFileSync(cmd, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes sure redis-server, redis-cli and redis-benchmark exist, installing the Debian package
 * redis-server under the shared apt lock when they do not.
 */
let redisPresent = false;

export function ensureRedisServer(): void {
  if (redisPresent) return;
  if (onPath('redis-server') && onPath('redis-cli') && onPath('redis-benchmark')) {
    redisPresent = true;
    return;
  }
  const root = process.getuid?.() === 0;
  const run = (args: string[]): void => {
    const argv = ['/tmp/tierstack-apt.lock', ...(root ? [] : ['sudo', '-n']), 'env', 'DEBIAN_FRONTEND=noninteractive', ...args];
    execFileSync('flock', argv, { stdio: ['ignore', 'ignore', 'inherit'], timeout: 300_000 });
  };
  const install = ['apt-get', 'install', '-y', '-qq', '--no-install-recommends', 'redis-server'];
  try {
    run(install);
  } catch {
    run(['apt-get', 'update', '-qq']);
    run(install);
  }
  if (!onPath('redis-server')) throw new Error('redis-server is still missing after installing the Debian package redis-server');
  redisPresent = true;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, HOST, () => srv.close(() => resolve(true)));
  });
}

/** A free loopback port whose cluster-bus twin (port + 10000) is free too. */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 30000);
    if ((await portFree(port)) && (await portFree(port + 10000))) return port;
  }
  throw new Error('no free loopback port found for redis-server');
}

// $1: log file; the rest: redis-server arguments. Prints "pid N" first, "exit CODE" at the end.
// taskset (when $TS_REDIS_CPUS is set) execs redis-server, so $! is the server's pid either way.
const WRAPPER = `
log="$1"; shift
exec 3<&0
if [ -n "$TS_REDIS_CPUS" ]; then
  taskset -c "$TS_REDIS_CPUS" redis-server "$@" >"$log" 2>&1 &
else
  redis-server "$@" >"$log" 2>&1 &
fi
pid=$!
echo "pid $pid"
( read -r _ <&3; kill -9 "$pid" 2>/dev/null ) &
reader=$!
wait "$pid"; code=$?
kill "$reader" 2>/dev/null
echo "exit $code"
`;

export interface RedisServerOptions {
  /** Default: a free port. */
  port?: number;
  /** Working directory (default: a new temporary directory, removed by stop()). */
  dir?: string;
  /** Start as a cluster node (cluster-enabled yes). */
  clusterNode?: boolean;
  /** Start a Sentinel (redis-server --sentinel) watching this master instead of a data server. */
  sentinelOf?: { name: string; host: string; port: number };
  /** Pin the server to these CPUs (a taskset list such as "1" or "0-1"); benchmarks use it. */
  cpus?: string;
  /** More redis-server arguments. */
  args?: string[];
}

export class RedisServer {
  readonly host = HOST;
  private proc: ChildProcessWithoutNullStreams | undefined;
  private exited: Promise<void> = Promise.resolve();
  private pidValue = 0;

  private constructor(
    readonly port: number,
    readonly dir: string,
    private readonly ownsDir: boolean,
    private readonly argv: string[],
    private readonly cpus: string | undefined,
  ) {}

  static async start(options: RedisServerOptions = {}): Promise<RedisServer> {
    ensureRedisServer();
    const port = options.port ?? (await freePort());
    const ownsDir = options.dir === undefined;
    const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'tierstack-redis-'));
    mkdirSync(dir, { recursive: true });
    let argv = ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no'];
    if (options.sentinelOf) {
      // A Sentinel must have a config file it can rewrite.
      const m = options.sentinelOf;
      const conf = join(dir, `sentinel-${port}.conf`);
      writeFileSync(conf, `port ${port}\nbind ${HOST}\ndir ${dir}\nsentinel monitor ${m.name} ${m.host} ${m.port} 1\n`);
      argv = [conf, '--sentinel'];
    }
    if (options.clusterNode) argv.push('--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '5000');
    argv.push(...(options.args ?? []));
    const server = new RedisServer(port, dir, ownsDir, argv, options.cpus);
    await server.launch();
    return server;
  }

  get url(): string {
    return `redis://${HOST}:${this.port}`;
  }

  /** The redis-server process id (changes on restart). */
  get pid(): number {
    return this.pidValue;
  }

  get running(): boolean {
    return this.proc !== undefined;
  }

  private get logFile(): string {
    return join(this.dir, `redis-${this.port}.log`);
  }

  private async launch(): Promise<void> {
    const proc = spawn('sh', ['-c', WRAPPER, 'tierstack-redis', this.logFile, ...this.argv], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, TS_REDIS_CPUS: this.cpus ?? '' },
    });
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    void this.exited.then(() => {
      if (this.proc === proc) this.proc = undefined;
    });
    const pid = await new Promise<number>((resolve, reject) => {
      let out = '';
      proc.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /pid (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      proc.once('exit', () => reject(new Error(`redis-server wrapper exited early: ${this.logTail()}`)));
    });
    this.pidValue = pid;
    for (let i = 0; i < 200; i++) {
      if (!this.proc) throw new Error(`redis-server on port ${this.port} exited: ${this.logTail()}`);
      if (await this.cliOk(['ping'], 'PONG')) return;
      await sleep(50);
    }
    await this.stopProcess();
    throw new Error(`redis-server on port ${this.port} did not answer PING: ${this.logTail()}`);
  }

  private logTail(): string {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8').split('\n').slice(-8).join('\n') : '(no log)';
  }

  private async cliOk(args: string[], expect: string): Promise<boolean> {
    try {
      const { stdout } = await this.cli(args);
      return stdout.includes(expect);
    } catch {
      return false;
    }
  }

  /** Runs redis-cli against this server. */
  cli(args: string[]): Promise<{ stdout: string; stderr: string }> {
    return execFileP('redis-cli', ['-h', HOST, '-p', String(this.port), ...args], { timeout: 10_000 });
  }

  /** Kills the server with SIGKILL (a crash: nothing is saved) and waits until it is gone. */
  async kill(): Promise<void> {
    if (!this.proc) return;
    try {
      process.kill(this.pidValue, 'SIGKILL');
    } catch {
      // already gone
    }
    await this.exited;
  }

  /** Starts the server again on the same port and directory (after kill()). */
  async restart(): Promise<void> {
    if (this.proc) await this.kill();
    await this.launch();
  }

  private async stopProcess(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    proc.stdin.end(); // the wrapper kills its server when this pipe closes
    const timer = setTimeout(() => {
      try {
        process.kill(this.pidValue, 'SIGKILL');
      } catch {
        // gone
      }
      proc.kill('SIGKILL');
    }, 5000);
    await this.exited;
    clearTimeout(timer);
  }

  /** Stops the server and removes its temporary directory. */
  async stop(): Promise<void> {
    await this.stopProcess();
    if (this.ownsDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

export class RedisCluster {
  private constructor(
    readonly servers: RedisServer[],
    readonly dir: string,
  ) {}

  /** Starts `size` (>= 3) cluster nodes, joins them with redis-cli --cluster create and waits for cluster_state:ok. */
  static async start(size = 3): Promise<RedisCluster> {
    ensureRedisServer();
    const dir = mkdtempSync(join(tmpdir(), 'tierstack-redis-cluster-'));
    const servers: RedisServer[] = [];
    const cluster = new RedisCluster(servers, dir);
    try {
      for (let i = 0; i < size; i++) servers.push(await RedisServer.start({ dir: join(dir, `node${i}`), clusterNode: true }));
      await execFileP('redis-cli', ['--cluster', 'create', ...servers.map((s) => `${HOST}:${s.port}`), '--cluster-replicas', '0', '--cluster-yes'], {
        timeout: 60_000,
      });
      await cluster.waitOk();
      return cluster;
    } catch (err) {
      await cluster.stop();
      throw err;
    }
  }

  get nodes(): Array<{ host: string; port: number }> {
    return this.servers.map((s) => ({ host: s.host, port: s.port }));
  }

  /** Waits until every node reports cluster_state:ok. */
  async waitOk(): Promise<void> {
    for (let i = 0; i < 400; i++) {
      const states = await Promise.all(this.servers.map((s) => s.cli(['cluster', 'info']).then((r) => r.stdout, () => '')));
      if (states.every((s) => s.includes('cluster_state:ok'))) return;
      await sleep(50);
    }
    throw new Error('redis cluster did not reach cluster_state:ok');
  }

  async stop(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.stop()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Starts a standalone server (see RedisServer.start). */
export const startRedisServer = (options?: RedisServerOptions): Promise<RedisServer> => RedisServer.start(options);
/** Starts a cluster of `size` nodes (see RedisCluster.start). */
export const startRedisCluster = (size?: number): Promise<RedisCluster> => RedisCluster.start(size);
