export * from './errors.js';
export * from './keys.js';
export * from './checksum.js';
export * from './histogram.js';
export * from './stats.js';
export * from './page-store.js';
export * from './logger.js';
export * from './metrics.js';
export * from './native.js';
export { coreAddonError } from './core-addon.js';
export { MemoryTier, type MemoryTierOptions } from './memory-tier.js';
export { FileTier, type FileTierOptions } from './file-tier.js';
export {
  TierStack,
  createTierStack,
  type TierStackOptions,
  type TierStackPolicy,
  type TierStackStats,
  type PromotionPolicy,
  type WritePolicy,
  type NativeChainDescriptor,
} from './tier-stack.js';
export { createJsPath, nativeStatusOf, isLayeredStore, JsPathOp, type LayeredStore, type JsPath, type JsPathBatch, type JsPathStats } from './js-path.js';
export { SnapshotReader, type SnapshotPagesInfo, type SnapshotReadResult, type SnapshotReaderStats } from './snapshot-reader.js';
export {
  summarizeTrace,
  formatTraceSummary,
  TraceRing,
  TRACE_OPS,
  type TraceOp,
  type TraceRecord,
  type TraceSummary,
  type TraceOpSummary,
  type TraceLatency,
  type TraceSizeBucket,
} from './request-trace.js';
export { serveMetrics, type MetricsServer, type MetricsServerOptions } from './metrics-server.js';
export { registerCollected, registerCollectedHistogram, type CollectedOptions, type CollectedSeries, type CollectedHistogramOptions } from './collected-metrics.js';
