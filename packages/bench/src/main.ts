#!/usr/bin/env node
/** `pnpm bench [suite...] [--json] [--round-ms N] [--rounds N]` */
import { runBenchmarks } from './run.js';
import { suiteNames } from './registry.js';

const args = process.argv.slice(2);
const suites: string[] = [];
let json = false;
const measure: { roundMs?: number; rounds?: number } = {};
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === '--json') json = true;
  else if (a === '--round-ms') measure.roundMs = Number(args[++i]);
  else if (a === '--rounds') measure.rounds = Number(args[++i]);
  else if (a === '--list') {
    console.log(suiteNames().join('\n'));
    process.exit(0);
  } else if (a === '--help' || a === '-h') {
    console.log(`usage: pnpm bench [suite...] [--json] [--round-ms N] [--rounds N] [--list]\nsuites: ${suiteNames().join(', ')}`);
    process.exit(0);
  } else if (a.startsWith('-')) {
    console.error(`unknown option ${a}`);
    process.exit(2);
  } else suites.push(a);
}
runBenchmarks({ suites, json, measure }).catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
