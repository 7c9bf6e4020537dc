/**
 * Region administration for the CLI and tools: format a backing, or read a region's geometry,
 * occupancy and counters without using it as a tier.
 */
import { CxlTier, type CxlRegionInfo, type CxlTierOptions } from './cxl-tier.js';
import { cxlAddon } from './native.js';

/** Formats the backing (dropping whatever it held) and returns the new region's info. */
export async function formatCxlRegion(options: CxlTierOptions): Promise<CxlRegionInfo> {
  const tier = CxlTier.openSync({ ...options, format: true });
  try {
    return tier.info();
  } finally {
    await tier.close();
  }
}

/** Opens an existing region (validating its header) and returns its info. */
export async function cxlRegionInfo(options: CxlTierOptions): Promise<CxlRegionInfo> {
  const tier = CxlTier.openSync({ ...options, format: false });
  try {
    return tier.info();
  } finally {
    await tier.close();
  }
}

/** Index + metadata bytes per cached page for a number of ways (16 by default). */
export function indexBytesPerPage(ways?: number): number {
  return cxlAddon().layoutInfo(ways).indexBytesPerPage;
}
