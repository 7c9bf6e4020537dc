/**
 * The block device's request trace: turns what the native ring holds (see native/trace_ring.hpp)
 * into core TraceRecords, naming the serving level after the stack's tiers.
 */
import { isLayeredStore, type PageStore, type TraceOp, type TraceRecord } from '@tierstack/core';
import type { NativeDevice } from './native.js';

// Native BlockOp order (native/stats.hpp); write-zeroes is a discard of the trace's vocabulary.
const OPS: TraceOp[] = ['read', 'write', 'flush', 'discard', 'discard'];
const LEVEL_MISS = 254;
const LEVEL_STACK = 255;
const FIELDS = 7;

/**
 * Names of the levels a StackClient reports: the stack's native tiers in order, then the JS path
 * (named after its tier when exactly one tier is below the native ones).
 */
export function levelNames(stack: PageStore): string[] {
  if (!isLayeredStore(stack)) return [stack.nativeHandle ? stack.name : 'js'];
  const { jsLevel } = stack.nativeChain();
  const names = stack.tiers.slice(0, jsLevel).map((t) => t.name);
  const below = stack.tiers.slice(jsLevel);
  names.push(below.length === 1 ? below[0]!.name : 'js-path');
  return names;
}

export interface TraceBatch {
  records: TraceRecord[];
  /** Records the ring overwrote before they were read. */
  lost: number;
}

export class DeviceTrace {
  constructor(
    private readonly native: NativeDevice,
    private readonly names: string[],
  ) {}

  start(capacity = 65536): number {
    return this.native.traceEnable(capacity);
  }

  stop(): void {
    this.native.traceDisable();
  }

  /** What the ring gathered since the last take (at most `max` records). */
  take(max = 65536): TraceBatch {
    const { records: a, lost } = this.native.traceDrain(max);
    const records: TraceRecord[] = [];
    for (let i = 0; i < a.length; i += FIELDS) {
      const level = a[i + 5]!;
      const tier = level === LEVEL_MISS ? 'zero' : level === LEVEL_STACK ? 'stack' : (this.names[level] ?? `level${level}`);
      records.push({
        op: OPS[a[i + 4]!] ?? 'read',
        offset: a[i + 1]!,
        length: a[i + 2]!,
        latencyUs: a[i + 3]! / 1000,
        tier: a[i + 6] ? tier : 'error',
        atUs: a[i]! / 1000,
      });
    }
    return { records, lost };
  }
}
