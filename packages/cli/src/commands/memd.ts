/** `tierstack memd`: runs a memory-donor daemon of the RDMA pool tier (@tierstack/rdma). */
import type { Command } from 'commander';

/** A positive whole number of slabs (MemdServer rejects the rest with TS_ERR_BAD_ARGUMENT too). */
function slabCount(text: string): number {
  return /^\s*\d+\s*$/.test(text) ? Number(text) : Number.NaN;
}

export function registerMemdCommand(program: Command): void {
  program
    .command('memd')
    .description('donate RAM to the RDMA pool: slabs registered with libfabric, control protocol over TCP')
    .option('--host <addr>', 'control-plane bind address (non-loopback needs --token)', '127.0.0.1')
    .option('--port <n>', 'control port (0 = ephemeral)', '7440')
    .option('--data-host <addr>', 'libfabric endpoint address (default: --host)')
    .option('--data-port <n>', 'libfabric endpoint port (0 = ephemeral)', '0')
    .option('--provider <name>', 'libfabric provider: tcp, tcp;ofi_rxm, verbs;ofi_rxm, efa', 'tcp')
    .option('--capacity <size>', 'RAM to donate (e.g. 8G)', '1G')
    .option('--slab-size <size>', 'bytes per slab', '1G')
    .option('--client-quota <size>', 'most memory one client (control connection) may hold, in whole slabs (e.g. 8G)')
    .option('--client-quota-slabs <n>', 'most slabs one client (control connection) may hold')
    .option('--token <secret>', 'shared secret clients must present (or TIERSTACK_MEMD_TOKEN)')
    .option('--headroom <size>', 'keep this much host memory available; reclaim slabs below it', '0')
    .option('--headroom-poll-ms <n>', 'free-memory check interval', '1000')
    .option('--evict-grace-ms <n>', 'time clients get to re-home an evicted slab', '2000')
    .option('--free-memory-file <path>', 'read available bytes from this file instead of /proc/meminfo (simulation)')
    .option('--metrics-port <n>', 'serve prom-client metrics on 127.0.0.1:<n>/metrics')
    .option('--donor-id <id>', 'donor id reported to clients')
    .option('--log-level <level>', 'pino log level', 'info')
    .action(async (o: Record<string, string | undefined>) => {
      const { runMemdDaemon, parseSize } = await import('@tierstack/rdma');
      await runMemdDaemon({
        host: o.host!,
        port: Number(o.port),
        ...(o.dataHost ? { dataHost: o.dataHost } : {}),
        dataPort: Number(o.dataPort),
        provider: o.provider!,
        capacityBytes: parseSize(o.capacity!),
        slabBytes: parseSize(o.slabSize!),
        ...(o.clientQuota ? { clientQuotaBytes: parseSize(o.clientQuota) } : {}),
        ...(o.clientQuotaSlabs ? { clientQuotaSlabs: slabCount(o.clientQuotaSlabs) } : {}),
        ...(o.token ? { token: o.token } : {}),
        headroomBytes: parseSize(o.headroom!),
        headroomPollMs: Number(o.headroomPollMs),
        evictGraceMs: Number(o.evictGraceMs),
        ...(o.freeMemoryFile ? { freeMemoryFile: o.freeMemoryFile } : {}),
        ...(o.metricsPort ? { metricsPort: Number(o.metricsPort) } : {}),
        ...(o.donorId ? { donorId: o.donorId } : {}),
        logLevel: o.logLevel!,
      });
    });
}
