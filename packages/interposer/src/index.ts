export { RunServer, DEFAULT_MIN_SIZE, DEFAULT_FAULT_AROUND, type RunServerOptions, type SessionInfo, type SessionEnd } from './server.js';
export { runWithTierStack, runEnvironment, type RunOptions, type RunResult } from './run.js';
export { RunStore } from './run-store.js';
export { preloadLibraryPath, type CowStoreStats } from './native.js';
