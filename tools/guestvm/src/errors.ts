/**
 * Typed errors of the guest harness. Codes follow the tierstack convention (TS_ERR_*, test
 * `err.code`, never `instanceof`); the guest-specific ones are not in @tierstack/core's
 * ErrorCode because only this harness produces them.
 */

export const GuestErrorCode = {
  /** The guest did not finish within `timeoutMs`; QEMU was killed. */
  Timeout: 'TS_ERR_TIMEOUT',
  /** The guest stopped without reporting the command's exit status (kernel panic, QEMU died, init failed). */
  Crash: 'TS_ERR_GUEST_CRASH',
  /** A guest setup step (`ublk`, `cxl-devdax`) failed before the command ran. */
  Setup: 'TS_ERR_GUEST_SETUP',
  /** The harness cannot run here (QEMU or the kernel cannot be fetched, a library is missing). */
  Unsupported: 'TS_ERR_UNSUPPORTED',
  /** An option is malformed. */
  BadArgument: 'TS_ERR_BAD_ARGUMENT',
} as const;

export type GuestErrorCode = (typeof GuestErrorCode)[keyof typeof GuestErrorCode];

export interface GuestVmErrorOptions {
  cause?: unknown;
  /** The last lines of the guest's serial console (kernel messages, init errors). */
  consoleTail?: string;
  /** The last lines of the setup steps' output, for TS_ERR_GUEST_SETUP. */
  setupLog?: string;
  /** Whatever the command had written before the failure. */
  stdout?: string;
  stderr?: string;
}

export class GuestVmError extends Error {
  readonly code: GuestErrorCode;
  readonly consoleTail: string;
  readonly setupLog: string;
  readonly stdout: string;
  readonly stderr: string;

  constructor(code: GuestErrorCode, message: string, options: GuestVmErrorOptions = {}) {
    // The console tail goes into the message too: a failing test then shows it without
    // anyone having to catch and print the error.
    const parts = [message];
    if (options.setupLog) parts.push(`--- guest setup log (tail) ---\n${options.setupLog}`);
    if (options.consoleTail) parts.push(`--- guest console (tail) ---\n${options.consoleTail}`);
    super(parts.join('\n'), options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GuestVmError';
    this.code = code;
    this.consoleTail = options.consoleTail ?? '';
    this.setupLog = options.setupLog ?? '';
    this.stdout = options.stdout ?? '';
    this.stderr = options.stderr ?? '';
  }
}

/** The last `lines` lines of `text`. */
export function tail(text: string, lines = 40): string {
  const all = text.replace(/\r/g, '').split('\n');
  while (all.length > 0 && all[all.length - 1] === '') all.pop();
  return all.slice(-lines).join('\n');
}
