/**
 * `pnpm bench ... --report <file.html>`: one self-contained HTML page (inline CSS and SVG, no
 * script, nothing fetched) — per suite a bar chart of each case's ratio against its baseline with
 * the case's bar (target) drawn in, the raw figures, and the machine and exact command of the run.
 * Hand-written SVG: horizontal bars and a tick are a few elements each, which no chart library
 * would make simpler, and a library would have to be inlined into the page.
 */
import { cpus, hostname, loadavg, release, totalmem, type } from 'node:os';
import type { CaseResult } from './harness.js';
import { chartedValue, meets, targetOf } from './report-target.js';

export interface ReportMeta {
  /** The command as typed (e.g. `pnpm bench memory --report out.html`). */
  command: string;
  startedAt: Date;
  finishedAt: Date;
  machine?: Record<string, string>;
}

export function machineInfo(): Record<string, string> {
  const c = cpus();
  return {
    host: hostname(),
    kernel: `${type()} ${release()}`,
    cpu: `${c.length} x ${c[0]?.model ?? 'unknown'}`,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    node: process.version,
    'load (1/5/15 min) at the end': loadavg()
      .map((l) => l.toFixed(2))
      .join(' / '),
  };
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const num = (x: number, digits = 0): string => x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

const ROW = 26;
const LABEL = 300;
const PLOT = 460;
const RIGHT = 120;

function chart(cases: CaseResult[]): string {
  const rows = cases.map((r) => {
    const t = targetOf(r);
    return { r, t, v: chartedValue(r, t) };
  });
  const max = Math.max(1, ...rows.map((x) => x.v), ...rows.map((x) => x.t?.value ?? 0)) * 1.1;
  const x = (v: number): number => LABEL + (Math.max(0, v) / max) * PLOT;
  const height = rows.length * ROW + 30;
  const parts: string[] = [];
  parts.push(`<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="${LABEL + PLOT + RIGHT}" height="${height}" role="img">`);
  // Parity: case as fast as its baseline.
  parts.push(`<line class="parity" x1="${x(1)}" x2="${x(1)}" y1="0" y2="${height - 20}"/>`);
  parts.push(`<text class="axis" x="${x(1)}" y="${height - 6}" text-anchor="middle">1.0 = baseline</text>`);
  rows.forEach(({ r, t, v }, i) => {
    const y = i * ROW + 4;
    const status = t ? (meets(v, t) ? 'met' : 'missed') : 'none';
    parts.push(`<text class="label" x="${LABEL - 8}" y="${y + 15}" text-anchor="end">${esc(r.case)}</text>`);
    parts.push(
      `<rect class="bar ${status}" data-case="${esc(r.case)}" data-value="${v.toFixed(4)}" x="${LABEL}" y="${y}" width="${Math.max(1, x(v) - LABEL).toFixed(1)}" height="${ROW - 8}"><title>${esc(r.case)}: ${v.toFixed(2)}${t ? ` (bar ${t.metric} ${t.op} ${t.value})` : ''}</title></rect>`,
    );
    if (t) parts.push(`<line class="target" data-case="${esc(r.case)}" x1="${x(t.value).toFixed(1)}" x2="${x(t.value).toFixed(1)}" y1="${y - 2}" y2="${y + ROW - 6}"/>`);
    parts.push(`<text class="value" x="${(x(v) + 6).toFixed(1)}" y="${y + 15}">${v.toFixed(2)}${t?.metric === 'p50' ? ' p50' : ''}${t ? ` (bar ${t.op} ${t.value})` : ''}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

function table(cases: CaseResult[]): string {
  const head = ['case', 'ops/s', 'p50 us', 'p99 us', 'baseline', 'baseline ops/s', 'baseline p50 us', 'baseline p99 us', 'ratio', 'bar', 'note'];
  const rows = cases.map((r) => {
    const t = targetOf(r);
    const bar = t ? `${t.metric} ${t.op} ${t.value}: ${meets(chartedValue(r, t), t) ? 'met' : 'MISSED'}` : '';
    const cells = [r.case, num(r.ops_per_s), num(r.p50_us, 1), num(r.p99_us, 1), r.baseline, num(r.baseline_ops_per_s), num(r.baseline_p50_us, 1), num(r.baseline_p99_us, 1), r.ratio.toFixed(2), bar, r.note ?? ''];
    return `<tr>${cells.map((c, i) => `<td${i > 0 && i < 9 && i !== 4 ? ' class="n"' : ''}>${esc(c)}</td>`).join('')}</tr>`;
  });
  return `<table class="figures"><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>\n${rows.join('\n')}\n</tbody></table>`;
}

const CSS = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; }
.desc { color: #555; }
svg.chart text { font: 12px system-ui, sans-serif; fill: #222; }
svg.chart text.axis { fill: #777; }
rect.bar { fill: #8a9bb5; } rect.bar.met { fill: #3a8f4f; } rect.bar.missed { fill: #c2423a; }
line.target { stroke: #111; stroke-width: 3; }
line.parity { stroke: #999; stroke-dasharray: 4 3; }
table.figures { border-collapse: collapse; margin-top: 8px; font-size: 12px; }
table.figures th, table.figures td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
table.figures td.n { text-align: right; font-variant-numeric: tabular-nums; }
dl.machine { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dl.machine dt { color: #555; } dl.machine dd { margin: 0; }
pre.command { background: #f4f4f4; padding: 8px; white-space: pre-wrap; }
.legend span { display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin: 0 4px 0 12px; }
`;

export function renderReport(results: CaseResult[], meta: ReportMeta, descriptions: Record<string, string> = {}): string {
  const suites = [...new Set(results.map((r) => r.suite))];
  const machine = meta.machine ?? machineInfo();
  const sections = suites.map((s) => {
    const cases = results.filter((r) => r.suite === s);
    return `<section class="suite" data-suite="${esc(s)}">
<h2>${esc(s)}</h2>
${descriptions[s] ? `<p class="desc">${esc(descriptions[s]!)}</p>` : ''}
${chart(cases)}
${table(cases)}
</section>`;
  });
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tierstack benchmarks ${esc(meta.startedAt.toISOString())}</title>
<style>${CSS}</style>
</head>
<body>
<h1>tierstack benchmarks</h1>
<p>Each case is measured against a baseline in the same run, in alternating rounds; the bars show
the case's throughput as a multiple of its baseline's (or, where the case's bar is about latency,
its p50 as a multiple of the baseline's). The black tick is the case's bar.
<span class="legend"><span style="background:#3a8f4f"></span>bar met<span style="background:#c2423a"></span>bar missed<span style="background:#8a9bb5"></span>no bar</span></p>
<h2>Run</h2>
<pre class="command">${esc(meta.command)}</pre>
<dl class="machine">
<dt>started</dt><dd>${esc(meta.startedAt.toISOString())}</dd>
<dt>finished</dt><dd>${esc(meta.finishedAt.toISOString())}</dd>
${Object.entries(machine)
  .map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`)
  .join('\n')}
</dl>
${sections.join('\n')}
</body>
</html>
`;
}
