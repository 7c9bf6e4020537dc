export * from './harness.js';
export { registerSuite, suiteNames, loadSuite, type SuiteLoader } from './registry.js';
export { runBenchmarks, formatRow, type RunOptions } from './run.js';
export * from './ondemand.js';
export { renderReport, machineInfo, type ReportMeta } from './report.js';
export { targetOf, chartedValue, type Target } from './report-target.js';
