#!/usr/bin/env node
/** `pnpm bench [suite...] [--json] [--round-ms N] [--rounds N] [--report out.html]` */
import { writeFileSync } from 'node:fs';
import { runBenchmarks } from './run.js';
import { loadSuite, suiteNames } from './registry.js';
import { renderReport } from './report.js';

const args = process.argv.slice(2);
const suites: string[] = [];
let json = false;
let report: string | undefined;
const measure: { roundMs?: number; rounds?: number } = {};
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === '--json') json = true;
  else if (a === '--round-ms') measure.roundMs = Number(args[++i]);
  else if (a === '--rounds') measure.rounds = Number(args[++i]);
  else if (a === '--report') report = args[++i];
  else if (a === '--list') {
    console.log(suiteNames().join('\n'));
    process.exit(0);
  } else if (a === '--help' || a === '-h') {
    console.log(`usage: pnpm bench [suite...] [--json] [--round-ms N] [--rounds N] [--report out.html] [--list]\nsuites: ${suiteNames().join(', ')}`);
    process.exit(0);
  } else if (a.startsWith('-')) {
    console.error(`unknown option ${a}`);
    process.exit(2);
  } else suites.push(a);
}
if (report !== undefined && (!report || report.startsWith('-'))) {
  console.error('--report needs a file name');
  process.exit(2);
}
const startedAt = new Date();
// The command as typed: `pnpm bench` runs this file with the arguments after it.
const quote = (a: string): string => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
const command = (process.env['npm_lifecycle_event'] === 'bench' ? ['pnpm', 'bench', ...args] : [process.argv0, ...process.argv.slice(1)]).map(quote).join(' ');
runBenchmarks({ suites, json, measure })
  .then(async (results) => {
    if (report === undefined) return;
    const names = [...new Set(results.map((r) => r.suite))];
    const descriptions = Object.fromEntries(await Promise.all(names.map(async (n) => [n, (await loadSuite(n).catch(() => undefined))?.description ?? ''])));
    writeFileSync(report, renderReport(results, { command, startedAt, finishedAt: new Date() }, descriptions));
    process.stderr.write(`report: ${report}\n`);
  })
  .catch((err) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  });
