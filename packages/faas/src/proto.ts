/**
 * The protobuf types of the package, loaded once at run time from the .proto files shipped in
 * proto/ (the same relative path from src/ and dist/).
 */
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

export interface ProtoTypes {
  Manifest: protobuf.Type;
  CatalogIndex: protobuf.Type;
  PagemapHead: protobuf.Type;
  PagemapEntry: protobuf.Type;
}

let cached: ProtoTypes | undefined;

const protoPath = (name: string): string => fileURLToPath(new URL(`../proto/${name}`, import.meta.url));

export function protoTypes(): ProtoTypes {
  if (cached) return cached;
  const snap = protobuf.loadSync(protoPath('snapshot.proto'));
  const criu = protobuf.loadSync(protoPath('criu.proto'));
  cached = {
    Manifest: snap.lookupType('tierstack.faas.Manifest'),
    CatalogIndex: snap.lookupType('tierstack.faas.CatalogIndex'),
    PagemapHead: criu.lookupType('criu.pagemap_head'),
    PagemapEntry: criu.lookupType('criu.pagemap_entry'),
  };
  return cached;
}

/** protobufjs hands 64-bit fields back as Long objects or numbers; tierstack uses JS numbers (< 2^53). */
export function toNumber(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (v && typeof v === 'object' && 'low' in v && 'high' in v) {
    const l = v as { low: number; high: number };
    return (l.high >>> 0) * 4294967296 + (l.low >>> 0);
  }
  return 0;
}
