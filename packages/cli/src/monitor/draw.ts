/**
 * How `tierstack monitor` shows samples: one text line per sample (pipes, logs), or a view of
 * sparklines redrawn in place (terminals). Hand-written: a sparkline is eight block glyphs and a
 * scale, which no dependency would make shorter.
 */
import type { Sample } from './sample.js';

const mib = (b: number): string => (b / (1 << 20)).toFixed(1);
const GLYPHS = '▁▂▃▄▅▆▇█';

/** One glyph per value, scaled to [0, max] (max defaults to the largest value). */
export function sparkline(values: number[], max = Math.max(0, ...values)): string {
  return values
    .map((v) => {
      if (!(max > 0) || !(v > 0)) return GLYPHS[0];
      return GLYPHS[Math.min(GLYPHS.length - 1, Math.floor((v / max) * (GLYPHS.length - 1) + 0.5))];
    })
    .join('');
}

/** A bar `width` wide filled to value/max. */
export function bar(value: number, max: number, width: number): string {
  const n = max > 0 && Number.isFinite(max) ? Math.max(0, Math.min(width, Math.round((value / max) * width))) : 0;
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}]`;
}

/** The line printed per sample when stdout is not a terminal. */
export function formatLine(s: Sample): string {
  const parts = [
    new Date(s.at).toISOString().slice(11, 19),
    `cgroup ram ${mib(s.ramBytes)} MiB${Number.isFinite(s.limitBytes) ? ` / ${mib(s.limitBytes)}` : ''}`,
    `swap ${mib(s.swapBytes)} MiB`,
  ];
  if (s.device) {
    const d = s.device;
    parts.push(
      `dev r ${d.readRequests} (${mib(d.readBytes)} MiB, p99 ${d.readP99Us.toFixed(0)} us)`,
      `w ${d.writeRequests} (${mib(d.writeBytes)} MiB, p99 ${d.writeP99Us.toFixed(0)} us)`,
      `discard ${d.discards}`,
      ...d.tiers.map((t) => `${t.name}: get ${t.gets} hit ${t.hits} put ${t.puts}`),
    );
  } else if (s.device === null) parts.push('(no stats for the device)');
  return parts.join(' | ');
}

/** Per-interval rate of a counter over the history (0 for the first sample). */
function rates(history: Sample[], pick: (s: Sample) => number | undefined): number[] {
  return history.map((s, i) => {
    if (i === 0) return 0;
    const a = pick(history[i - 1]!);
    const b = pick(s);
    const dt = (s.at - history[i - 1]!.at) / 1000;
    return a === undefined || b === undefined || dt <= 0 ? 0 : Math.max(0, (b - a) / dt);
  });
}

/**
 * The terminal view of the last `width` samples: one row per series, label, sparkline, current
 * value (rates are per second over the last interval; totals in brackets).
 */
export function renderView(history: Sample[], o: { cgroup: string; device?: string; intervalMs: number; width: number }): string[] {
  const h = history.slice(-o.width);
  const last = h[h.length - 1]!;
  const rows: Array<[string, string, string]> = [];
  const limit = Number.isFinite(last.limitBytes) ? last.limitBytes : undefined;
  rows.push([
    'cgroup ram',
    sparkline(
      h.map((s) => s.ramBytes),
      limit ?? Math.max(...h.map((s) => s.ramBytes)),
    ),
    `${mib(last.ramBytes)} MiB${limit ? ` / ${mib(limit)} MiB ${bar(last.ramBytes, limit, 10)}` : ''}`,
  ]);
  rows.push(['swap', sparkline(h.map((s) => s.swapBytes)), `${mib(last.swapBytes)} MiB`]);
  if (last.device) {
    const d = last.device;
    const rr = rates(h, (s) => s.device?.readBytes);
    const wr = rates(h, (s) => s.device?.writeBytes);
    rows.push(['dev reads', sparkline(rr), `${mib(rr[rr.length - 1]!)} MiB/s (total ${mib(d.readBytes)} MiB, ${d.readRequests} req, p99 ${d.readP99Us.toFixed(0)} us)`]);
    rows.push(['dev writes', sparkline(wr), `${mib(wr[wr.length - 1]!)} MiB/s (total ${mib(d.writeBytes)} MiB, ${d.writeRequests} req, p99 ${d.writeP99Us.toFixed(0)} us)`]);
    for (const t of d.tiers) {
      const hr = rates(h, (s) => s.device?.tiers.find((x) => x.name === t.name)?.hits);
      rows.push([`${t.name} hits`, sparkline(hr), `${hr[hr.length - 1]!.toFixed(0)}/s (total ${t.hits} of ${t.gets} gets, ${t.puts} puts)`]);
    }
  } else if (last.device === null) rows.push(['device', '', `${o.device}: no stats (not served?)`]);
  const lw = Math.max(...rows.map((r) => r[0].length));
  return [
    `tierstack monitor  ${o.cgroup}${o.device ? `  device ${o.device}` : ''}  every ${o.intervalMs} ms  ${new Date(last.at).toISOString().slice(11, 19)}  (Ctrl-C ends)`,
    ...rows.map(([label, spark, value]) => `${label.padEnd(lw)}  ${spark.padEnd(h.length)}  ${value}`),
  ];
}
