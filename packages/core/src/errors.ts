/**
 * Typed errors with stable string codes.
 *
 * Code across packages (and across native addons) must test `err.code`, never `instanceof`:
 * two copies of @tierstack/core in one process, or an error born in C++, would fail an
 * `instanceof` check while carrying the same code.
 */

export const ErrorCode = {
  /** The store (or stack, region, device) was closed; no further calls are accepted. */
  Closed: 'TS_ERR_CLOSED',
  /** A buffer or tier does not match the page size of the store. */
  PageSize: 'TS_ERR_PAGE_SIZE',
  /** An argument is malformed: a bad page number, a wrong buffer length, an unknown option. */
  BadArgument: 'TS_ERR_BAD_ARGUMENT',
  /** Something that must exist does not (an unknown snapshot, a required page). */
  NotFound: 'TS_ERR_NOT_FOUND',
  /** A page's bytes do not match the checksum stored with it. */
  Checksum: 'TS_ERR_CHECKSUM',
  /** The backend cannot be reached (server down, donor lost, timeout). */
  Unavailable: 'TS_ERR_UNAVAILABLE',
  /** Stored metadata or an input file is damaged or truncated. */
  Corrupt: 'TS_ERR_CORRUPT',
  /** Something already exists and replacing it was not asked for. */
  Exists: 'TS_ERR_EXISTS',
  /** The tier has no room left that it may reclaim (for example, every slot is dirty). */
  NoSpace: 'TS_ERR_NO_SPACE',
  /** The operation is not supported here (kernel feature, platform, tier capability). */
  Unsupported: 'TS_ERR_UNSUPPORTED',
  /** A peer broke the wire protocol. */
  Protocol: 'TS_ERR_PROTOCOL',
  /** A native addon is not built or cannot be loaded. */
  NativeMissing: 'TS_ERR_NATIVE_MISSING',
  /** An operating-system call failed; `errno`/`syscall` say which. */
  Io: 'TS_ERR_IO',
  /** Access was refused (bad token, missing permission). */
  Permission: 'TS_ERR_PERMISSION',
  /** A call would deadlock (for example the JS thread faulting on a page only JS can serve). */
  Deadlock: 'TS_ERR_DEADLOCK',
  /** A bounded wait ran out. */
  Timeout: 'TS_ERR_TIMEOUT',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface TierStackErrorOptions {
  cause?: unknown;
  /** Free-form, machine-readable context (namespace, page, path, ...). */
  details?: Record<string, unknown>;
}

export class TierStackError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: TierStackErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TierStackError';
    this.code = code;
    this.details = options.details;
  }
}

/** True if `err` carries the given tierstack code (works across package copies and native code). */
export function hasCode(err: unknown, code: ErrorCode): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

/** True if `err` is any tierstack error (its code starts with TS_ERR_). */
export function isTierStackError(err: unknown): err is TierStackError {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('TS_ERR_');
}

export const closedError = (what: string): TierStackError =>
  new TierStackError(ErrorCode.Closed, `${what} is closed`);

export const badArgument = (message: string, details?: Record<string, unknown>): TierStackError =>
  new TierStackError(ErrorCode.BadArgument, message, { details });

/** Wraps an unknown failure from a backend as TS_ERR_UNAVAILABLE unless it is already typed. */
export function asUnavailable(err: unknown, what: string): TierStackError {
  if (isTierStackError(err)) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new TierStackError(ErrorCode.Unavailable, `${what}: ${msg}`, { cause: err });
}

/**
 * The C ABI's status numbers (include/tierstack/page_store.h), by name: what native calls return
 * (`Ok` or a negative TS_E_* status, named like the ErrorCode it maps to) and what a get writes
 * per page (`PageMiss`, `PageFound`, or a negative status). Compare native results with these,
 * never with bare numbers.
 */
export const TsStatus = {
  Ok: 0,
  PageMiss: 0,
  PageFound: 1,
  Closed: -1,
  PageSize: -2,
  BadArgument: -3,
  NotFound: -4,
  Checksum: -5,
  Unavailable: -6,
  Corrupt: -7,
  NoSpace: -8,
  Io: -9,
  Unsupported: -10,
  Deadlock: -11,
  Timeout: -12,
} as const;

export type TsStatus = (typeof TsStatus)[keyof typeof TsStatus];

/**
 * The string code of each negative TS_E_* status (ts_status_code() in page_store.h).
 * Native code returns the negative number; JS turns it into a TierStackError with the string code.
 */
export const NativeStatus: Readonly<Record<number, ErrorCode>> = Object.fromEntries(
  Object.entries(TsStatus)
    .filter(([, status]) => status < 0)
    .map(([name, status]) => [status, ErrorCode[name as keyof typeof ErrorCode]]),
);

export function errorFromNativeStatus(status: number, context: string): TierStackError {
  const code = NativeStatus[status] ?? ErrorCode.Io;
  return new TierStackError(code, `${context} failed (${code}, status ${status})`, { details: { status } });
}
