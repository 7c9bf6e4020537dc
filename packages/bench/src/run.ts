/** Runs suites and prints their results (a table, or one JSON object per case and line). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultMeasureOptions, type CaseResult, type MeasureOptions } from './harness.js';
import { loadSuite, suiteNames } from './registry.js';

export interface RunOptions {
  suites?: string[];
  json?: boolean;
  measure?: Partial<MeasureOptions>;
  /** Where output lines go (default process.stdout). */
  write?: (line: string) => void;
}

export async function runBenchmarks(options: RunOptions = {}): Promise<CaseResult[]> {
  const names = options.suites?.length ? options.suites : suiteNames();
  const write = options.write ?? ((l: string) => process.stdout.write(l + '\n'));
  const measure = { ...defaultMeasureOptions, ...options.measure };
  const results: CaseResult[] = [];
  for (const name of names) {
    const suite = await loadSuite(name);
    const tmpDir = mkdtempSync(join(tmpdir(), `tierstack-bench-${name}-`));
    try {
      if (!options.json) write(`\n# ${suite.name}: ${suite.description}`);
      const log = options.json ? () => {} : (l: string) => process.stderr.write(`  ... ${l}\n`);
      for await (const r of suite.run({ measure, tmpDir, log })) {
        results.push(r);
        write(options.json ? JSON.stringify(r) : formatRow(r));
      }
    } finally {
      rmSync(tmpDir, { recursive: true, force: true });
    }
  }
  return results;
}

export function formatRow(r: CaseResult): string {
  const n = (x: number): string => x.toLocaleString('en-US');
  return (
    `${r.case.padEnd(34)} ${n(r.ops_per_s).padStart(12)} ops/s  p50 ${r.p50_us.toFixed(1).padStart(8)} us  p99 ${r.p99_us.toFixed(1).padStart(8)} us` +
    `  | ${r.baseline.padEnd(22)} ${n(r.baseline_ops_per_s).padStart(12)} ops/s  ratio ${r.ratio.toFixed(2)}${r.note ? `  (${r.note})` : ''}`
  );
}
