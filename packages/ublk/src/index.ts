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
