/**
 * Redis key names of pages.
 *
 * default:      <keyPrefix>{<ns>:<chunk>}:<page>   chunk = floor(page / chunkPages)
 *   The braces are a Redis Cluster hash tag: the pages of one chunk (64 consecutive pages by
 *   default) hash to one slot, so a batch needs one multi-key command per chunk, while a
 *   namespace still spreads over all slots. The same names are used on a standalone server, so
 *   data can move between the two. In the namespace '%', ':', '{' and '}' are percent-encoded:
 *   the tag stays intact and no namespace's keys match another's SCAN pattern.
 *
 * ublk-sector:  <keyPrefix><sector>                  sector = page * pageSize / 512
 *   The ublk+Redis swap prototype's scheme: one key per page, named by the decimal number of
 *   its first 512-byte sector (page 1 of 4 KiB pages is "8"), the value the raw page with no
 *   header. The namespace is not part of the key (the prototype served one device per Redis
 *   database): every namespace of such a tier shares one key space.
 */
import { badArgument } from '@tierstack/core';

export type KeySchemeName = 'default' | 'ublk-sector';

export interface KeyScheme {
  readonly name: KeySchemeName;
  /** Values carry the header of value-format.ts (false: raw pages). */
  readonly headered: boolean;
  key(ns: string, page: number): string;
  /** A SCAN MATCH pattern covering every key of `ns` (may cover more; filter with `owns`). */
  scanPattern(ns: string): string;
  owns(ns: string, key: string): boolean;
}

const encodeNamespace = (ns: string): string => ns.replace(/[%:{}]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);

/** Escapes Redis glob metacharacters so `s` matches only itself. */
export const escapeGlob = (s: string): string => s.replace(/[\\*?[\]^]/g, (c) => `\\${c}`);

const DIGITS = /^\d+$/;

export class DefaultKeyScheme implements KeyScheme {
  readonly name = 'default' as const;
  readonly headered = true;
  private readonly encoded = new Map<string, string>();

  constructor(
    readonly keyPrefix: string,
    readonly chunkPages: number,
  ) {
    if (/[{}]/.test(keyPrefix)) throw badArgument('keyPrefix must not contain "{" or "}" (they would break Redis Cluster hash tags)', { keyPrefix });
    if (!Number.isInteger(chunkPages) || chunkPages < 1 || chunkPages > 65536) throw badArgument('chunkPages must be an integer in [1, 65536]', { chunkPages });
  }

  /** "<prefix>{<encoded ns>:" — cached: namespaces are few and keys are built per page. */
  private base(ns: string): string {
    let b = this.encoded.get(ns);
    if (b === undefined) {
      b = `${this.keyPrefix}{${encodeNamespace(ns)}:`;
      if (this.encoded.size > 4096) this.encoded.clear();
      this.encoded.set(ns, b);
    }
    return b;
  }

  key(ns: string, page: number): string {
    return `${this.base(ns)}${Math.floor(page / this.chunkPages)}}:${page}`;
  }

  scanPattern(ns: string): string {
    return `${escapeGlob(this.base(ns))}*}:*`;
  }

  owns(ns: string, key: string): boolean {
    const b = this.base(ns);
    if (!key.startsWith(b)) return false;
    const rest = key.slice(b.length);
    const close = rest.indexOf('}:');
    return close > 0 && DIGITS.test(rest.slice(0, close)) && DIGITS.test(rest.slice(close + 2));
  }
}

export class UblkSectorKeyScheme implements KeyScheme {
  readonly name = 'ublk-sector' as const;
  readonly headered = false;
  private readonly sectorsPerPage: number;

  constructor(
    readonly keyPrefix: string,
    pageSize: number,
  ) {
    this.sectorsPerPage = pageSize / 512;
  }

  key(_ns: string, page: number): string {
    const sector = page * this.sectorsPerPage;
    // Past 2^53 a double cannot hold the sector exactly: do it in BigInt (rare, pages > 2^50).
    return this.keyPrefix + (Number.isSafeInteger(sector) ? String(sector) : (BigInt(page) * BigInt(this.sectorsPerPage)).toString());
  }

  scanPattern(): string {
    return `${escapeGlob(this.keyPrefix)}*`;
  }

  owns(_ns: string, key: string): boolean {
    return key.startsWith(this.keyPrefix) && DIGITS.test(key.slice(this.keyPrefix.length));
  }
}
