/**
 * `tierstack pagemap <pid> [--json] [--summary]`: where a process's swapped-out pages are. For
 * each page: its address, swap type and offset, and the swap area; when the area is a device a
 * tierstack server serves, the device, the page's key in the stack (the device's namespace, page
 * number = swap offset: slot n sits at byte n * 4096 of the device) and the tier holding it now,
 * asked of the running server over its control socket. Then a summary per area and per tier.
 * Nothing is changed: neither the process's memory nor the stack.
 */
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { DEFAULT_STATE_DIR, listStates, locateRemote, type DeviceState } from '@tierstack/ublk';
import { readMaps, readSwaps, swappedPages, type SwapArea } from '../pagemap/proc.js';

export interface PagemapEntry {
  vaddr: string;
  type: number;
  offset: number;
  area: string | null;
  mapping: string;
  device?: string;
  namespace?: string;
  page?: number;
  /** The tier holding the page now; null when none does (it would read as zeros: a lost page). */
  tier?: string | null;
}

export interface PagemapReport {
  pid: number;
  swappedPages: number;
  areas: Array<{ area: string | null; type: number; pages: number; areaUsedPages?: number; device?: string; namespace?: string; outOfRange: number }>;
  tiers: Record<string, number>;
  pages: PagemapEntry[];
}

export async function pagemapReport(pid: number, stateDir: string): Promise<PagemapReport> {
  const swaps = readSwaps();
  const pages = swappedPages(pid, readMaps(pid));
  const served = listStates(stateDir).filter((s) => s.alive && s.control);
  const byType = new Map<number, { area: SwapArea | undefined; state: DeviceState | undefined }>();
  for (const p of pages) {
    if (byType.has(p.type)) continue;
    const area = swaps.find((a) => a.type === p.type);
    byType.set(p.type, { area, state: area ? served.find((s) => s.path === area.filename) : undefined });
  }
  const entries: PagemapEntry[] = pages.map((p) => ({
    vaddr: `0x${p.vaddr.toString(16)}`,
    type: p.type,
    offset: p.offset,
    area: byType.get(p.type)!.area?.filename ?? null,
    mapping: p.mapping.name,
  }));
  // One locate per served device, for all its pages at once.
  for (const [type, { state }] of byType) {
    if (!state) continue;
    const idx = pages.flatMap((p, i) => (p.type === type ? [i] : []));
    const tiers = await locateRemote(state.control!, idx.map((i) => pages[i]!.offset));
    idx.forEach((i, k) => Object.assign(entries[i]!, { device: state.name, namespace: state.namespace, page: pages[i]!.offset, tier: tiers[k] ?? null }));
  }
  const areas = [...byType].map(([type, { area, state }]) => ({
    area: area?.filename ?? null,
    type,
    pages: pages.filter((p) => p.type === type).length,
    ...(area ? { areaUsedPages: area.usedPages } : {}),
    ...(state ? { device: state.name, namespace: state.namespace } : {}),
    // An offset past the area's end means the type -> area guess is wrong (see readSwaps).
    outOfRange: area ? pages.filter((p) => p.type === type && p.offset >= area.sizePages).length : 0,
  }));
  const tiers: Record<string, number> = {};
  for (const e of entries) if (e.tier !== undefined) tiers[e.tier ?? 'none'] = (tiers[e.tier ?? 'none'] ?? 0) + 1;
  return { pid, swappedPages: pages.length, areas, tiers, pages: entries };
}

export function formatPagemap(r: PagemapReport, withPages: boolean): string {
  const lines: string[] = [];
  if (withPages && r.pages.length) {
    const rows = [['vaddr', 'type', 'offset', 'area', 'device', 'key', 'tier', 'mapping']];
    for (const e of r.pages) {
      rows.push([e.vaddr, String(e.type), String(e.offset), e.area ?? '?', e.device ?? '', e.namespace ? `${e.namespace}:${e.page}` : '', e.tier === undefined ? '' : (e.tier ?? 'NONE'), e.mapping || '[anon]']);
    }
    const w = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
    for (const row of rows) lines.push(row.map((x, c) => x.padEnd(w[c]!)).join('  ').trimEnd());
    lines.push('');
  }
  lines.push(`pid ${r.pid}: ${r.swappedPages} pages swapped out`);
  for (const a of r.areas) {
    const where = a.device ? `tierstack device ${a.device} (${a.namespace})` : 'not a tierstack device';
    lines.push(`  area ${a.area ?? `type ${a.type} (unknown)`}: ${a.pages} pages${a.areaUsedPages !== undefined ? ` of ${a.areaUsedPages} used` : ''} — ${where}${a.outOfRange ? `, ${a.outOfRange} offsets beyond its end (type mapping unsure)` : ''}`);
  }
  for (const [tier, n] of Object.entries(r.tiers).sort((a, b) => b[1] - a[1])) lines.push(`  tier ${tier}: ${n} pages`);
  return lines.join('\n');
}

export function registerPagemapCommand(program: Command): void {
  program
    .command('pagemap')
    .description("a process's swapped-out pages: address, swap area and offset, and for tierstack devices the stack key and the tier holding it now")
    .argument('<pid>', 'process id', (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a process id');
      return n;
    })
    .option('--json', 'the report as JSON (every page, then the summaries)')
    .option('--summary', 'only the per-area and per-tier summary')
    .option('--state-dir <dir>', 'where running tierstack devices are recorded', DEFAULT_STATE_DIR)
    .action(async (pid: number, o: { json?: boolean; summary?: boolean; stateDir: string }) => {
      const r = await pagemapReport(pid, o.stateDir);
      if (o.json) console.log(JSON.stringify(o.summary ? { ...r, pages: undefined } : r));
      else console.log(formatPagemap(r, o.summary !== true));
    });
}
