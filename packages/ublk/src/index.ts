export {
  createBlockDevice,
  defaultTransport,
  assertUblkAvailable,
  type BlockDevice,
  type BlockDeviceOptions,
  type Transport,
} from './device.js';
export { summarize, summarizeOp, type DeviceStats, type OpStats, type DeviceOp } from './stats.js';
export { nativeAddon, APT_PACKAGES, type UblkAddon, type NativeDeviceStats } from './native.js';
export { swapOn, swapOff, activeSwaps, type SwapOnOptions } from './swap.js';
export { readCgroupMemory, resolveCgroup, type CgroupMemory } from './cgroup.js';
export {
  serveDevice,
  deleteDevice,
  listStates,
  readState,
  readDeviceStats,
  pidAlive,
  DEFAULT_STATE_DIR,
  type ServeOptions,
  type DeviceState,
  type RunningServer,
} from './server.js';
export { bindBlockMetrics } from './metrics.js';
export { DeviceTrace, levelNames, type TraceBatch } from './trace.js';
export { serveControl, streamTrace, locateRemote, locatePages, type ControlServer, type TraceStreamOptions } from './control.js';
