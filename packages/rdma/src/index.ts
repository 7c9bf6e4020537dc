export { RdmaPoolTier, type RdmaPoolTierOptions, type ReplicaReport } from './rdma-pool-tier.js';
export { MemdServer, startMemd, readMemAvailable, DEFAULT_SLAB_BYTES, PROVIDERS, type MemdOptions, type MemdAddress } from './memd.js';
export { runMemdDaemon, parseSize, type DaemonOptions } from './memd-daemon.js';
export { DonorClient, parseDonorAddress, type DonorAddress } from './donor-client.js';
export { pickTwoChoices, pickDistinct, type Candidate } from './placement.js';
export { encodeFrame, decodeFrame, FrameReader, PROTOCOL_VERSION, MAX_FRAME_BYTES, type Frame } from './protocol.js';
export { rdmaAddon, packageDir, APT_PACKAGES, type RdmaAddon, type NativePool, type NativeDonor } from './native.js';
