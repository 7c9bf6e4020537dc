export { runPageStoreConformance, type ConformanceOptions } from './conformance.js';
export { fillPage, makePages, decodePage, pageMatches } from './patterns.js';
export {
  coreTestingAddon,
  driveStore,
  driveStoreSync,
  runStoreOps,
  stressStore,
  readStorePages,
  NativeReferenceTier,
  runNativeStoreConformance,
  type CoreTestingAddon,
  type NativeClientHandle,
  type DriveOptions,
  type DriveResult,
  type OpsOptions,
  type OpsResult,
  type StressOptions,
  type StressResult,
  type NativeConformanceSpec,
  type NativeConformanceOptions,
  type ConformanceCaseReport,
} from './native.js';
