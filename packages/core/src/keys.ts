/**
 * Page keys. A page is addressed by (namespace, pageNumber). JavaScript names namespaces with
 * strings; native code and wire formats use a 64-bit namespace id derived from the string with
 * FNV-1a 64 over its UTF-8 bytes — the same function as `ts_namespace_id()` in page_store.h, so
 * a front-end thread and a JS tier agree on the id without asking each other.
 */
import { badArgument } from './errors.js';

const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;
const MASK64 = 0xffffffffffffffffn;

const idCache = new Map<string, bigint>();

const validNamespaces = new Set<string>();

/** Validates a namespace name: 1..255 UTF-8 bytes, no NUL. (Cached: it runs on every batch.) */
export function assertNamespace(ns: unknown): asserts ns is string {
  if (validNamespaces.has(ns as string)) return;
  if (typeof ns !== 'string' || ns.length === 0) throw badArgument('namespace must be a non-empty string');
  if (ns.includes('\0')) throw badArgument('namespace must not contain NUL', { ns });
  if (Buffer.byteLength(ns) > 255) throw badArgument('namespace is longer than 255 bytes', { ns });
  if (validNamespaces.size > 4096) validNamespaces.clear();
  validNamespaces.add(ns);
}

/** FNV-1a 64 of the namespace's UTF-8 bytes (cached: namespaces are few and long-lived). */
export function namespaceId(ns: string): bigint {
  let id = idCache.get(ns);
  if (id !== undefined) return id;
  assertNamespace(ns);
  let h = FNV_OFFSET;
  for (const byte of Buffer.from(ns, 'utf8')) {
    h ^= BigInt(byte);
    h = (h * FNV_PRIME) & MASK64;
  }
  if (idCache.size > 4096) idCache.clear();
  idCache.set(ns, h);
  return h;
}

/** The largest page number any store accepts: 2^53 - 1 (an exact JS number and a u64 in C). */
export const MAX_PAGE_NUMBER = Number.MAX_SAFE_INTEGER;

/** A compact string key for maps inside JS tiers. */
export const pageKey = (ns: string, page: number): string => `${ns}\u0000${page}`;
