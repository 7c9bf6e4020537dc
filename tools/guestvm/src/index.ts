export { runInGuest, GUEST_RESULTS_DIR, type RunInGuestOptions, type GuestResult } from './run.js';
export { guestCapability, type GuestCapability } from './capability.js';
export { prepareGuest, type PreparedGuest } from './prepare.js';
export { guestCacheDir } from './cache-dir.js';
export { GuestVmError, GuestErrorCode, type GuestVmErrorOptions } from './errors.js';
export { SETUP_STEPS, RXE, type GuestSetupStep } from './setup-steps.js';
export { shQuote } from './job-script.js';
