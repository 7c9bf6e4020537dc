export { CxlTier, openRegion, describeBacking, DEFAULT_CXL_REGION_BYTES, type CxlBacking, type CxlTierOptions, type CxlRegionInfo } from './cxl-tier.js';
export { formatCxlRegion, cxlRegionInfo, indexBytesPerPage } from './admin.js';
export { readDevdaxGeometry, DEFAULT_DEVDAX_ALIGN, type DevdaxGeometry } from './devdax.js';
export { cxlAddon, packageDir, type CxlAddon, type NativeRegionInfo, type RegionCounters } from './native.js';
