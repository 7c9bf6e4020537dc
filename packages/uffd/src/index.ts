export {
  UffdEngine,
  AdoptedUffd,
  SharedAdoption,
  createUffdEngine,
  type UffdEngineOptions,
  type RegionOptions,
  type AdoptedRegionOptions,
  type AdoptOptions,
  type ManagedOptions,
} from './engine.js';
export { UffdRegion, type RegionStats, type PageErrorEvent, type MissingPolicy, type RegionDescription } from './region.js';
export { UffdListener, listenForUffd, receiveUffd, sendUffd, closeFd, type ReceivedUffd, type AcceptOptions } from './socket.js';
export { bindUffdMetrics } from './metrics.js';
export type { NativeFeatures as UffdFeatures } from './native.js';
export { SnapshotView, type SnapshotViewOptions, type SnapshotViewStats } from './snapshot-view.js';
export { sharedRegionsSupported, type SharedAdoptOptions } from './shared.js';
