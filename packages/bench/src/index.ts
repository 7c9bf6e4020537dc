export * from './harness.js';
export { registerSuite, suiteNames, loadSuite, type SuiteLoader } from './registry.js';
export { runBenchmarks, formatRow, type RunOptions } from './run.js';
export * from './ondemand.js';
