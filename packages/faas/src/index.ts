export { SnapshotManifest, assertSnapshotId, type RegionInfo, type WorkingSetInfo, type SourceKind, type SnapshotSummary } from './manifest.js';
export {
  SnapshotCatalog,
  bottomOf,
  diskUsageOf,
  type GcResult,
  type DamagedSnapshot,
  DEFAULT_CATALOG_NAMESPACE,
  DEFAULT_KEEP_WORKING_SETS,
  type SnapshotCatalogOptions,
} from './catalog.js';
export { importImage, importRawFile, type ImageSource, type ImageSegment, type ImportOptions, type ImportResult } from './import.js';
export { importFirecracker, parseFirecrackerRegions, type FirecrackerImportOptions, type RegionDescription } from './import-firecracker.js';
export {
  importCriu,
  criuImageSource,
  parsePagemap,
  CRIU_IMG_MAGIC,
  CRIU_PAGEMAP_MAGIC,
  PE_PARENT,
  PE_LAZY,
  PE_PRESENT,
  type Pagemap,
  type PagemapEntry,
  type CriuImportOptions,
} from './criu-image.js';
export { exportSnapshot, type ExportOptions, type ExportResult } from './export.js';
export { fetchSnapshotPages, readSnapshotPages, badPageError, type BadPage, type FetchResult } from './reader.js';
export { type ProgressEvent, type ProgressCallback, type ProgressOptions } from './progress.js';
export {
  serveCriuPages,
  encodePsHeader,
  decodePsHeader,
  ADD_F_PRESENT,
  PS_IOV_GET,
  PS_IOV_CLOSE,
  PS_IOV_FORCE_CLOSE,
  CRIU_SERVER_DEFAULTS,
  type CriuPageServer,
  type CriuPageServerOptions,
  type CriuPageServerStats,
  type CriuHeaderLayout,
  type AdoptedConnectionOptions,
} from './criu-page-server.js';
export { parseFirecrackerHandshake, type GuestMapping } from './firecracker-handshake.js';
export {
  RestoreHook,
  createRestoreHook,
  type RestoreHookOptions,
  type RestoreOptions,
  type RestoreTarget,
  type RestoreHandle,
  type RestoreStats,
  type TierFetchStats,
  type PrefetchMode,
} from './restore-hook.js';
export {
  serveFirecracker,
  type FirecrackerHandler,
  type FirecrackerHandlerOptions,
  type FirecrackerHealth,
  type FirecrackerRestore,
  type FirecrackerRestorer,
  type FirecrackerRestoreStats,
} from './firecracker.js';
export {
  listenForHandshakes,
  acceptHandshake,
  adoptHandshake,
  verifyUserfaultfd,
  HANDSHAKE_DEFAULTS,
  type Handshake,
  type HandshakeListener,
  type HandshakeListenerOptions,
} from './handshake.js';
export { runRestoreWorker, type RestoreWorkerOptions, type RestoreWorkerStats, type KeeperMemfd } from './keeper/worker.js';
export { KeeperChannel, keeperChannelFd, type KeeperMessage } from './keeper/channel.js';
export {
  keeperBinary,
  keeperBinaryPath,
  keeperArgs,
  spawnKeeper,
  queryKeeperStatus,
  type KeeperOptions,
  type KeeperStatus,
  type KeeperWorkerLine,
} from './keeper/keeper.js';
