/**
 * ioredis failures as typed tierstack errors. Connection trouble (refused, closed, timed out,
 * not writeable while offline, cluster down) is TS_ERR_UNAVAILABLE; an error reply from Redis
 * is classified by its prefix.
 */
import { ErrorCode, TierStackError, isTierStackError } from '@tierstack/core';

const REPLY_CODES: Array<[RegExp, ErrorCode]> = [
  [/^WRONGTYPE/, ErrorCode.Corrupt], // something that is not a string sits at a page's key
  [/^OOM/, ErrorCode.NoSpace],
  [/^(NOAUTH|WRONGPASS|NOPERM)/, ErrorCode.Permission],
  [/^(LOADING|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|BUSY|READONLY|MISCONF)/, ErrorCode.Unavailable],
];

export function mapRedisError(err: unknown, what: string): TierStackError {
  if (isTierStackError(err)) return err;
  const e = err as { name?: string; message?: string } | null;
  const message = e?.message ?? String(err);
  if (e?.name === 'ReplyError') {
    const code = REPLY_CODES.find(([re]) => re.test(message))?.[1] ?? ErrorCode.Io;
    return new TierStackError(code, `${what}: redis replied ${message}`, { cause: err, details: { reply: message } });
  }
  return new TierStackError(ErrorCode.Unavailable, `${what}: redis is unavailable (${message})`, { cause: err });
}

export function unavailable(what: string, why: string): TierStackError {
  return new TierStackError(ErrorCode.Unavailable, `${what}: redis is unavailable (${why})`);
}
