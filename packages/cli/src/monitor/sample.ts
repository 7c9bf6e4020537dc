/**
 * One sample of what `tierstack monitor` shows: a cgroup's RAM and swap, and a served device's
 * request counters and per-tier page counters (from the stats file its server publishes).
 */
import { readCgroupMemory, readDeviceStats } from '@tierstack/ublk';

export interface Sample {
  at: number;
  ramBytes: number;
  limitBytes: number;
  swapBytes: number;
  /** Absent without --device, null when the device has no stats (not served). */
  device?: {
    readBytes: number;
    writeBytes: number;
    readRequests: number;
    writeRequests: number;
    discards: number;
    readP99Us: number;
    writeP99Us: number;
    /** Per tier: pages found by gets, pages asked for, pages put. */
    tiers: Array<{ name: string; hits: number; gets: number; puts: number }>;
  } | null;
}

export async function takeSample(cgroup: string, device: string | undefined, stateDir: string): Promise<Sample> {
  const cg = await readCgroupMemory(cgroup);
  const s: Sample = { at: Date.now(), ramBytes: cg.ramBytes, limitBytes: cg.limitBytes, swapBytes: cg.swapBytes };
  if (device === undefined) return s;
  const st = readDeviceStats(device, stateDir);
  if (!st) return { ...s, device: null };
  const d = st.device;
  return {
    ...s,
    device: {
      readBytes: d.read.bytes,
      writeBytes: d.write.bytes,
      readRequests: d.read.requests,
      writeRequests: d.write.requests,
      discards: d.discard.requests,
      readP99Us: d.read.latency.p99Us,
      writeP99Us: d.write.latency.p99Us,
      tiers: st.stack.tiers.map((t) => ({ name: t.name, hits: t.ops.get.hits, gets: t.ops.get.pages, puts: t.ops.put.pages })),
    },
  };
}
