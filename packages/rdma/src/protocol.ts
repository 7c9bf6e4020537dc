/**
 * The memd control protocol: protobuf Frames (proto/memd.proto, loaded at run time with
 * protobufjs reflection) in length-prefixed records over TCP. A record is a u32 big-endian
 * length followed by that many bytes of one encoded Frame; a length above MAX_FRAME_BYTES is a
 * protocol error (the peer is cut off before anything is buffered).
 */
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { TierStackError, ErrorCode } from '@tierstack/core';

export const PROTOCOL_VERSION = 1;
/** Largest frame either side accepts (control messages are small). */
export const MAX_FRAME_BYTES = 64 * 1024;

const root = protobuf.loadSync(fileURLToPath(new URL('../proto/memd.proto', import.meta.url)));
const FrameType = root.lookupType('tierstack.memd.Frame');

/** uint64 fields travel as decimal strings in JS objects (exact; turned into bigint by callers). */
export type U64 = string;

export interface Hello { version?: number; token?: string; clientName?: string }
export interface HelloOk {
  version: number; donorId: string; provider: string; dataNode: string; dataService: string;
  slabSize: U64; mrMode: number; clientId: U64; dataAddr: Uint8Array;
}
export interface AllocSlab { tag?: string }
export interface SlabGrant { slabId: U64; remoteAddr: U64; rkey: U64; size: U64 }
export interface FreeSlab { slabId: U64 }
export interface Freed { slabId: U64 }
export interface SlabActivity { slabIds: U64[] }
export interface Stats {
  capacityBytes: U64; freeBytes: U64; slabs: number; clients: number; load: number; hostAvailableBytes: U64;
}
export interface EvictNotice { slabIds: U64[]; graceMs: number; reason: string }
export interface ErrorBody { code: string; message: string }

export interface Frame {
  requestId?: number;
  hello?: Hello;
  helloOk?: HelloOk;
  allocSlab?: AllocSlab;
  slabGrant?: SlabGrant;
  freeSlab?: FreeSlab;
  freed?: Freed;
  slabActivity?: SlabActivity;
  statsRequest?: Record<string, never>;
  stats?: Stats;
  evictNotice?: EvictNotice;
  error?: ErrorBody;
}

export const BODY_KINDS = [
  'hello', 'helloOk', 'allocSlab', 'slabGrant', 'freeSlab', 'freed', 'slabActivity', 'statsRequest', 'stats', 'evictNotice', 'error',
] as const;
export type BodyKind = (typeof BODY_KINDS)[number];

export function bodyKind(f: Frame): BodyKind | undefined {
  return BODY_KINDS.find((k) => f[k] !== undefined);
}

/** Encodes one frame with its length prefix. */
export function encodeFrame(frame: Frame): Buffer {
  const msg = FrameType.fromObject(frame);
  const body = FrameType.encode(msg).finish();
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  out.set(body, 4);
  return out;
}

function protocolError(message: string, cause?: unknown): TierStackError {
  return new TierStackError(ErrorCode.Protocol, message, cause === undefined ? {} : { cause });
}

/** Decodes one frame body (without its length prefix); malformed bytes are TS_ERR_PROTOCOL. */
export function decodeFrame(body: Uint8Array): Frame {
  let obj: Frame;
  try {
    const msg = FrameType.decode(body);
    obj = FrameType.toObject(msg, { longs: String, defaults: true, arrays: true, oneofs: false }) as Frame;
  } catch (err) {
    throw protocolError(`malformed frame: ${(err as Error).message}`, err);
  }
  // defaults: true fills scalars, never the oneof members: drop the empty ones toObject leaves.
  for (const k of BODY_KINDS) if ((obj as Record<string, unknown>)[k] === null) delete (obj as Record<string, unknown>)[k];
  if (bodyKind(obj) === undefined) throw protocolError('frame carries no message');
  return obj;
}

/**
 * Splits a byte stream into frames. push() returns the complete frames so far and throws
 * TS_ERR_PROTOCOL on an oversized length prefix or a malformed frame.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(private readonly maxFrameBytes = MAX_FRAME_BYTES) {}

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.size < 4) break;
      const head = this.peek(4);
      const len = head.readUInt32BE(0);
      if (len > this.maxFrameBytes) throw protocolError(`frame of ${len} bytes exceeds the limit of ${this.maxFrameBytes}`);
      if (len === 0) throw protocolError('empty frame');
      if (this.size < 4 + len) break;
      const all = this.take(4 + len);
      frames.push(decodeFrame(all.subarray(4)));
    }
    return frames;
  }

  /** Bytes received but not yet forming a frame. */
  get buffered(): number {
    return this.size;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!;
    const joined = Buffer.concat(this.chunks);
    this.chunks = [joined];
    return joined;
  }

  private take(n: number): Buffer {
    const joined = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = joined.subarray(0, n);
    const rest = joined.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.size = rest.length;
    return out;
  }
}
