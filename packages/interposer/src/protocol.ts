/** The wire format of native/run/protocol.h (one 64-byte little-endian record per message). */
export const TSR_MAGIC = 0x52535425;
export const TSR_VERSION = 1;
export const TSR_MSG_SIZE = 64;

export const Op = { Hello: 1, Ready: 2, Free: 3, Fork: 4, Ack: 5 } as const;

export interface Msg {
  op: number;
  status: number;
  pid: number;
  a: bigint;
  b: bigint;
  c: bigint;
  d: bigint;
  e: bigint;
  f: bigint;
}

export function decode(buf: Buffer, at = 0): Msg | undefined {
  if (buf.length - at < TSR_MSG_SIZE) return undefined;
  if (buf.readUInt32LE(at) !== TSR_MAGIC || buf.readUInt16LE(at + 4) !== TSR_VERSION) return undefined;
  return {
    op: buf.readUInt16LE(at + 6),
    status: buf.readInt32LE(at + 8),
    pid: buf.readUInt32LE(at + 12),
    a: buf.readBigUInt64LE(at + 16),
    b: buf.readBigUInt64LE(at + 24),
    c: buf.readBigUInt64LE(at + 32),
    d: buf.readBigUInt64LE(at + 40),
    e: buf.readBigUInt64LE(at + 48),
    f: buf.readBigUInt64LE(at + 56),
  };
}

export function encode(m: Partial<Msg> & { op: number }): Buffer {
  const buf = Buffer.alloc(TSR_MSG_SIZE);
  buf.writeUInt32LE(TSR_MAGIC, 0);
  buf.writeUInt16LE(TSR_VERSION, 4);
  buf.writeUInt16LE(m.op, 6);
  buf.writeInt32LE(m.status ?? 0, 8);
  buf.writeUInt32LE(m.pid ?? process.pid, 12);
  buf.writeBigUInt64LE(m.a ?? 0n, 16);
  buf.writeBigUInt64LE(m.b ?? 0n, 24);
  buf.writeBigUInt64LE(m.c ?? 0n, 32);
  buf.writeBigUInt64LE(m.d ?? 0n, 40);
  buf.writeBigUInt64LE(m.e ?? 0n, 48);
  buf.writeBigUInt64LE(m.f ?? 0n, 56);
  return buf;
}
