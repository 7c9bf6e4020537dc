/**
 * The benchmark report: a real (short) run of two suites writes the page; headless Chromium
 * renders it. The DOM has one bar per case and one bar tick per case that states a bar, and the
 * screenshot shows them (pixels in the bar colours, one run of them per case).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { meets, targetOf } from '../src/report-target.js';
import type { CaseResult } from '../src/harness.js';
import { decodePng } from './helpers/png.js';

const main = fileURLToPath(new URL('../dist/main.js', import.meta.url));
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find(existsSync);
const CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars'];

describe('report targets', () => {
  it("reads the bars the suites write in their notes, and which figure each is about", () => {
    expect(targetOf({ note: 'C ABI, 4 batches per call; CPU-time ratio 0.82; bar >= 0.5' })).toEqual({ metric: 'ratio', op: '>=', value: 0.5 });
    expect(targetOf({ note: 'cpus same; bar: ratio >= 0.8' })).toEqual({ metric: 'ratio', op: '>=', value: 0.8 });
    expect(targetOf({ note: 'bar ops >= 0.8x raw: met' })).toEqual({ metric: 'ratio', op: '>=', value: 0.8 });
    expect(targetOf({ note: 'p50 1.10x raw, bar <= 1.3x: met' })).toEqual({ metric: 'p50', op: '<=', value: 1.3 });
    expect(targetOf({ note: 'working set prefetch; bar >= 5x' })).toEqual({ metric: 'ratio', op: '>=', value: 5 });
    expect(targetOf({ note: 'CxlTier.get, one native call per batch' })).toBeUndefined();
    expect(targetOf({})).toBeUndefined();
  });
});

describe.skipIf(!CHROMIUM)('bench --report (headless Chromium)', () => {
  let dir: string;
  let html: string;
  let cases: CaseResult[];
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'tierstack-report-'));
    const report = join(dir, 'report.html');
    // One JSON object per case on stdout, the page beside it: the same run.
    const out = execFileSync(process.execPath, [main, 'memory', 'cxl', '--rounds', '1', '--round-ms', '20', '--json', '--report', report], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    cases = out.trim().split('\n').map((l) => JSON.parse(l) as CaseResult);
    html = readFileSync(report, 'utf8');
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is self-contained: nothing is fetched, the command and the machine are on it', () => {
    expect(html).not.toMatch(/<script|<link|src=|url\(|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    expect(html).toContain(`${main} memory cxl --rounds 1 --round-ms 20 --json --report ${join(dir, 'report.html')}`);
    expect(html).toMatch(/<dt>cpu<\/dt><dd>\d+ x /);
  });

  it('renders one bar per case, a tick per stated bar, and draws them', () => {
    const dom = execFileSync(CHROMIUM!, [...CHROME_FLAGS, '--dump-dom', `file://${join(dir, 'report.html')}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 << 20 });
    expect(cases.length).toBeGreaterThanOrEqual(8);
    for (const suite of ['memory', 'cxl']) {
      const section = new RegExp(`<section class="suite" data-suite="${suite}">([\\s\\S]*?)</section>`).exec(dom)![1]!;
      const mine = cases.filter((c) => c.suite === suite);
      const bars = [...section.matchAll(/<rect class="bar (met|missed|none)" data-case="([^"]+)" data-value="([\d.]+)"/g)];
      expect(bars.map((b) => b[2])).toEqual(mine.map((c) => c.case));
      const ticks = [...section.matchAll(/<line class="target" data-case="([^"]+)"/g)].map((m) => m[1]);
      expect(ticks).toEqual(mine.filter((c) => targetOf(c)).map((c) => c.case));
      // Each bar's figure is its case's ratio, and its colour says whether the bar was met.
      bars.forEach((b, i) => {
        const c = mine[i]!;
        const t = targetOf(c);
        expect(Number(b[3])).toBeCloseTo(t?.metric === 'p50' ? c.p50_us / c.baseline_p50_us : c.ratio, 3);
        expect(b[1]).toBe(!t ? 'none' : meets(Number(b[3]), t) ? 'met' : 'missed');
      });
      expect(section.match(/<tr><td>/g)).toHaveLength(mine.length); // a row of raw figures per case
    }

    const shot = join(dir, 'report.png');
    execFileSync(CHROMIUM!, [...CHROME_FLAGS, '--window-size=1280,2000', `--screenshot=${shot}`, `file://${join(dir, 'report.html')}`], { stdio: 'ignore' });
    const img = decodePng(readFileSync(shot));
    // Bars are drawn in three colours: count the horizontal bands of bar colour down the column
    // just right of the bar origin (x = 300 + a few px in page pixels: every bar is at least that long).
    const colours = [
      [0x3a, 0x8f, 0x4f],
      [0xc2, 0x42, 0x3a],
      [0x8a, 0x9b, 0xb5],
    ];
    const isBar = (x: number, y: number): boolean => {
      const p = img.pixel(x, y);
      return colours.some((c) => c.every((v, k) => Math.abs(v - p[k]!) <= 2));
    };
    const x = 24 + 300 + 1; // body margin + label column + 1
    let bands = 0;
    for (let y = 1; y < img.height; y++) if (isBar(x, y) && !isBar(x, y - 1)) bands++;
    expect(bands).toBe(cases.length);
    // And it is not a blank page: many distinct colours.
    const seen = new Set<string>();
    for (let y = 0; y < img.height; y += 7) for (let xx = 0; xx < img.width; xx += 7) seen.add(img.pixel(xx, y).join(','));
    expect(seen.size).toBeGreaterThan(20);
  }, 60_000);
});
